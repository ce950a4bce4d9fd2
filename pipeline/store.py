"""The feature store: stage one's output, a Zarr v3 directory that stages two and three read.

Layout of ``NAME.zarr/`` (row i of every per-video array is row i of ``manifest.parquet``)::

    zarr.json                     root group; attrs["froster"] holds the settings, provenance and ``complete``
    video/features   [N, V, T, D] float16  per-frame teacher embedding after the projection, L2-normalised
    video/frame_index [N, V, T]   int32    0-based decoded frame of each view's frames (-1 for a failed video)
    video/crop       [N, V, 4]    int32    crop box x0, y0, x1, y1 in source pixels, exclusive (-1 when failed)
    video/flip       [N, V]       bool     horizontal flip of each view
    video/done       [N]          bool     the row holds features; false for a failed video
    text/features    [P, C, D]    float16  teacher text feature of prompt p of class c, L2-normalised
    manifest.parquet              the manifest; at completion failures carry their status and reason
    prompts.parquet               the P x C prompt strings (row p * C + c), as ``PromptTable.to_arrow`` writes them
    blocks/NNNNNN.json            per-block record (status of each row) while extraction runs; merged, then removed

Every array is compressed with an explicit ``BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")`` (a codec of the
Zarr v3 spec; zarr's default codecs and its string dtype are extensions and are not used) and has no sharding. Every
per-video array is chunked by the same ``block_rows`` rows, so a row block is one chunk file per array. A writer owns
whole row blocks (``done`` included): two writers in one chunk lose rows (zarr-python issue 3514).

Write protocol of a block (``write_block``): one assignment per array, then the block record (an atomic JSON file),
then ``done`` last. A block is complete when its record exists and every row the record calls ``ok`` is done, so a
process killed at any moment leaves either a complete block or one that is redone whole; failed videos are not
retried forever because their failure is in the record. ``finalize`` merges the records into ``manifest.parquet`` and
sets ``complete`` last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from froster.pipeline.errors import FrosterError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ATTRS_KEY = "froster"
MANIFEST_FILE = "manifest.parquet"
PROMPTS_FILE = "prompts.parquet"
BLOCKS_DIR = "blocks"
DEFAULT_BLOCK_ROWS = 64  # [64, V=4, T=8, D=512] f16 = 2 MiB per features chunk; one dask task per block

# Attributes that are not settings: they change as a run goes on, or do not change the stored values.
NOT_SETTINGS = frozenset(
    {"complete", "counts", "config", "froster_version", "descriptions.file", "teacher_request",
     "teacher.allow_random", "teacher.weights_file"}
)


def codec():
    """The one compressor of every array (zarr v3 spec's blosc codec, chosen explicitly)."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from zarr.json (tuples become lists, numpy scalars plain numbers)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def differing_settings(existing_attrs: dict, new_attrs: dict) -> list[tuple[str, Any, Any]]:
    """Settings whose value differs between a store's attributes and a new run's, as ``(name, old, new)``.

    Nested dicts are compared key by key under dotted names (``teacher.model``); a key missing on one side counts as
    ``None``. Names in ``NOT_SETTINGS`` (state such as ``complete``, and what does not change the stored values:
    ``froster_version``, file locations whose content is compared by sha256, the teacher options as typed) are
    ignored.
    """
    old = _flatten(jsonable(existing_attrs))
    new = _flatten(jsonable(new_attrs))
    out = []
    for name in sorted(set(old) | set(new)):
        if name in NOT_SETTINGS or name.split(".")[0] in NOT_SETTINGS:
            continue
        if old.get(name) != new.get(name):
            out.append((name, old.get(name), new.get(name)))
    return out


def manifest_fingerprint(manifest) -> str:
    """sha256 of what identifies a manifest's rows: ids, paths, labels, names, splits and the class lists.

    Probe columns (frames, size, mtime, status) are left out: probing again or moving the video root does not change
    which video each row is.
    """
    h = hashlib.sha256()
    for name in ("video_id", "path", "label", "class_name", "prompt_name", "split"):
        h.update(json.dumps([name, manifest.column(name)], default=int).encode())
    h.update(json.dumps([list(manifest.classes), list(manifest.prompt_names)]).encode())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _write_parquet_atomic(table, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _is_store(path: Path) -> bool:
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and ATTRS_KEY in meta.get("attributes", {})


class FeatureStore:
    """A feature store directory opened for reading (``mode="r"``) or for writing blocks (``mode="r+"``).

    Use ``FeatureStore.open(path)`` to read and ``FeatureStore.create(...)`` to make a new one.
    """

    def __init__(self, path: Path, group, mode: str):
        self.path = Path(path)
        self._group = group
        self.mode = mode
        self._manifest = None
        self._prompts = None

    # ---- opening and creating ----

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> "FeatureStore":
        """Open an existing store; raises FrosterError naming ``path`` when it is not a froster store."""
        import zarr

        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise FrosterError(f"{path}: not a feature store (expected a Zarr v3 directory with zarr.json)")
        try:
            group = zarr.open_group(str(path), mode=mode)
        except Exception as e:
            raise FrosterError(f"{path}: cannot open as a Zarr v3 group ({e})") from e
        if ATTRS_KEY not in group.attrs:
            raise FrosterError(f"{path}: a Zarr group but not a froster store (no attrs[{ATTRS_KEY!r}])")
        return cls(path, group, mode)

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        manifest,
        prompts,
        text_features: np.ndarray,
        attrs: dict,
        views: int,
        frames: int,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        overwrite: bool = False,
    ) -> "FeatureStore":
        """Create a store for ``manifest`` (N rows) with V=``views`` views of T=``frames`` frames.

        ``text_features`` is float ``[P, C, D]`` (stored as float16); ``prompts`` a PromptTable whose ``to_arrow()``
        goes to prompts.parquet; ``attrs`` the settings and provenance, stored under ``attrs["froster"]`` with
        ``block_rows``, ``format`` and ``complete=False``. The store is built in a hidden sibling directory and renamed
        into place, so ``path`` is either absent or a whole store with every array. An existing ``path`` is an error
        unless ``overwrite``.
        """
        import zarr

        from froster.pipeline.manifests import write_manifest

        path = Path(path)
        if path.exists() and not overwrite:
            raise FrosterError(f"{path} already exists (use --overwrite to replace it)")
        if path.exists() and not (_is_store(path) or (path.is_dir() and not any(path.iterdir()))):
            # --overwrite removes a store, never an unrelated folder (say --out . by mistake).
            raise FrosterError(
                f"{path} exists and is not a feature store; refusing to replace it, even with --overwrite"
            )
        text = np.asarray(text_features)
        if text.ndim != 3:
            raise ValueError(f"text_features must be [P, C, D], got shape {text.shape}")
        num_prompts, num_classes, dim = text.shape
        if num_classes != len(manifest.prompt_names):
            raise ValueError(f"text_features has C={num_classes}, manifest has {len(manifest.prompt_names)} classes")
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        n = len(manifest)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.creating-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")

        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        rows = max(1, min(block_rows, n))

        def make(name, shape, chunks, dtype, fill):
            return group.create_array(
                name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill,
                filters=(), compressors=(codec(),),
            )

        make("video/features", (n, views, frames, dim), (rows, views, frames, dim), "float16", 0.0)
        make("video/frame_index", (n, views, frames), (rows, views, frames), "int32", -1)
        make("video/crop", (n, views, 4), (rows, views, 4), "int32", -1)
        make("video/flip", (n, views), (rows, views), "bool", False)
        make("video/done", (n,), (rows,), "bool", False)
        tf = make("text/features", text.shape, text.shape, "float16", 0.0)
        tf[...] = text.astype(np.float16)

        write_manifest(manifest, tmp / MANIFEST_FILE)
        _write_parquet_atomic(prompts.to_arrow(), tmp / PROMPTS_FILE)
        (tmp / BLOCKS_DIR).mkdir()
        meta = dict(jsonable(attrs))
        meta.update(format=FORMAT_VERSION, block_rows=int(block_rows), complete=False)
        group.attrs[ATTRS_KEY] = meta

        if path.exists():
            log.info("overwriting %s", path)
            shutil.rmtree(path)
        os.rename(tmp, path)
        return cls.open(path, mode="r+")

    # ---- reading ----

    @property
    def attrs(self) -> dict:
        """The store's settings and provenance (a copy of ``attrs["froster"]``)."""
        return dict(self._group.attrs[ATTRS_KEY])

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete", False))

    @property
    def video_features(self):
        return self._group["video/features"]  # [N, V, T, D] float16

    @property
    def frame_index(self):
        return self._group["video/frame_index"]  # [N, V, T] int32

    @property
    def crop(self):
        return self._group["video/crop"]  # [N, V, 4] int32

    @property
    def flip(self):
        return self._group["video/flip"]  # [N, V] bool

    @property
    def done(self):
        return self._group["video/done"]  # [N] bool

    @property
    def text_features(self):
        return self._group["text/features"]  # [P, C, D] float16

    @property
    def num_videos(self) -> int:
        return int(self.done.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.flip.shape[1])

    @property
    def num_frames(self) -> int:
        return int(self.frame_index.shape[2])

    @property
    def dim(self) -> int:
        return int(self.text_features.shape[2])

    @property
    def block_rows(self) -> int:
        return int(self.attrs["block_rows"])

    @property
    def num_blocks(self) -> int:
        return -(-self.num_videos // self.block_rows)

    def block_range(self, block: int) -> tuple[int, int]:
        """Rows ``[lo, hi)`` of row block ``block``."""
        if not 0 <= block < self.num_blocks:
            raise IndexError(f"block {block} outside [0, {self.num_blocks})")
        lo = block * self.block_rows
        return lo, min(lo + self.block_rows, self.num_videos)

    @property
    def manifest(self):
        """The stored manifest (a ``Manifest``); row i describes array row i."""
        if self._manifest is None:
            from froster.pipeline.manifests import read_manifest

            self._manifest = read_manifest(self.path / MANIFEST_FILE)
        return self._manifest

    @property
    def prompts(self):
        """The stored prompts (a ``PromptTable``): ``texts[p][c]`` is the string of ``text_features[p, c]``."""
        if self._prompts is None:
            import pyarrow.parquet as pq

            from froster.pipeline.prompts import PromptTable

            self._prompts = PromptTable.from_arrow(pq.read_table(self.path / PROMPTS_FILE))
        return self._prompts

    def views(self, row: int) -> list:
        """The V views of row ``row`` as ``View``s, exactly as the teacher saw them."""
        from froster.pipeline.views import View

        fi = np.asarray(self.frame_index[row])  # [V, T]
        crop = np.asarray(self.crop[row])  # [V, 4]
        flip = np.asarray(self.flip[row])  # [V]
        return [
            View(frame_index=fi[v].astype(np.int32), crop=crop[v].astype(np.int32), flip=bool(flip[v]))
            for v in range(fi.shape[0])
        ]

    # ---- block records and progress ----

    def _record_path(self, block: int) -> Path:
        return self.path / BLOCKS_DIR / f"{block:06d}.json"

    def block_record(self, block: int) -> dict | None:
        """The record ``write_block`` left for ``block`` (``{"block", "lo", "hi", "rows": [...]}``), or None."""
        p = self._record_path(block)
        if not p.is_file():
            return None
        return json.loads(p.read_text())

    def pending_blocks(self) -> list[int]:
        """Blocks that still have to be (re)written: no record, or a row the record calls ok is not done."""
        if self.complete:
            return []
        done = np.asarray(self.done[:])  # [N]
        pending = []
        for b in range(self.num_blocks):
            rec = self.block_record(b)
            if rec is None or any(r["status"] == "ok" and not done[r["row"]] for r in rec["rows"]):
                pending.append(b)
        return pending

    def row_status(self) -> list[dict]:
        """Per row: ``{"row", "status", "reason"}`` from the block records (during a run) or the manifest (after)."""
        m = self.manifest
        out = [
            {"row": i, "status": s, "reason": r}
            for i, (s, r) in enumerate(zip(m.column("status"), m.column("reason")))
        ]
        if not self.complete:
            for b in range(self.num_blocks):
                rec = self.block_record(b)
                for r in rec["rows"] if rec else ():
                    out[r["row"]] = {"row": r["row"], "status": r["status"], "reason": r.get("reason", "")}
        return out

    # ---- writing ----

    def _check_writable(self) -> None:
        if self.mode == "r":
            raise RuntimeError(f"{self.path} is open read-only")

    def write_block(
        self,
        block: int,
        *,
        features: np.ndarray,
        frame_index: np.ndarray,
        crop: np.ndarray,
        flip: np.ndarray,
        done: np.ndarray,
        rows: list[dict],
    ) -> None:
        """Write row block ``block`` whole: one assignment per array, the block record, then ``done`` last.

        Shapes for the block's R rows: ``features [R, V, T, D]``, ``frame_index [R, V, T]``, ``crop [R, V, 4]``,
        ``flip [R, V]``, ``done [R]``. ``rows`` has one dict per row: ``row`` (absolute), ``status`` (``ok`` or a
        failure status), ``reason``, and optionally probe fields (``frames``, ``fps``, ``width``, ``height``,
        ``size``, ``mtime``) that ``finalize`` copies into the manifest. Idempotent: rewriting a block is safe.
        """
        self._check_writable()
        lo, hi = self.block_range(block)
        r = hi - lo
        v, t, d = self.num_views, self.num_frames, self.dim
        expect = {
            "features": (features, (r, v, t, d)),
            "frame_index": (frame_index, (r, v, t)),
            "crop": (crop, (r, v, 4)),
            "flip": (flip, (r, v)),
            "done": (done, (r,)),
        }
        for name, (arr, shape) in expect.items():
            if tuple(np.shape(arr)) != shape:
                raise ValueError(f"block {block}: {name} must have shape {shape}, got {tuple(np.shape(arr))}")
        if sorted(x["row"] for x in rows) != list(range(lo, hi)):
            raise ValueError(f"block {block}: rows must list each of rows {lo}..{hi - 1} once")
        done = np.asarray(done, dtype=bool)
        for x in rows:
            if done[x["row"] - lo] != (x["status"] == "ok"):
                raise ValueError(
                    f"block {block}: row {x['row']} has status {x['status']!r} but done={done[x['row'] - lo]}"
                )

        self.video_features[lo:hi] = np.asarray(features, dtype=np.float16)
        self.frame_index[lo:hi] = np.asarray(frame_index, dtype=np.int32)
        self.crop[lo:hi] = np.asarray(crop, dtype=np.int32)
        self.flip[lo:hi] = np.asarray(flip, dtype=bool)
        _write_json_atomic(self._record_path(block), jsonable({"block": block, "lo": lo, "hi": hi, "rows": rows}))
        self.done[lo:hi] = done

    def finalize(self, extra_attrs: dict | None = None) -> dict:
        """Merge the block records into manifest.parquet, then set ``complete`` (last). Returns the counts.

        Raises RuntimeError when a block is still pending.
        """
        import pyarrow as pa

        from froster.pipeline.manifests import write_manifest

        self._check_writable()
        pending = self.pending_blocks()
        if pending:
            raise RuntimeError(f"{self.path}: blocks {pending[:10]} are not written yet")
        m = self.manifest
        table = m.table
        updates: dict[str, list] = {}
        for name in ("status", "reason", "frames", "fps", "width", "height", "size", "mtime"):
            if name in table.column_names:
                updates[name] = table.column(name).to_pylist()
        for b in range(self.num_blocks):
            for r in self.block_record(b)["rows"]:
                for name, values in updates.items():
                    if name in r:
                        values[r["row"]] = r[name]
        for name, values in updates.items():
            i = table.column_names.index(name)
            table = table.set_column(i, table.field(i), pa.array(values, type=table.field(i).type))
        merged = replace(m, table=table)
        write_manifest(merged, self.path / MANIFEST_FILE)
        self._manifest = None

        counts = count_rows(updates["status"], np.asarray(self.done[:]))
        meta = self.attrs
        meta.update(jsonable(extra_attrs or {}))
        meta["counts"] = counts
        meta["complete"] = True
        self._group.attrs[ATTRS_KEY] = meta
        shutil.rmtree(self.path / BLOCKS_DIR, ignore_errors=True)
        return counts


def count_rows(statuses: Iterable[str], done: np.ndarray) -> dict:
    """``{"videos", "done", "failed", "by_status": {status: n}}`` over the rows (failed = status other than ok)."""
    statuses = list(statuses)
    by_status: dict[str, int] = {}
    for s in statuses:
        by_status[s] = by_status.get(s, 0) + 1
    failed = sum(n for s, n in by_status.items() if s != "ok")
    return {"videos": len(statuses), "done": int(np.count_nonzero(done)), "failed": failed, "by_status": by_status}
