"""Manifests: one Parquet table per video set, the input of every later stage.

Columns (in this order; ARCHITECTURE.md "Manifest"): ``video_id`` (the path without its extension, unique), ``path``
(POSIX, relative to the video root), ``label`` (index into the class list), ``class_name`` (raw, as in the
annotations), ``prompt_name``, ``split``, then what probing found: ``frames``, ``fps``, ``width``, ``height``, ``size``
(bytes, -1 missing), ``mtime`` (-1 missing), ``status`` (ok | missing | empty | undecodable | unprobed), ``reason``.
The schema metadata holds the class list, the prompt names, the absolute video root, a description of the annotation
files and the froster version, so a manifest alone says where its videos are and what its labels mean.

Five annotation formats are read (``build_manifest(format, ...)``):

- ``lists``: headerless lines ``relative/path,label`` or ``relative/path label`` (Open-VCLIP / FROSTER / ViFi-CLIP
  lists) with a class-name file (``classnames.read_class_names``) giving the class of each label index;
- ``kinetics``: the Kinetics CSV ``label,youtube_id,time_start,time_end,split``; files are found on disk as
  ``{youtube_id}_{start:06d}_{end:06d}.mp4|mkv|webm`` anywhere under the video root; the class list is the sorted
  labels of the whole CSV (every split), so the train and val manifests of one CSV agree on label indices;
- ``ucf101``: the official ``classInd.txt`` + ``trainlist0N.txt`` (labels 1-based) / ``testlist0N.txt`` (no labels);
- ``hmdb51``: the official per-class ``{class}_test_split{N}.txt`` files, lines ``name.avi 0|1|2`` (1 train, 2 test,
  0 unused in that split); the class list is the sorted class names;
- ``folders``: ``video_root/{class}/.../{video}``; the class list is the sorted folder names.

Split names: ``ucf101`` and ``hmdb51`` take ``train1|test1|train2|...|all`` (``all``: every video of split 1's files,
each row's split saying where it was listed); ``kinetics`` keeps the rows whose split column equals ``split`` (every
row when None); ``lists`` and ``folders`` write ``split`` into every row (default: the list file's stem / "all").

A ``classes_file`` fixes the class list and its order (every annotation class must be in it; for ``lists`` it is
required and gives the class of each label index). A ``prompt_names_file`` (same format, one name per class) overrides
the prompt names, which are otherwise ``classnames.prompt_name(class_name)``. Builders return status ``unprobed``
(``missing`` for Kinetics rows with no file on disk); ``probe_manifest`` fills the probe columns. Nothing is dropped:
a bad video keeps its row with its status and reason.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from froster import __version__
from froster.pipeline.classnames import prompt_name, read_class_names
from froster.pipeline.errors import FrosterError
from froster.pipeline.video import STATUS_MISSING, STATUS_UNPROBED, probe_video

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("path", pa.string()),
        ("label", pa.int32()),
        ("class_name", pa.string()),
        ("prompt_name", pa.string()),
        ("split", pa.string()),
        ("frames", pa.int64()),
        ("fps", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("size", pa.int64()),
        ("mtime", pa.float64()),
        ("status", pa.string()),
        ("reason", pa.string()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
PROBE_COLUMNS = ("frames", "fps", "width", "height", "size", "mtime", "status", "reason")

META_CLASSES = b"froster.classes"
META_PROMPT_NAMES = b"froster.prompt_names"
META_VIDEO_ROOT = b"froster.video_root"
META_SOURCE = b"froster.source"
META_VERSION = b"froster.version"

FORMATS = ("lists", "kinetics", "ucf101", "hmdb51", "folders")
KINETICS_EXTENSIONS = (".mp4", ".mkv", ".webm")  # preference order when one clip exists with several extensions
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ogv")
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")


@dataclass(frozen=True)
class Manifest:
    """One video set: the table plus the metadata that gives its labels meaning."""

    table: pa.Table  # one row per video, the columns and types of SCHEMA in that order
    classes: list[str]  # raw class names by label index
    prompt_names: list[str]  # names put in prompts, by label index
    video_root: Path  # absolute; a row's file is video_root / path
    source: str  # which annotation (and class-name) files the rows came from

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> list:
        """The values of column ``name`` as a Python list."""
        return self.table.column(name).to_pylist()

    def file(self, row: int) -> Path:
        """The absolute path of row ``row``'s video."""
        return self.video_root / self.table.column("path")[row].as_py()

    def status_counts(self) -> dict[str, int]:
        """Number of rows per status, e.g. {"ok": 95, "missing": 5}."""
        counts: dict[str, int] = {}
        for s in self.column("status"):
            counts[s] = counts.get(s, 0) + 1
        return counts


# ---- reading and writing -------------------------------------------------------------------------------------------


def write_manifest(manifest: Manifest, path: str | os.PathLike) -> Path:
    """Write ``manifest`` to the Parquet file ``path`` atomically (a temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        META_CLASSES: json.dumps(list(manifest.classes)).encode(),
        META_PROMPT_NAMES: json.dumps(list(manifest.prompt_names)).encode(),
        META_VIDEO_ROOT: json.dumps(str(manifest.video_root)).encode(),
        META_SOURCE: json.dumps(manifest.source).encode(),
        META_VERSION: json.dumps(__version__).encode(),
    }
    table = manifest.table.cast(SCHEMA).replace_schema_metadata(meta)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read the manifest at ``path``; raises FrosterError naming the file when it is missing or not a manifest."""
    path = Path(path)
    if not path.is_file():
        raise FrosterError(f"{path}: manifest not found (write one with `froster manifest`)")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise FrosterError(f"{path}: not a readable Parquet manifest ({e})") from e
    if tuple(table.schema.names) != COLUMNS:
        raise FrosterError(f"{path}: expected manifest columns {list(COLUMNS)}, found {table.schema.names}")
    for field in SCHEMA:
        found = table.schema.field(field.name).type
        if found != field.type:
            raise FrosterError(f"{path}: column {field.name!r}: expected type {field.type}, found {found}")
    meta = table.schema.metadata or {}
    values = {}
    for key in (META_CLASSES, META_PROMPT_NAMES, META_VIDEO_ROOT, META_SOURCE):
        if key not in meta:
            raise FrosterError(f"{path}: schema metadata lacks {key.decode()!r}; not a froster manifest")
        try:
            values[key] = json.loads(meta[key])
        except json.JSONDecodeError as e:
            raise FrosterError(f"{path}: schema metadata {key.decode()!r} is not JSON ({e})") from e
    classes, prompts = values[META_CLASSES], values[META_PROMPT_NAMES]
    if len(classes) != len(prompts):
        raise FrosterError(f"{path}: {len(classes)} classes but {len(prompts)} prompt names in the metadata")
    return Manifest(
        table=table.replace_schema_metadata(None),
        classes=list(classes),
        prompt_names=list(prompts),
        video_root=Path(values[META_VIDEO_ROOT]),
        source=values[META_SOURCE],
    )


# ---- probing -------------------------------------------------------------------------------------------------------


def probe_manifest(
    manifest: Manifest, workers: int = 8, progress: Callable[[int], None] | None = None
) -> Manifest:
    """Probe every row's video (``video.probe_video``) in a pool of ``workers`` threads; returns a new Manifest.

    ``progress(n)`` is called after each video with the number done so far. A row already ``missing`` with a reason
    (a Kinetics clip not found under any extension) keeps that reason when its file is still missing.
    """
    if workers < 1:
        raise FrosterError(f"workers: expected at least 1 probing thread, got {workers}")
    files = [manifest.video_root / p for p in manifest.column("path")]
    old_status, old_reason = manifest.column("status"), manifest.column("reason")
    infos = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for n, info in enumerate(pool.map(probe_video, files), start=1):
            infos.append(info)
            if progress is not None:
                progress(n)
    reasons = [
        old_reason[i] if info.status == STATUS_MISSING and old_status[i] == STATUS_MISSING and old_reason[i]
        else info.reason
        for i, info in enumerate(infos)
    ]
    columns = {
        "frames": pa.array([i.frames for i in infos], pa.int64()),
        "fps": pa.array([i.fps for i in infos], pa.float64()),
        "width": pa.array([i.width for i in infos], pa.int32()),
        "height": pa.array([i.height for i in infos], pa.int32()),
        "size": pa.array([i.size for i in infos], pa.int64()),
        "mtime": pa.array([i.mtime for i in infos], pa.float64()),
        "status": pa.array([i.status for i in infos], pa.string()),
        "reason": pa.array(reasons, pa.string()),
    }
    table = manifest.table
    for name, values in columns.items():
        table = table.set_column(COLUMNS.index(name), name, values)
    return replace(manifest, table=table)


# ---- building ------------------------------------------------------------------------------------------------------


def build_manifest(
    format: str,
    video_root: str | os.PathLike,
    annotations: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    classes_file: str | os.PathLike | None = None,
    prompt_names_file: str | os.PathLike | None = None,
) -> Manifest:
    """Build an unprobed manifest from annotations in ``format`` (one of FORMATS; see the module docstring).

    ``annotations`` is the list file (lists), the CSV (kinetics), the folder holding classInd.txt and the lists or
    classInd.txt itself (ucf101), the folder of split files (hmdb51); unused for folders.
    """
    if format not in FORMATS:
        raise FrosterError(f"--format: expected one of {', '.join(FORMATS)}, got {format!r}")
    if format != "folders" and annotations is None:
        raise FrosterError(f"--annotations: format {format!r} needs an annotation file or folder")
    if format == "lists":
        if classes_file is None:
            raise FrosterError("--classes: format 'lists' needs a class-name file (txt, JSON or CSV)")
        return manifest_from_lists(annotations, video_root, classes_file, split=split,
                                   prompt_names_file=prompt_names_file)
    if format == "kinetics":
        return manifest_from_kinetics(annotations, video_root, split=split, classes_file=classes_file,
                                      prompt_names_file=prompt_names_file)
    if format == "ucf101":
        if split is None:
            raise FrosterError("--split: format 'ucf101' needs train1|test1|train2|test2|train3|test3|all")
        return manifest_from_ucf101(annotations, video_root, split, classes_file=classes_file,
                                    prompt_names_file=prompt_names_file)
    if format == "hmdb51":
        if split is None:
            raise FrosterError("--split: format 'hmdb51' needs train1|test1|train2|test2|train3|test3|all")
        return manifest_from_hmdb51(annotations, video_root, split, classes_file=classes_file,
                                    prompt_names_file=prompt_names_file)
    return manifest_from_folders(video_root, split=split or "all", classes_file=classes_file,
                                 prompt_names_file=prompt_names_file)


def manifest_from_lists(
    list_file: str | os.PathLike,
    video_root: str | os.PathLike,
    classes_file: str | os.PathLike,
    *,
    split: str | None = None,
    prompt_names_file: str | os.PathLike | None = None,
) -> Manifest:
    """Format 1: headerless ``relative/path,label`` or ``relative/path label`` lines; labels index ``classes_file``."""
    list_file, root = Path(list_file), _video_root(video_root)
    classes = read_class_names(classes_file)
    split = split or list_file.stem
    records = []
    for where, line in _lines(list_file):
        path_text, label = parse_list_line(line, where)
        if label is None:
            raise FrosterError(f"{where}: expected 'relative/path,label' or 'relative/path label', found {line!r}")
        if not 0 <= label < len(classes):
            raise FrosterError(
                f"{where}: unknown label {label}: {classes_file} has {len(classes)} classes "
                f"(labels 0..{len(classes) - 1})"
            )
        records.append(_Record(_relative(path_text, root, where), classes[label], split, where))
    source = f"lists: {list_file.resolve()}; classes: {Path(classes_file).resolve()}"
    return _assemble(records, classes, root, source, prompt_names_file, classes_file=None)


def manifest_from_kinetics(
    csv_file: str | os.PathLike,
    video_root: str | os.PathLike,
    *,
    split: str | None = None,
    classes_file: str | os.PathLike | None = None,
    prompt_names_file: str | os.PathLike | None = None,
) -> Manifest:
    """Format 2: the Kinetics CSV; ``split`` keeps the rows whose split column equals it (every row when None)."""
    csv_file, root = Path(csv_file), _video_root(video_root)
    all_rows = _read_kinetics_csv(csv_file, need_split=split is not None)
    rows = all_rows
    if split is not None:
        found = sorted({r[5] for r in all_rows})
        rows = [r for r in all_rows if r[5] == split]
        if not rows:
            raise FrosterError(f"{csv_file}: --split {split!r} matches no rows; the split column holds {found}")
    on_disk = _index_videos(root, KINETICS_EXTENSIONS)
    records, missing = [], {}
    for where, label, youtube_id, start, end, row_split in rows:
        stem = f"{youtube_id}_{start:06d}_{end:06d}"
        rel = on_disk.get(stem)
        if rel is None:
            rel = f"{stem}.mp4"
            missing[rel] = f"no {stem}.mp4, .mkv or .webm under {root}"
        records.append(_Record(rel, label, row_split, where))
    classes = None if classes_file is not None else sorted({r[1] for r in all_rows})
    source = f"kinetics: {csv_file.resolve()}" + (f" (split {split})" if split else "")
    manifest = _assemble(records, classes, root, source, prompt_names_file, classes_file=classes_file)
    if missing:
        paths = manifest.column("path")
        status = [STATUS_MISSING if p in missing else STATUS_UNPROBED for p in paths]
        reason = [missing.get(p, "") for p in paths]
        table = manifest.table.set_column(COLUMNS.index("status"), "status", pa.array(status, pa.string()))
        table = table.set_column(COLUMNS.index("reason"), "reason", pa.array(reason, pa.string()))
        manifest = replace(manifest, table=table)
    return manifest


def manifest_from_ucf101(
    annotations: str | os.PathLike,
    video_root: str | os.PathLike,
    split: str,
    *,
    classes_file: str | os.PathLike | None = None,
    prompt_names_file: str | os.PathLike | None = None,
) -> Manifest:
    """Format 3: UCF-101's ``classInd.txt`` with ``trainlist0N.txt`` / ``testlist0N.txt`` (``split`` train1..all)."""
    annotations, root = Path(annotations), _video_root(video_root)
    folder = annotations.parent if annotations.is_file() else annotations
    class_ind = annotations if annotations.is_file() else folder / "classInd.txt"
    kind, number = _parse_split(split, "ucf101")
    ucf_classes = _read_class_ind(class_ind)
    by_folder = {c.casefold(): c for c in ucf_classes}
    parts = [("train", number), ("test", number)] if kind == "all" else [(kind, number)]
    records = []
    for part, n in parts:
        list_file = folder / f"{part}list{n:02d}.txt"
        if not list_file.is_file():
            raise FrosterError(f"{list_file}: UCF-101 split file not found (expected it beside {class_ind.name})")
        for where, line in _lines(list_file):
            tokens = line.split()
            if len(tokens) not in (1, 2) or (part == "train" and len(tokens) != 2):
                expected = "'Class/v_Class_gXX_cYY.avi label'" if part == "train" else "'Class/v_Class_gXX_cYY.avi'"
                raise FrosterError(f"{where}: expected {expected}, found {line!r}")
            rel = _relative(tokens[0], root, where)
            folder_name = PurePosixPath(rel).parts[0] if len(PurePosixPath(rel).parts) > 1 else ""
            if len(tokens) == 2:
                if not _is_int(tokens[1]) or not 1 <= int(tokens[1]) <= len(ucf_classes):
                    raise FrosterError(
                        f"{where}: unknown label {tokens[1]!r}: {class_ind} numbers classes 1..{len(ucf_classes)}"
                    )
                name = ucf_classes[int(tokens[1]) - 1]
                if folder_name.casefold() != name.casefold():
                    raise FrosterError(f"{where}: label {tokens[1]} is {name!r} in {class_ind}, but the path's "
                                       f"folder is {folder_name!r}")
            else:
                name = by_folder.get(folder_name.casefold())
                if name is None:
                    raise FrosterError(f"{where}: expected the path's folder to be a class of {class_ind}, found "
                                       f"{folder_name!r}")
            records.append(_Record(rel, name, f"{part}{n}", where))
    source = f"ucf101: {class_ind.resolve()} (split {split})"
    classes = None if classes_file is not None else ucf_classes
    return _assemble(records, classes, root, source, prompt_names_file, classes_file=classes_file)


def manifest_from_hmdb51(
    annotations: str | os.PathLike,
    video_root: str | os.PathLike,
    split: str,
    *,
    classes_file: str | os.PathLike | None = None,
    prompt_names_file: str | os.PathLike | None = None,
) -> Manifest:
    """Format 4: HMDB-51's ``{class}_test_split{N}.txt`` files (``split`` train1..test3, or all); paths
    ``{class}/{name}.avi``."""
    folder, root = Path(annotations), _video_root(video_root)
    kind, number = _parse_split(split, "hmdb51")
    if not folder.is_dir():
        raise FrosterError(f"{folder}: expected the folder of HMDB-51 split files (*_test_split{number}.txt)")
    pattern = re.compile(rf"(.+)_test_split{number}\.txt")
    split_files = sorted((m.group(1), p) for p in folder.iterdir() if (m := pattern.fullmatch(p.name)))
    if not split_files:
        raise FrosterError(f"{folder}: expected files {{class}}_test_split{number}.txt, found none")
    wanted = {"train": {1}, "test": {2}, "all": {0, 1, 2}}[kind]
    records = []
    for class_name, split_file in split_files:
        for where, line in _lines(split_file):
            tokens = line.split()
            if len(tokens) != 2 or tokens[1] not in ("0", "1", "2"):
                raise FrosterError(f"{where}: expected 'name.avi 0|1|2' (1 train, 2 test, 0 unused), found {line!r}")
            tag = int(tokens[1])
            if tag in wanted:
                row_split = {0: f"unused{number}", 1: f"train{number}", 2: f"test{number}"}[tag]
                rel = _relative(f"{class_name}/{tokens[0]}", root, where)
                records.append(_Record(rel, class_name, row_split, where))
    source = f"hmdb51: {folder.resolve()} (split {split})"
    classes = None if classes_file is not None else [c for c, _ in split_files]
    return _assemble(records, classes, root, source, prompt_names_file, classes_file=classes_file)


def manifest_from_folders(
    video_root: str | os.PathLike,
    *,
    split: str = "all",
    classes_file: str | os.PathLike | None = None,
    prompt_names_file: str | os.PathLike | None = None,
) -> Manifest:
    """Format 5: one folder per class under ``video_root``; every video file below a class folder is a video."""
    root = _video_root(video_root)
    class_dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise FrosterError(f"{root}: expected one folder per class, found no folders")
    records = []
    for class_name in class_dirs:
        for dirpath, dirnames, filenames in os.walk(root / class_name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if f.lower().endswith(VIDEO_EXTENSIONS) and not f.startswith("."):
                    rel = Path(dirpath, f).relative_to(root).as_posix()
                    records.append(_Record(rel, class_name, split, f"{root / rel}"))
    source = f"folders: {root}"
    classes = None if classes_file is not None else class_dirs
    return _assemble(records, classes, root, source, prompt_names_file, classes_file=classes_file)


# ---- helpers -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Record:
    path: str  # relative POSIX path
    class_name: str
    split: str
    where: str  # "file:line" for error messages


def _assemble(
    records: Sequence[_Record],
    classes: list[str] | None,
    root: Path,
    source: str,
    prompt_names_file: str | os.PathLike | None,
    classes_file: str | os.PathLike | None,
) -> Manifest:
    """Check ids are unique and classes known, then build the unprobed Manifest."""
    if classes_file is not None:
        classes = read_class_names(classes_file)
        source += f"; classes: {Path(classes_file).resolve()}"
    assert classes is not None
    label_of = {c: i for i, c in enumerate(classes)}
    if prompt_names_file is not None:
        prompts = read_class_names(prompt_names_file)
        if len(prompts) != len(classes):
            raise FrosterError(
                f"{prompt_names_file}: expected {len(classes)} prompt names (one per class, by label), found "
                f"{len(prompts)}"
            )
        source += f"; prompt names: {Path(prompt_names_file).resolve()}"
    else:
        prompts = [prompt_name(c) for c in classes]
    first_seen: dict[str, str] = {}
    video_ids, labels = [], []
    for r in records:
        vid = video_id_of(r.path)
        if vid in first_seen:
            raise FrosterError(f"{r.where}: duplicate video id {vid!r} (first at {first_seen[vid]})")
        first_seen[vid] = r.where
        if r.class_name not in label_of:
            raise FrosterError(f"{r.where}: unknown class {r.class_name!r}: not in {classes_file}")
        video_ids.append(vid)
        labels.append(label_of[r.class_name])
    n = len(records)
    table = pa.table(
        {
            "video_id": pa.array(video_ids, pa.string()),
            "path": pa.array([r.path for r in records], pa.string()),
            "label": pa.array(labels, pa.int32()),
            "class_name": pa.array([r.class_name for r in records], pa.string()),
            "prompt_name": pa.array([prompts[i] for i in labels], pa.string()),
            "split": pa.array([r.split for r in records], pa.string()),
            "frames": pa.array([0] * n, pa.int64()),
            "fps": pa.array([0.0] * n, pa.float64()),
            "width": pa.array([0] * n, pa.int32()),
            "height": pa.array([0] * n, pa.int32()),
            "size": pa.array([-1] * n, pa.int64()),
            "mtime": pa.array([-1.0] * n, pa.float64()),
            "status": pa.array([STATUS_UNPROBED] * n, pa.string()),
            "reason": pa.array([""] * n, pa.string()),
        },
        schema=SCHEMA,
    )
    return Manifest(table=table, classes=list(classes), prompt_names=list(prompts), video_root=root, source=source)


def video_id_of(path: str) -> str:
    """The video id of a relative path: the path without its extension ("abseiling/0wR5jVB-WPk.mp4" ->
    "abseiling/0wR5jVB-WPk")."""
    p = PurePosixPath(path)
    return str(p.with_suffix("")) if p.suffix else str(p)


def _video_root(video_root: str | os.PathLike) -> Path:
    root = Path(video_root).expanduser().resolve()
    if not root.is_dir():
        raise FrosterError(f"--video-root: expected a folder of videos, found no folder at {root}")
    return root


def _lines(path: Path) -> Iterable[tuple[str, str]]:
    """("file:line", stripped line) for each non-blank line of ``path``."""
    if not path.is_file():
        raise FrosterError(f"{path}: annotation file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise FrosterError(f"{path}: cannot read as UTF-8 text ({e})") from e
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield f"{path}:{i}", line.strip()


def parse_list_line(line: str, where: str) -> tuple[str, int | None]:
    """``relative/path,label`` or ``relative/path label`` -> (path, label); label None when the line has none."""
    if "," in line:
        head, _, tail = line.rpartition(",")
        if _is_int(tail):
            return head.strip(), int(tail)
    parts = line.rsplit(None, 1)
    if len(parts) == 2 and _is_int(parts[1]):
        return parts[0].strip(), int(parts[1])
    return line, None


def _relative(path_text: str, root: Path, where: str) -> str:
    """The POSIX path of ``path_text`` relative to the video root (absolute paths inside the root are accepted)."""
    p = PurePosixPath(path_text.strip())
    if p.is_absolute():
        try:
            p = PurePosixPath(Path(p).resolve().relative_to(root).as_posix())
        except ValueError:
            raise FrosterError(
                f"{where}: expected a path relative to the video root {root}, found {path_text!r}"
            ) from None
    if not p.parts or ".." in p.parts:
        raise FrosterError(f"{where}: expected a path inside the video root {root}, found {path_text!r}")
    return p.as_posix()


def _is_int(text: str) -> bool:
    return bool(re.fullmatch(r"[+-]?\d+", text.strip()))


def _parse_split(split: str, format: str) -> tuple[str, int]:
    m = re.fullmatch(r"(train|test)([123])|all", split)
    if m is None:
        raise FrosterError(
            f"--split: format {format!r} takes train1|test1|train2|test2|train3|test3|all, got {split!r}"
        )
    return ("all", 1) if split == "all" else (m.group(1), int(m.group(2)))


def _read_class_ind(path: Path) -> list[str]:
    """UCF-101's classInd.txt: lines ``1 ApplyEyeMakeup`` numbered 1..K in order."""
    names = []
    for where, line in _lines(path):
        tokens = line.split()
        if len(tokens) != 2 or not _is_int(tokens[0]):
            raise FrosterError(f"{where}: expected 'index ClassName', found {line!r}")
        if int(tokens[0]) != len(names) + 1:
            raise FrosterError(f"{where}: expected class index {len(names) + 1} (1..K in order), found {tokens[0]}")
        if tokens[1] in names:
            raise FrosterError(f"{where}: duplicate class name {tokens[1]!r}")
        names.append(tokens[1])
    if not names:
        raise FrosterError(f"{path}: expected lines 'index ClassName', found none")
    return names


def _read_kinetics_csv(path: Path, need_split: bool) -> list[tuple[str, str, str, int, int, str]]:
    """(where, label, youtube_id, start, end, split) per data row of a Kinetics CSV."""
    if not path.is_file():
        raise FrosterError(f"{path}: Kinetics CSV not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        required = KINETICS_COLUMNS if need_split else KINETICS_COLUMNS[:4]
        lacking = [c for c in required if c not in header]
        if lacking:
            raise FrosterError(
                f"{path}:1: expected a header with {','.join(KINETICS_COLUMNS)}, found {','.join(header)!r} "
                f"(lacking {', '.join(lacking)})"
            )
        col = {name: header.index(name) for name in KINETICS_COLUMNS if name in header}
        rows = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise FrosterError(f"{where}: expected {len(header)} columns like the header, found {len(row)}")
            label, youtube_id = row[col["label"]].strip(), row[col["youtube_id"]].strip()
            if not label or not youtube_id:
                raise FrosterError(f"{where}: expected a label and a youtube_id, found {','.join(row)!r}")
            times = []
            for name in ("time_start", "time_end"):
                text = row[col[name]].strip()
                if not re.fullmatch(r"\d+(\.0*)?", text):
                    raise FrosterError(f"{where}: {name}: expected whole seconds, found {text!r}")
                times.append(int(float(text)))
            row_split = row[col["split"]].strip() if "split" in col else path.stem  # no split column: the file
            rows.append((where, label, youtube_id, times[0], times[1], row_split))
    return rows


def _index_videos(root: Path, extensions: tuple[str, ...]) -> dict[str, str]:
    """file stem -> relative POSIX path of every file under ``root`` with one of ``extensions``; when a stem exists
    several times, the earlier extension of ``extensions`` wins, then the shorter path."""
    found: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            stem, ext = os.path.splitext(f)
            ext = ext.lower()
            if ext not in extensions:
                continue
            rel = Path(dirpath, f).relative_to(root).as_posix()
            key = (extensions.index(ext), rel)
            if stem in found:
                log.warning("%s exists twice under %s: %s and %s", stem, root, found[stem][1], rel)
                key = min(key, found[stem], key=lambda k: (k[0], len(k[1]), k[1]))
            found[stem] = key
    return {stem: rel for stem, (_, rel) in found.items()}
