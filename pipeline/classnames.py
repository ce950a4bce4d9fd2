"""Class-name files and the names put in prompts.

A class-name file lists a dataset's classes by label index, in one of three formats (chosen by the file's suffix):

- ``.txt`` (any suffix other than .json / .csv): one name per line, line i is label i-1; blank lines at the end are
  ignored, a blank line between names is an error (it would shift every later label);
- ``.json``: ``{"0": "abseiling", "1": "air drumming", ...}`` (ids 0..K-1 in any order), a plain list of names, or the
  inverted ``{"name": "idx"}`` map of Something-Something v2's ``labels.json``;
- ``.csv``: rows ``id,name`` with an optional ``id,name`` header (the ViFi-CLIP / FROSTER label files).

Ids must be exactly 0..K-1 and names unique. ``prompt_name`` turns a raw annotation name into the name put in prompts;
``normalize_name`` is the key two names are compared by when vocabularies must not overlap.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

from froster.pipeline.errors import FrosterError

# A CamelCase word, one match per word: an acronym followed by a capitalised word ("TV" in "TVWatching"), an acronym
# at the end ("DJ" in "PlayingDJ"), a capitalised or lowercase word, or a number.
_CAMEL_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]+(?![a-z])|[A-Z][a-z]*|[a-z]+|\d+")
_CAMEL_TOKEN = re.compile(r"[A-Z][A-Za-z0-9]*")


def prompt_name(raw: str) -> str:
    """The name put in prompts for the annotation name ``raw``.

    Underscores become spaces and runs of whitespace one space. A single CamelCase token (UCF-101's style, a capital
    first letter and at least one lowercase letter, no spaces) is split into words, lowercased except acronyms of two
    or more capitals: "ApplyEyeMakeup" -> "apply eye makeup", "YoYo" -> "yo yo", "TVWatching" -> "TV watching",
    "Archery" -> "archery". Any other name keeps its case: "passing American football (in game)" is unchanged.
    """
    name = " ".join(raw.replace("_", " ").split())
    if _CAMEL_TOKEN.fullmatch(name) and any(c.islower() for c in name):
        words = _CAMEL_WORDS.findall(name)
        name = " ".join(w if len(w) > 1 and w.isupper() else w.lower() for w in words)
    return name


def normalize_name(name: str) -> str:
    """Case, punctuation, underscores and spaces removed: the key under which two class names are the same class.

    "ApplyEyeMakeup", "apply_eye_makeup" and "Apply eye-makeup" all normalise to "applyeyemakeup".
    """
    return "".join(c for c in name.casefold() if c.isalnum())


def read_class_names(path: str | os.PathLike) -> list[str]:
    """The class names of the class-name file ``path`` by label index (formats in the module docstring).

    Raises FrosterError naming the file and line for a malformed line, a duplicate id or name, or ids that are not
    exactly 0..K-1.
    """
    path = Path(path)
    if not path.is_file():
        raise FrosterError(f"{path}: class-name file not found (expected a .txt, .json or .csv file)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise FrosterError(f"{path}: cannot read class-name file as UTF-8 text ({e})") from e
    suffix = path.suffix.lower()
    if suffix == ".json":
        entries = _json_entries(path, text)
    elif suffix == ".csv":
        entries = _csv_entries(path, text)
    else:
        entries = _txt_entries(path, text)
    return _by_index(path, entries)


def _txt_entries(path: Path, text: str) -> list[tuple[int, str, str]]:
    """(id, name, where) for a one-name-per-line file."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    entries = []
    for i, line in enumerate(lines):
        name = line.strip()
        if not name:
            raise FrosterError(
                f"{path}:{i + 1}: expected a class name, found a blank line (one name per line; a blank line would "
                "shift every later label)"
            )
        entries.append((i, name, f"{path}:{i + 1}"))
    if not entries:
        raise FrosterError(f"{path}: expected one class name per line, found no names")
    return entries


def _csv_entries(path: Path, text: str) -> list[tuple[int, str, str]]:
    entries = []
    for row_number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{path}:{row_number}"
        if len(row) != 2:
            raise FrosterError(f"{where}: expected 2 columns 'id,name', found {len(row)}: {','.join(row)!r}")
        idx, name = row[0].strip(), row[1].strip()
        if not entries and row_number == 1 and not _is_int(idx):
            continue  # the header, e.g. "id,name"
        if not _is_int(idx):
            raise FrosterError(f"{where}: expected an integer id in the first column, found {idx!r}")
        entries.append((int(idx), name, where))
    if not entries:
        raise FrosterError(f"{path}: expected rows 'id,name', found none")
    return entries


def _json_entries(path: Path, text: str) -> list[tuple[int, str, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FrosterError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
    if isinstance(data, list):
        if not all(isinstance(x, str) for x in data):
            raise FrosterError(f"{path}: expected a list of class-name strings")
        return [(i, x.strip(), f"{path}: entry {i}") for i, x in enumerate(data)]
    if not isinstance(data, dict) or not data:
        raise FrosterError(f'{path}: expected a JSON object {{"idx": "name"}}, found {type(data).__name__}')
    if all(_is_int(k) for k in data):
        pairs = list(data.items())
    elif all(isinstance(v, (str, int)) and _is_int(str(v)) for v in data.values()):
        pairs = [(str(v), k) for k, v in data.items()]  # Something-Something's {"name": "idx"}
    else:
        bad = next(k for k in data if not _is_int(k))
        raise FrosterError(f'{path}: expected integer ids as keys ({{"idx": "name"}}), found key {bad!r}')
    entries = []
    for k, v in pairs:
        if not isinstance(v, str):
            raise FrosterError(f"{path}: id {k}: expected a class-name string, found {v!r}")
        entries.append((int(k), v.strip(), f"{path}: id {k}"))
    return entries


def _by_index(path: Path, entries: list[tuple[int, str, str]]) -> list[str]:
    by_id: dict[int, tuple[str, str]] = {}
    by_name: dict[str, str] = {}
    for idx, name, where in entries:
        if not name:
            raise FrosterError(f"{where}: expected a class name for id {idx}, found an empty name")
        if idx in by_id:
            raise FrosterError(f"{where}: duplicate id {idx} (first at {by_id[idx][1]})")
        if name in by_name:
            raise FrosterError(f"{where}: duplicate class name {name!r} (first at {by_name[name]})")
        by_id[idx] = (name, where)
        by_name[name] = where
    k = len(by_id)
    missing = sorted(set(range(k)) - set(by_id))
    if missing:
        extra = sorted(i for i in by_id if not 0 <= i < k)
        raise FrosterError(
            f"{path}: expected ids 0..{k - 1} (one per class), missing {_short(missing)}; found out of range "
            f"{_short(extra)}"
        )
    return [by_id[i][0] for i in range(k)]


def _is_int(text: str) -> bool:
    return bool(re.fullmatch(r"[+-]?\d+", text.strip()))


def _short(values: list, limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")
