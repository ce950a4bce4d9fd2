"""Action descriptions: the files stage one reads, and the LLM loop that writes them (``froster augment-text``).

FROSTER enriches each class name with a sentence written by an LLM (GPT-3.5, instruction "Please describe this action
in the video [class]"); the release embeds "Name: description" as one more prompt. Three file formats are read:

- ours (JSON, written by :func:`write_descriptions`)::

      {"format": "froster-descriptions", "format_version": 1, "model": "gpt-3.5-turbo",
       "instruction": "Please describe this action in the video {class}", "system": "...",
       "date": "2025-01-01T00:00:00+00:00", "froster_version": "0.1.0", "fallback": false, "n_per_class": 1,
       "descriptions": {"brushing teeth": ["The video teaches ..."]}, "missing": ["abseiling"]}

  Keys of ``descriptions`` are class names exactly as in the class file; values are bare descriptions (no "Name:").
  ``missing`` lists the classes the LLM gave no usable answer for (never invented). ``fallback`` is true for an
  ``--offline`` file, whose descriptions are the class name in a plain sentence.
- the authors' JSON ``{"0": "Abseiling: This video shows ..."}``: one "Name: description" per class index;
- CSV ``class,description`` (an optional header row ``class,description``; several rows per class allowed).

:func:`read_descriptions` returns, per class, the prompt strings "Name: description" (Name = the class's prompt name).

The LLM loop (:func:`describe_classes`) talks to any OpenAI-compatible chat-completions server through the ``openai``
client. The client retries 429 (honouring Retry-After), 5xx, timeouts and connection errors itself; this module
re-asks what the client accepts but we cannot use (a malformed body, an empty, cut-off, multi-line or over-long
answer) a few times, then reports the class missing. Answers are appended, fsync'd, to a JSONL progress file as they
arrive (one line per answer: ``{"class", "k", "text", "model", "instruction", "system"}``; only lines of the same
model, instruction and system message are reused; a torn last line is skipped), so a rerun after a crash or Ctrl-C
asks only for what is missing. The API key lives in :class:`LLMSettings` only (never in a repr, a file, a log record
or an error message: server text is redacted before it is logged or cut).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as _dt
import json
import logging
import os
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

from froster.pipeline.classnames import normalize_name, prompt_name
from froster.pipeline.errors import FrosterError

log = logging.getLogger(__name__)

CLASS_PLACEHOLDER = "{class}"
# The paper's instruction (FROSTER, Sec. 3.3); {class} is replaced by the class's prompt name.
DEFAULT_INSTRUCTION = "Please describe this action in the video {class}"
# Not in the paper: chat models answer in paragraphs or lists unless told; one line is what a prompt can hold.
DEFAULT_SYSTEM = "Answer with one sentence of plain text on a single line, without a title, list or quotes."
DEFAULT_MODEL = "gpt-3.5-turbo"  # the paper's GPT-3.5
FORMAT = "froster-descriptions"
FORMAT_VERSION = 1

_QUOTES = {'"': '"', "'": "'", "`": "`", "\u201c": "\u201d", "\u2018": "\u2019", "\u00ab": "\u00bb"}
# Statuses that mean every request will fail the same way (key, model, URL, request shape): stop the run.
_FATAL_STATUS = {400: "bad request", 401: "key refused", 403: "forbidden", 404: "not found", 422: "request refused"}


# ---- the file ----


@dataclass(frozen=True)
class DescriptionFile:
    """The content of our description file (see the module docstring)."""

    descriptions: dict[str, list[str]]  # class name exactly as in the class file -> bare descriptions, n_per_class each
    model: Optional[str]  # the LLM asked; None for an offline fallback
    instruction: Optional[str]  # the instruction template, with {class}; None for an offline fallback
    system: Optional[str]  # the system message sent with it; None for an offline fallback
    fallback: bool  # True: written by --offline, descriptions are the class name in a sentence
    n_per_class: int  # descriptions per described class
    missing: list[str] = field(default_factory=list)  # classes with no usable answer, in class order
    date: str = ""  # ISO 8601 UTC; filled by write_descriptions when empty
    froster_version: str = ""  # filled by write_descriptions when empty


def write_descriptions(path: str | os.PathLike, content: DescriptionFile) -> Path:
    """Write ``content`` as our JSON format, atomically (``path.tmp``, fsync, ``os.replace``)."""
    from froster import __version__

    path = Path(path)
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": content.model,
        "instruction": content.instruction,
        "system": content.system,
        "date": content.date or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "froster_version": content.froster_version or __version__,
        "fallback": bool(content.fallback),
        "n_per_class": int(content.n_per_class),
        "descriptions": {name: list(texts) for name, texts in content.descriptions.items()},
        "missing": list(content.missing),
    }
    _write_atomic(path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return path


def read_descriptions(path: str | os.PathLike, class_names: Optional[Sequence[str]] = None) -> dict[str, list[str]]:
    """Read a description file in any of the three formats; return ``{class name: ["Name: description", ...]}``.

    With ``class_names`` (raw names as in the class file, by label) the result has exactly those classes, in that
    order; the authors' index-keyed JSON is mapped by index onto them; a class absent from the file (or listed as
    missing) is an error naming it. Without ``class_names`` the result has the file's classes in the file's order (the
    authors' JSON is keyed by the Name before ": "). Every class must have the same number of descriptions (stage one
    builds a [P, C] prompt table). Errors name the file and the line or key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FrosterError(f"{path}: no description file there") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FrosterError(f"{path}: cannot read description file ({type(e).__name__}: {e})") from e

    missing_listed: list[str] = []
    if path.suffix.lower() == ".csv":
        found = _parse_csv(path, text)
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise FrosterError(
                f"{path} line {e.lineno} column {e.colno}: not valid JSON ({e.msg}); expected a froster description "
                f'file, the authors\' {{"idx": "Name: description"}} JSON, or a .csv with class,description'
            ) from e
        if isinstance(doc, dict) and isinstance(doc.get("descriptions"), dict):
            found, missing_listed = _parse_ours(path, doc)
        elif isinstance(doc, dict) and doc and all(isinstance(v, str) for v in doc.values()):
            return _finish(path, _parse_authors(path, doc, class_names), class_names, [])
        else:
            kind = type(doc).__name__ if not isinstance(doc, dict) else f"an object with keys {sorted(doc)[:5]}"
            raise FrosterError(
                f'{path}: expected a froster description file (with "descriptions") or the authors\' '
                f'{{"idx": "Name: description"}} JSON, found {kind}'
            )
    prompts = {name: [f"{prompt_name(name)}: {d}" for d in texts] for name, texts in found.items()}
    return _finish(path, prompts, class_names, missing_listed)


def _finish(
    path: Path, prompts: dict[str, list[str]], class_names: Optional[Sequence[str]], missing_listed: list[str]
) -> dict[str, list[str]]:
    if class_names is not None:
        absent = [c for c in class_names if c not in prompts]
        if absent:
            listed = [c for c in absent if c in missing_listed]
            more = f" (and {len(absent) - 5} more)" if len(absent) > 5 else ""
            why = (
                f'; {len(listed)} of them listed under "missing": rerun froster augment-text to ask again'
                if listed
                else ""
            )
            raise FrosterError(
                f"{path}: no description for class {', '.join(repr(c) for c in absent[:5])}{more} "
                f"of the {len(class_names)} classes{why}"
            )
        prompts = {c: prompts[c] for c in class_names}
    counts = {len(v) for v in prompts.values()}
    if len(counts) > 1:
        by_count: dict[int, str] = {}
        for name, v in prompts.items():
            by_count.setdefault(len(v), name)
        shown = ", ".join(f"{name!r} has {n}" for n, name in sorted(by_count.items()))
        raise FrosterError(f"{path}: every class needs the same number of descriptions; found {shown}")
    return prompts


def _parse_ours(path: Path, doc: dict) -> tuple[dict[str, list[str]], list[str]]:
    version = doc.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FrosterError(
            f'{path}: key "format_version": this froster reads up to {FORMAT_VERSION}, found {version!r}'
        )
    found: dict[str, list[str]] = {}
    for name, texts in doc["descriptions"].items():
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise FrosterError(
                f'{path}: key "descriptions"/{name!r}: expected a non-empty list of non-empty strings, found {texts!r}'
            )
        found[name] = [t.strip() for t in texts]
    missing = doc.get("missing", [])
    if not isinstance(missing, list) or not all(isinstance(m, str) for m in missing):
        raise FrosterError(f'{path}: key "missing": expected a list of class names, found {missing!r}')
    if doc.get("fallback"):
        log.warning("%s is an offline fallback: its descriptions are the class names in a sentence", path)
    return found, missing


def _parse_authors(path: Path, doc: dict[str, str], class_names: Optional[Sequence[str]]) -> dict[str, list[str]]:
    by_index: dict[int, str] = {}
    for key, value in doc.items():
        try:
            index = int(key)
        except ValueError:
            raise FrosterError(
                f'{path}: key {key!r}: the authors\' format is {{"idx": "Name: description"}} with integer indices'
            ) from None
        if not value.strip():
            raise FrosterError(f"{path}: key {key!r}: empty description")
        by_index[index] = value.strip()
    if class_names is None:
        out: dict[str, list[str]] = {}
        for index in sorted(by_index):
            name, sep, _ = by_index[index].partition(":")
            if not sep or not name.strip():
                raise FrosterError(f'{path}: key "{index}": expected "Name: description", found {by_index[index]!r}')
            out.setdefault(name.strip(), []).append(by_index[index])
        return out
    out_of_range = [i for i in by_index if not 0 <= i < len(class_names)]
    if out_of_range:
        raise FrosterError(
            f'{path}: key "{min(out_of_range)}": index outside the class list of {len(class_names)} classes '
            f"(the file has {len(by_index)} entries; index-keyed files must follow the class list's order)"
        )
    out = {}
    mismatched = []
    for label, name in enumerate(class_names):
        if label not in by_index:
            continue  # _finish names the absent class
        value = by_index[label]
        head = value.partition(":")[0]
        if normalize_name(head) not in (normalize_name(name), normalize_name(prompt_name(name))):
            mismatched.append((label, name, head))
        out[name] = [value]
    if mismatched:
        label, name, head = mismatched[0]
        log.warning(
            "%s: %d entries name another class than the class list at their index (first: key \"%d\" says %r, the "
            "class list has %r); check that the file follows the class list's order",
            path, len(mismatched), label, head, name,
        )
    return out


def _parse_csv(path: Path, text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    reader = csv.reader(text.splitlines())
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if line == 1 and [c.strip().lower() for c in row] == ["class", "description"]:
            continue
        if len(row) != 2:
            raise FrosterError(
                f"{path} line {line}: expected 2 columns class,description, found {len(row)} "
                "(quote a description that contains commas)"
            )
        name, desc = row[0].strip(), _clean(row[1], (row[0], prompt_name(row[0])))
        if not name or not desc:
            raise FrosterError(f"{path} line {line}: empty {'class' if not name else 'description'}")
        found.setdefault(name, []).append(desc)
    if not found:
        raise FrosterError(f"{path}: no class,description rows")
    return found


# ---- offline fallback ----


def offline_descriptions(
    class_names: Sequence[str], prompt_names: Optional[Sequence[str]] = None
) -> dict[str, list[str]]:
    """One plain sentence per class, sending nothing: ``{"brushing teeth": ["A video showing brushing teeth."]}``."""
    prompt_names = list(prompt_names) if prompt_names is not None else [prompt_name(c) for c in class_names]
    return {c: [f"A video showing {p}."] for c, p in zip(class_names, prompt_names)}


# ---- the LLM loop ----


@dataclass(frozen=True)
class LLMSettings:
    """How to reach the chat-completions server. ``api_key`` is kept out of the repr."""

    model: str  # model name the server knows, e.g. "gpt-3.5-turbo" or a vLLM/Ollama model
    base_url: Optional[str] = None  # OpenAI-compatible root, e.g. "http://localhost:8000/v1"; None: OpenAI's
    api_key: str = field(default="", repr=False)  # never logged or written
    timeout_s: float = 60.0  # read timeout per request; the client's default (600 s) hides a stuck server
    connect_timeout_s: float = 10.0
    max_retries: int = 5  # the client's retries of 429 / 5xx / timeouts / connection errors, with backoff


def make_client(settings: LLMSettings):
    """An ``openai.AsyncOpenAI`` for ``settings`` (an explicit key: the client would otherwise read OPENAI_API_KEY)."""
    import openai

    return openai.AsyncOpenAI(
        base_url=settings.base_url,
        api_key=settings.api_key or "none",
        max_retries=settings.max_retries,
        timeout=openai.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
    )


@dataclass
class DescribeResult:
    """What :func:`describe_classes` got."""

    descriptions: dict[str, list[str]]  # described classes (all n answers), in class order: bare descriptions
    missing: list[str]  # classes with fewer than n usable answers, in class order
    asked: int = 0  # descriptions asked for in this run (each may take several requests)
    resumed: int = 0  # descriptions taken from the progress file
    retried: int = 0  # repeated requests: the client's (429, 5xx, timeouts) and ours (unusable answers)


ProgressCallback = Callable[[int, int], None]


def describe_classes(
    class_names: Sequence[str],
    settings: LLMSettings,
    *,
    prompt_names: Optional[Sequence[str]] = None,
    instruction: str = DEFAULT_INSTRUCTION,
    system: Optional[str] = DEFAULT_SYSTEM,
    n: int = 1,
    concurrency: int = 8,
    attempts: int = 3,
    max_chars: int = 400,
    progress_path: Optional[str | os.PathLike] = None,
    on_progress: Optional[ProgressCallback] = None,
    client_factory: Callable[[LLMSettings], Any] = make_client,
) -> DescribeResult:
    """Ask the LLM for ``n`` descriptions of every class, ``concurrency`` requests at a time.

    ``prompt_names`` (default: derived from ``class_names``) are the names put in the instruction's ``{class}``.
    ``attempts``: requests per description when the answer is unusable (the client's own retries not counted).
    ``progress_path``: a JSONL file; answers already there (same model, instruction and system message) are not asked
    again, new ones are appended and fsync'd as they arrive. ``on_progress(done, total)`` is called once at the start
    and after each description (answered or given up); it may raise (e.g. KeyboardInterrupt): what was recorded stays.
    A key, model or URL the server refuses (400/401/403/404/422), or a server never reached, raises FrosterError.
    """
    class_names = list(class_names)
    prompt_names = list(prompt_names) if prompt_names is not None else [prompt_name(c) for c in class_names]
    if len(prompt_names) != len(class_names):
        raise ValueError(f"prompt_names has {len(prompt_names)} names, class_names {len(class_names)}")
    dupes = sorted({c for c in class_names if class_names.count(c) > 1})
    if dupes:
        raise FrosterError(f"the class list names {dupes[0]!r} more than once; descriptions are keyed by class name")
    if CLASS_PLACEHOLDER not in instruction:
        raise FrosterError(f"instruction {instruction!r} has no {CLASS_PLACEHOLDER} placeholder for the class name")
    if n < 1 or concurrency < 1 or attempts < 1 or max_chars < 1:
        raise ValueError("n, concurrency, attempts and max_chars must be >= 1")

    progress_path = Path(progress_path) if progress_path is not None else None
    known = _load_progress(progress_path, settings.model, instruction, system, set(class_names), n)
    pending = deque((i, k) for i in range(len(class_names)) for k in range(n) if (class_names[i], k) not in known)
    result = DescribeResult(descriptions={}, missing=[], resumed=len(known))
    total = len(class_names) * n
    if known:
        log.info("%s: %d of %d descriptions already there; asking for the other %d", progress_path, len(known),
                 total, len(pending))
    if on_progress is not None:
        on_progress(len(known), total)

    if pending:
        state = _LoopState(known=known, done=len(known), total=total)
        asyncio.run(
            _run_loop(
                pending, class_names=class_names, prompt_names=prompt_names, settings=settings,
                instruction=instruction, system=system, attempts=attempts, max_chars=max_chars,
                workers=min(concurrency, len(pending)), progress_path=progress_path, on_progress=on_progress,
                client_factory=client_factory, state=state, result=result,
            )
        )

    for name in class_names:
        texts = [known.get((name, k)) for k in range(n)]
        if all(texts):
            result.descriptions[name] = texts  # type: ignore[assignment]
        else:
            result.missing.append(name)
    return result


@dataclass
class _LoopState:
    known: dict[tuple[str, int], str]
    done: int
    total: int
    answered: int = 0  # answers received in this run (fail fast on an unreachable server until the first)


async def _run_loop(
    pending: deque, *, class_names: list[str], prompt_names: list[str], settings: LLMSettings, instruction: str,
    system: Optional[str], attempts: int, max_chars: int, workers: int, progress_path: Optional[Path],
    on_progress: Optional[ProgressCallback], client_factory: Callable[[LLMSettings], Any], state: _LoopState,
    result: DescribeResult,
) -> None:
    """``workers`` coroutines take (class, k) from ``pending`` until it is empty; answers go to ``state.known``."""
    progress = _ProgressWriter(progress_path) if progress_path is not None else None
    try:
        async with client_factory(settings) as client:

            async def worker() -> None:
                while pending:
                    i, k = pending.popleft()
                    name, prompt = class_names[i], prompt_names[i]
                    messages = ([{"role": "system", "content": system}] if system else []) + [
                        {"role": "user", "content": instruction.replace(CLASS_PLACEHOLDER, prompt)}
                    ]
                    result.asked += 1
                    text = await _ask(client, settings, messages, name, prompt, k, attempts, max_chars, state, result)
                    if text is not None:
                        state.known[(name, k)] = text
                        if progress is not None:
                            progress.append(
                                {"class": name, "k": k, "text": text, "model": settings.model,
                                 "instruction": instruction, "system": system}
                            )
                    state.done += 1
                    if on_progress is not None:
                        on_progress(state.done, state.total)

            tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
            try:
                await asyncio.gather(*tasks)
            finally:  # one worker failed (fatal status) or we are cancelled: stop the others before closing
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if progress is not None:
            progress.close()


async def _ask(client, settings, messages, name, prompt, k, attempts, max_chars, state, result) -> Optional[str]:
    """One description: up to ``attempts`` requests; None when the class must be reported missing."""
    import openai

    key = settings.api_key
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            result.retried += 1
        try:
            raw = await client.chat.completions.with_raw_response.create(model=settings.model, messages=messages)
        except openai.APIStatusError as e:
            status = e.status_code
            detail = _redact(_server_message(e), key)[:200]  # redacted before cut: no part of a key is left
            if status in _FATAL_STATUS:
                raise FrosterError(
                    f"the server at {_safe_url(settings.base_url)} answered {status} ({_FATAL_STATUS[status]}) for "
                    f"model {settings.model!r}: {detail}; check --base-url, --model and --api-key-env"
                ) from None
            if status == 429 or status >= 500:
                result.retried += settings.max_retries  # the client retried before giving up
            log.warning("class %r: server answered %d after the client's retries (%s); reported missing",
                        name, status, detail)
            return None
        except openai.APIConnectionError as e:  # includes APITimeoutError; the client retried it already
            result.retried += settings.max_retries
            if state.answered == 0 and not isinstance(e, openai.APITimeoutError):
                raise FrosterError(
                    f"cannot reach the server at {_safe_url(settings.base_url)} ({type(e).__name__}, "
                    f"{_redact(str(e.__cause__ or e), key)[:200]}); check --base-url, or use --offline"
                ) from None
            log.warning("class %r: %s after the client's retries; reported missing", name, type(e).__name__)
            return None
        result.retried += int(getattr(raw, "retries_taken", 0) or 0)
        state.answered += 1
        body = raw.http_response.text.replace(key, "***") if key else raw.http_response.text
        text, problem = _answer_text(body, (name, prompt), max_chars)
        if text is not None:
            return text
        log.info("class %r (description %d): %s; %s", name, k + 1, _redact(problem, key),
                 "asking again" if attempt < attempts else f"giving up after {attempts} attempts, reported missing")
    return None


def _answer_text(body: str, names: tuple[str, str], max_chars: int) -> tuple[Optional[str], str]:
    """The cleaned one-line answer of a chat-completions body, or (None, what is wrong with it)."""
    try:
        choice = json.loads(body)["choices"][0]
        content, finish = choice["message"]["content"], choice.get("finish_reason")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None, f"malformed response body ({body[:80]!r})"
    if not isinstance(content, str):
        return None, f"malformed response body (message content is {type(content).__name__})"
    if finish == "length":
        return None, "answer cut off (finish_reason: length)"
    text = _clean(content, names)
    if not text:
        return None, "empty answer"
    if "\n" in text:
        kind = "multi-paragraph" if re.search(r"\n\s*\n", text) else "multi-line"
        return None, f"{kind} answer (one line expected)"
    if len(text) > max_chars:
        return None, f"over-long answer ({len(text)} characters, at most {max_chars})"
    return text, ""


def _clean(text: str, names: Sequence[str]) -> str:
    """Strip whitespace, wrapping quotes and a leading "Name:" (or "Description:")."""
    wanted = {normalize_name(n) for n in names} | {"description"}
    text = text.replace("\r\n", "\n").strip()
    for _ in range(3):
        if len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]]:
            text = text[1:-1].strip()
        m = re.match(r"([^:\n]{1,100}):\s*", text)
        if m and normalize_name(m.group(1)) in wanted:
            text = text[m.end():].strip()
    return text


# ---- the progress file ----


class _ProgressWriter:
    """Append-only JSONL, one fsync'd line per answer; a torn last line (a kill mid-write) is closed off first."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a+b")
        self._f.seek(0, os.SEEK_END)
        if self._f.tell() > 0:
            self._f.seek(-1, os.SEEK_END)
            if self._f.read(1) != b"\n":
                self._f.write(b"\n")
        self.path = path

    def append(self, record: dict) -> None:
        self._f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _load_progress(
    path: Optional[Path], model: str, instruction: str, system: Optional[str], classes: set[str], n: int
) -> dict[tuple[str, int], str]:
    if path is None or not path.exists():
        return {}
    known: dict[tuple[str, int], str] = {}
    other = 0
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line.decode("utf-8"))
                name, k, text = rec["class"], rec["k"], rec["text"]
                ok = isinstance(name, str) and isinstance(k, int) and isinstance(text, str) and bool(text.strip())
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                log.warning("%s line %d: unreadable progress record (a write cut short?); its class is asked again",
                            path, line_no)
                continue
            if (rec.get("model"), rec.get("instruction"), rec.get("system")) != (model, instruction, system):
                other += 1
            elif name in classes and 0 <= k < n:
                known[(name, k)] = text
    if other:
        log.info("%s: %d answers from another model, instruction or system message are not reused", path, other)
    return known


# ---- helpers ----


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _redact(text: str, key: str) -> str:
    """``text`` with the key (and any bearer token) replaced: server messages sometimes echo what they were sent."""
    if key:
        text = text.replace(key, "***")
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)


def _server_message(e: Exception) -> str:
    """The server's own error message when its body has one (OpenAI: {"error": {"message": ...}}), else the type."""
    body = getattr(e, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    msg = body.get("message") if isinstance(body, dict) else None
    return str(msg or type(e).__name__)


def _safe_url(url: Optional[str]) -> str:
    """The URL without user:password (a base URL may carry credentials)."""
    if not url:
        return "the default OpenAI URL"
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
