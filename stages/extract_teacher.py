"""Stage one: run the frozen CLIP teacher once over every sampled view and every class prompt; write a feature store.

Reads a manifest (``--manifest`` Parquet, or annotation files through the manifest builders), the videos under its
video root, the teacher (open_clip name + pretrained tag, ``--checkpoint``, or ``local-dir:PATH``) and optionally a
description file. Writes the Zarr v3 store of ``pipeline/store.py`` (``cache/NAME.zarr``): per video V views of T
frames (the views themselves and the teacher's per-frame features), and the teacher's text features of the P x C
prompts.

    froster extract-teacher --manifest cache/k400-train.parquet --model ViT-B-16 --pretrained openai \
        --out cache/k400.zarr --device cuda --batch-size 16

Running: one process decodes the next videos in a thread pool while the teacher encodes the current batch (frames of
``batch_size`` videos per forward); ``--workers N`` / ``--scheduler ADDRESS`` run one dask task per row block instead
(decode + teacher + write of that block, threads only inside a task). Resumable at any moment: a rerun of the same
command skips complete blocks and redoes a partial one whole; on a complete store it returns at once. A video that
cannot be read keeps its row with ``done = false`` and its status and reason (in the block record, then in the stored
manifest); a rerun does not retry it (``--overwrite`` starts over).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from froster.pipeline.errors import ConfigError, FrosterError
from froster.pipeline.precision import check_device_precision, resolve_precision
from froster.pipeline.precision import autocast as _autocast

log = logging.getLogger(__name__)

VIEW_MODES = ("auto", "train", "test")
DEFAULT_TRAIN_VIEWS = 4  # the brief's V for training splits
DEFAULT_TEST_CLIPS = 3  # the paper's 3 clips x 1 crop at test
# Zarr's I/O concurrency inside a dask worker process: several workers share the disk (zarr docs, performance).
_WORKER_ZARR_CONFIG = {"async.concurrency": 4, "threading.max_workers": 2}


@dataclass(frozen=True)
class ExtractConfig:
    """Everything stage one depends on. Settings that change the stored values are recorded in the store and a rerun
    with different ones is refused (``overwrite`` starts over)."""

    out: Path  # the store directory, e.g. cache/k400.zarr
    manifest: Optional[Path] = None  # a manifest Parquet file (froster manifest); None = build one from `annotations`
    annotations: Optional[dict] = None  # keyword arguments of pipeline.manifests.build_manifest when `manifest` is None
    video_root: Optional[Path] = None  # overrides the manifest's video root (videos moved since it was written)
    split: Optional[str] = None  # keep only the manifest rows of this split (and pick train/test views from its name)
    model: str = "ViT-B-16"  # open_clip model name, or local-dir:PATH (an open_clip config + weights folder)
    pretrained: Optional[str] = None  # open_clip pretrained tag, e.g. "openai" (the paper's teacher: ViT-B-16 + openai)
    checkpoint: Optional[Path] = None  # a local state dict for `model` (instead of `pretrained`)
    quick_gelu: Optional[bool] = None  # force QuickGELU on/off; None = decide (OpenAI-trained weights need it)
    allow_random_teacher: bool = False  # allow random weights (tests only); otherwise missing weights are an error
    image_mean: Optional[tuple[float, ...]] = None  # override of the model's preprocess mean (3 values)
    image_std: Optional[tuple[float, ...]] = None  # override of the model's preprocess std (3 values)
    frames: int = 8  # T, frames per view (the release's NUM_FRAMES)
    views: Optional[int] = None  # V; None = 4 training views, or 3 test clips (x 1 centre crop)
    view_mode: str = "auto"  # train | test | auto (test when the split name holds "test" or "val" but not "train")
    rate: int = 16  # frames between samples at target_fps (the release's SAMPLING_RATE)
    target_fps: float = 30.0  # the release's TARGET_FPS: the window is T * rate frames at this rate
    seed: int = 0  # keys the training views' counter-based RNG (and random teacher weights)
    descriptions: Optional[Path] = None  # description file (ours / authors' JSON / CSV); None = templates + names
    device: str = "cpu"  # cpu | cuda
    precision: str = "auto"  # auto (fp32 on cpu, bf16 autocast on cuda) | fp32 | bf16 | fp16
    batch_size: int = 8  # videos per teacher forward (each V x T frames)
    decode_threads: int = 4  # threads decoding and rendering the next videos while the teacher runs
    block_rows: int = 64  # rows per chunk of every per-video array = rows per dask task
    workers: int = 0  # > 0: start a dask LocalCluster of this many processes (one task per row block)
    scheduler: Optional[str] = None  # tcp://HOST:PORT of an existing dask scheduler (instead of `workers`)
    overwrite: bool = False  # replace an existing store with different settings instead of refusing
    progress: bool = True  # show a progress bar on stderr

    def __post_init__(self):
        def positive(name: str, minimum: int = 1):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"--{name.replace('_', '-')}: expected an integer >= {minimum}, found {value!r}")

        for name in ("frames", "rate", "batch_size", "decode_threads", "block_rows"):
            positive(name)
        positive("workers", 0)
        if self.views is not None:
            positive("views")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"--seed: expected an integer, found {self.seed!r}")
        if not (isinstance(self.target_fps, (int, float)) and math.isfinite(self.target_fps) and self.target_fps > 0):
            raise ConfigError(f"--target-fps: expected a number > 0, found {self.target_fps!r}")
        if self.view_mode not in VIEW_MODES:
            raise ConfigError(f"--view-mode: expected one of {', '.join(VIEW_MODES)}, found {self.view_mode!r}")
        check_device_precision(self.device, self.precision)
        if (self.manifest is None) == (self.annotations is None):
            raise ConfigError("give either --manifest FILE or the annotation options (e.g. --annotations), not both")
        if self.workers and self.scheduler:
            raise ConfigError("give either --workers N or --scheduler ADDRESS, not both")
        if self.scheduler is not None and "://" not in self.scheduler:
            raise ConfigError(f"--scheduler: expected an address like tcp://HOST:PORT, found {self.scheduler!r}")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if value is not None and len(value) != 3:
                raise ConfigError(f"--{name.replace('_', '-')}: expected 3 values (R,G,B), found {len(value)}")
        if self.checkpoint is not None and self.pretrained is not None:
            raise ConfigError("give either --pretrained TAG or --checkpoint FILE, not both")

    @property
    def resolved_precision(self) -> str:
        return resolve_precision(self.device, self.precision)


# ---- what a worker needs: small, picklable descriptions of the work ----


@dataclass(frozen=True)
class VideoRow:
    """One manifest row as the extraction sees it."""

    row: int
    video_id: str
    path: str  # absolute
    status: str
    reason: str
    frames: int
    fps: float
    width: int
    height: int
    size: int
    mtime: float


@dataclass(frozen=True)
class Sampling:
    """How views are drawn and rendered (the same in every process)."""

    mode: str  # train | test
    frames: int  # T
    views: int  # V
    rate: int
    target_fps: float
    seed: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class Compute:
    """How the teacher runs (does not change the stored views)."""

    teacher: object  # pipeline.teacher.TeacherSpec
    device: str
    precision: str  # fp32 | bf16 | fp16
    batch_size: int  # videos per forward
    decode_threads: int
    seed: int
    torch_threads: Optional[int] = None  # set in each dask worker (its nanny sets OMP_NUM_THREADS=1); None = leave


@dataclass
class _Prepared:
    """A decoded and rendered video, or a failure record."""

    row: int
    record: dict  # {"row", "status", "reason", probe fields...}
    frame_index: np.ndarray  # [V, T] int32 (-1 when failed)
    crop: np.ndarray  # [V, 4] int32 (-1 when failed)
    flip: np.ndarray  # [V] bool
    pixels: object = None  # torch float32 [V * T, 3, S, S], None when failed


# ---- configuration -> inputs ----


def _load_manifest(config: ExtractConfig):
    from froster.pipeline import manifests

    if config.manifest is not None:
        m = manifests.read_manifest(config.manifest)
        source = str(config.manifest)
    else:
        m = manifests.build_manifest(**config.annotations)
        source = "annotation options"
    if config.video_root is not None:
        if not Path(config.video_root).is_dir():
            raise FrosterError(f"--video-root {config.video_root}: not a directory")
        m = replace(m, video_root=Path(config.video_root).resolve())
    if config.split is not None and config.manifest is not None:  # the builders select the split themselves
        splits = m.column("split")
        keep = [i for i, s in enumerate(splits) if s == config.split]
        if not keep:
            found = sorted(set(splits))
            raise FrosterError(f"--split {config.split!r}: no row of {source} has that split; found {found}")
        if len(keep) != len(splits):
            m = replace(m, table=m.table.take(keep))
    if len(m) == 0:
        raise FrosterError(f"{source}: the manifest has no rows")
    return m


def _is_test_split(name: str) -> bool:
    """test1, test, val, validate -> True; train1, train, trainval, all -> False."""
    n = name.lower()
    return "train" not in n and ("test" in n or "val" in n)


def _resolve_view_mode(config: ExtractConfig, manifest) -> str:
    if config.view_mode != "auto":
        return config.view_mode
    splits = sorted(set(manifest.column("split")))
    kinds = {_is_test_split(s) for s in splits}
    if len(kinds) != 1:
        raise FrosterError(
            f"--view-mode auto: the manifest mixes training and test splits {splits}; pick one with --split "
            "or say --view-mode train|test"
        )
    return "test" if kinds.pop() else "train"


def manifest_rows(manifest) -> list[VideoRow]:
    root = Path(manifest.video_root)
    cols = {
        name: manifest.column(name)
        for name in ("video_id", "path", "status", "reason", "frames", "fps", "width", "height", "size", "mtime")
    }
    return [
        VideoRow(
            row=i, video_id=cols["video_id"][i], path=str(root / cols["path"][i]), status=cols["status"][i],
            reason=cols["reason"][i] or "", frames=int(cols["frames"][i] or 0), fps=float(cols["fps"][i] or 0.0),
            width=int(cols["width"][i] or 0), height=int(cols["height"][i] or 0),
            size=int(cols["size"][i] if cols["size"][i] is not None else -1),
            mtime=float(cols["mtime"][i] if cols["mtime"][i] is not None else -1.0),
        )
        for i in range(len(manifest))
    ]


def _teacher_spec(config: ExtractConfig):
    from froster.pipeline.teacher import TeacherSpec

    return TeacherSpec(
        model=config.model,
        pretrained=config.pretrained,
        checkpoint=None if config.checkpoint is None else str(config.checkpoint),
        quick_gelu=config.quick_gelu,
        allow_random=config.allow_random_teacher,
        image_mean=config.image_mean,
        image_std=config.image_std,
    )


def _teacher_request(config: ExtractConfig) -> dict:
    """The teacher options as given: equal requests let a complete store return without loading the teacher."""
    ckpt = None
    if config.checkpoint is not None:
        st = os.stat(config.checkpoint) if Path(config.checkpoint).is_file() else None
        ckpt = [str(Path(config.checkpoint).resolve()), st.st_size if st else None, st.st_mtime if st else None]
    return {
        "model": config.model, "pretrained": config.pretrained, "checkpoint": ckpt, "quick_gelu": config.quick_gelu,
        "image_mean": config.image_mean, "image_std": config.image_std,
    }


def _settings(config: ExtractConfig, manifest, mode: str, views: int, descriptions_sha: Optional[str]) -> dict:
    """The store attributes that do not need the teacher loaded."""
    import froster
    from froster.pipeline.prompts import TEMPLATES
    from froster.pipeline.store import FORMAT_VERSION, manifest_fingerprint
    from froster.pipeline.video import decord_version
    from froster.pipeline.views import RESIZE_IMPL

    return {
        "format": FORMAT_VERSION,
        "manifest": {"sha256": manifest_fingerprint(manifest), "videos": len(manifest)},
        "frames": config.frames,
        "views": views,
        "view_mode": mode,
        "rate": config.rate,
        "target_fps": float(config.target_fps),
        "seed": config.seed,
        "templates": list(TEMPLATES),
        "descriptions": None if config.descriptions is None
        else {"file": str(config.descriptions), "sha256": descriptions_sha},
        "resize_impl": RESIZE_IMPL,
        "decord_version": decord_version(),
        "precision": config.resolved_precision,
        "block_rows": config.block_rows,
        "froster_version": froster.__version__,
    }


def _load_teacher(spec, device: str, seed: int):
    import torch

    from froster.pipeline.teacher import freeze, load_clip

    # Seeded so that a random teacher (tests) is the same in every process that loads it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loaded = load_clip(spec, device=device)
    freeze(loaded.model)
    return loaded


_TEACHERS: dict = {}
_TEACHERS_LOCK = threading.Lock()


def _cached_teacher(compute: Compute):
    """The teacher of this process (dask workers keep one per spec across tasks)."""
    key = (repr(compute.teacher), compute.device, compute.seed)
    with _TEACHERS_LOCK:
        if key not in _TEACHERS:
            _TEACHERS[key] = _load_teacher(compute.teacher, compute.device, compute.seed)
        return _TEACHERS[key]


# ---- the work ----


def encode_text_features(loaded, texts: Sequence[Sequence[str]], device: str, precision: str, batch: int = 256):
    """Normalised teacher text features of ``texts[P][C]`` -> float32 numpy ``[P, C, D]``."""
    import torch
    import torch.nn.functional as F

    flat = [t for row in texts for t in row]
    out = []
    with torch.inference_mode(), _autocast(device, precision):
        for i in range(0, len(flat), batch):
            tokens = loaded.tokenizer(flat[i : i + batch]).to(device)  # [b, L]
            out.append(F.normalize(loaded.model.encode_text(tokens).float(), dim=-1).cpu())  # [b, D]
    feats = torch.cat(out).numpy()  # [P * C, D]
    return feats.reshape(len(texts), len(texts[0]), -1)  # [P, C, D]


def encode_frames(model, pixels, device: str, precision: str):
    """Normalised ``encode_image`` of ``pixels [F, 3, S, S]`` -> float32 tensor ``[F, D]`` on the CPU."""
    import torch
    import torch.nn.functional as F

    with torch.inference_mode(), _autocast(device, precision):
        x = pixels.to(device, non_blocking=True)
        return F.normalize(model.encode_image(x).float(), dim=-1).cpu()  # [F, D]


def _failed(row: VideoRow, sampling: Sampling, status: str, reason: str, probe: Optional[dict] = None) -> _Prepared:
    record = {"row": row.row, "status": status, "reason": reason, **(probe or {})}
    v, t = sampling.views, sampling.frames
    return _Prepared(
        row.row, record, np.full((v, t), -1, np.int32), np.full((v, 4), -1, np.int32), np.zeros(v, bool)
    )


def _probe_fields(info) -> dict:
    return {
        "frames": int(info.frames), "fps": float(info.fps), "width": int(info.width), "height": int(info.height),
        "size": int(info.size), "mtime": float(info.mtime),
    }


def prepare_video(row: VideoRow, sampling: Sampling) -> _Prepared:
    """Draw the views of one video, decode exactly their frames and render them (runs in a decode thread).

    A video the manifest marks bad, or one that cannot be read now, comes back as a failure record instead.
    """
    import torch

    from froster.pipeline import video as vid
    from froster.pipeline.views import render_view, test_views, train_views, views_to_arrays

    if row.status not in (vid.STATUS_OK, vid.STATUS_UNPROBED):
        return _failed(row, sampling, row.status, row.reason or "marked in the manifest")
    frames, fps, width, height = row.frames, row.fps, row.width, row.height
    probe = None
    try:
        st = os.stat(row.path)
        changed = st.st_size != row.size or abs(st.st_mtime - row.mtime) > 1e-3
    except OSError:
        changed = True
    # Unprobed rows, and files changed since probing, are probed now: the views need the frame count and size,
    # and the stored manifest must describe the file the teacher saw (stage two checks size and mtime).
    if row.status == vid.STATUS_UNPROBED or changed:
        info = vid.probe_video(row.path)
        probe = _probe_fields(info)
        if info.status != vid.STATUS_OK:
            return _failed(row, sampling, info.status, info.reason, probe)
        frames, fps, width, height = info.frames, info.fps, info.width, info.height
    try:
        if sampling.mode == "train":
            views = train_views(
                sampling.seed, row.video_id, frames, fps, width, height, sampling.frames, sampling.views,
                rate=sampling.rate, target_fps=sampling.target_fps,
            )
        else:
            views = test_views(
                frames, width, height, sampling.frames, sampling.views, fps=fps, rate=sampling.rate,
                target_fps=sampling.target_fps,
            )
    except FrosterError as e:  # e.g. 0 fps in the container's header
        return _failed(row, sampling, vid.STATUS_UNDECODABLE, f"cannot sample views: {e}", probe)
    frame_index, crop, flip = views_to_arrays(views)  # [V, T], [V, 4], [V]
    # Views overlap on short videos: decode each distinct frame once.
    unique, inverse = np.unique(frame_index.reshape(-1), return_inverse=True)
    try:
        decoded = vid.read_frames(row.path, unique)  # [U, H, W, 3]
    except vid.VideoError as e:
        status = vid.STATUS_MISSING if not os.path.isfile(row.path) else vid.STATUS_UNDECODABLE
        return _failed(row, sampling, status, str(e), probe)
    if decoded.shape[1:3] != (height, width):
        reason = f"decoded frames are {decoded.shape[2]}x{decoded.shape[1]}, probing found {width}x{height}"
        return _failed(row, sampling, vid.STATUS_UNDECODABLE, reason, probe)
    clip = decoded[inverse.reshape(frame_index.shape)]  # [V, T, H, W, 3]
    pixels = torch.cat(
        [
            render_view(clip[v], crop[v], bool(flip[v]), sampling.image_size, sampling.mean, sampling.std)
            for v in range(len(views))
        ]
    )  # [V * T, 3, S, S]
    record = {"row": row.row, "status": vid.STATUS_OK, "reason": "", **(probe or {})}
    return _Prepared(row.row, record, frame_index, crop, flip, pixels)


def _prefetch(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, ahead: int) -> Iterator:
    """``fn(item)`` for each item, in order, with up to ``ahead`` calls running in ``pool`` ahead of the consumer."""
    queue: deque = deque()
    it = iter(items)
    for item in it:
        queue.append(pool.submit(fn, item))
        if len(queue) >= ahead:
            break
    while queue:
        result = queue.popleft().result()
        for item in it:
            queue.append(pool.submit(fn, item))
            break
        yield result


class _BlockBuffer:
    """One row block being filled: arrays for its rows and the per-row records."""

    def __init__(self, lo: int, hi: int, v: int, t: int, d: int):
        r = hi - lo
        self.lo, self.left = lo, r
        self.features = np.zeros((r, v, t, d), np.float16)  # [R, V, T, D]
        self.frame_index = np.full((r, v, t), -1, np.int32)  # [R, V, T]
        self.crop = np.full((r, v, 4), -1, np.int32)  # [R, V, 4]
        self.flip = np.zeros((r, v), bool)  # [R, V]
        self.done = np.zeros(r, bool)  # [R]
        self.records: list[dict] = []

    def put(self, p: _Prepared, features: Optional[np.ndarray] = None) -> None:
        i = p.row - self.lo
        self.frame_index[i], self.crop[i], self.flip[i] = p.frame_index, p.crop, p.flip
        if features is not None:
            self.features[i] = features  # [V, T, D]
            self.done[i] = True
        self.records.append(p.record)
        self.left -= 1


def extract_blocks(
    store,
    blocks: Sequence[int],
    rows: Sequence[VideoRow],
    model,
    sampling: Sampling,
    compute: Compute,
    on_videos: Callable[[int], None] = lambda n: None,
) -> dict:
    """Decode, encode and write the row blocks ``blocks`` of ``store``; ``rows`` are all the store's rows.

    Decoding runs ``compute.decode_threads`` ahead of the teacher; each forward holds the frames of
    ``compute.batch_size`` videos. A block is written (whole) as soon as its last row is in. Returns counts.
    """
    v, t, d = sampling.views, sampling.frames, store.dim
    todo = [(b, rows[r]) for b in blocks for r in range(*store.block_range(b))]
    buffers: dict[int, _BlockBuffer] = {}
    batch: list[tuple[int, _Prepared]] = []
    counts = {"videos": 0, "failed": 0}

    def flush(block: int) -> None:
        buf = buffers[block]
        if buf.left == 0:
            store.write_block(
                block, features=buf.features, frame_index=buf.frame_index, crop=buf.crop, flip=buf.flip,
                done=buf.done, rows=buf.records,
            )
            del buffers[block]

    def encode_batch() -> None:
        import torch

        pixels = torch.cat([p.pixels for _, p in batch])  # [B * V * T, 3, S, S]
        feats = encode_frames(model, pixels, compute.device, compute.precision).numpy()  # [B * V * T, D]
        feats = feats.reshape(len(batch), v, t, d)  # [B, V, T, D]
        for i, (block, p) in enumerate(batch):
            buffers[block].put(p, feats[i])
        touched = sorted({block for block, _ in batch})
        on_videos(len(batch))
        batch.clear()
        for block in touched:
            flush(block)

    ahead = max(2 * compute.batch_size, compute.decode_threads)
    with ThreadPoolExecutor(compute.decode_threads, thread_name_prefix="froster-decode") as pool:
        for block, p in _prefetch(pool, lambda item: (item[0], prepare_video(item[1], sampling)), todo, ahead):
            if block not in buffers:
                lo, hi = store.block_range(block)
                buffers[block] = _BlockBuffer(lo, hi, v, t, d)
            counts["videos"] += 1
            if p.pixels is None:
                counts["failed"] += 1
                log.debug("row %d failed: %s (%s)", p.row, p.record["status"], p.record["reason"])
                buffers[block].put(p)
                on_videos(1)
                flush(block)
            else:
                batch.append((block, p))
                if len(batch) >= compute.batch_size:
                    encode_batch()
        if batch:
            encode_batch()
    assert not buffers, f"blocks left unwritten: {sorted(buffers)}"
    return counts


def _block_task(store_path: str, block: int, rows: list[VideoRow], sampling: Sampling, compute: Compute) -> dict:
    """One dask task: row block ``block`` decoded, encoded and written by this worker (threads only inside)."""
    import zarr

    from froster.pipeline.store import FeatureStore

    zarr.config.set(_WORKER_ZARR_CONFIG)
    if compute.torch_threads:
        import torch

        torch.set_num_threads(compute.torch_threads)
    loaded = _cached_teacher(compute)
    store = FeatureStore.open(store_path, mode="r+")
    # `rows` holds only this block's rows; index them by absolute row number.
    by_row = {r.row: r for r in rows}
    lo, hi = store.block_range(block)
    full = [by_row[i] if i in by_row else None for i in range(hi)]
    return extract_blocks(store, [block], full, loaded.model, sampling, compute)


# ---- progress ----


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Speed(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed or 0.0:.1f} videos/s")

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Speed(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled,
    )


# ---- the stage ----


def run(config: ExtractConfig) -> Path:
    """Extract the teacher's features into ``config.out`` (resuming or returning at once when possible)."""
    from froster.pipeline.prompts import build_prompts
    from froster.pipeline.store import FeatureStore, differing_settings, file_sha256, jsonable

    # validate inputs
    manifest = _load_manifest(config)
    mode = _resolve_view_mode(config, manifest)
    views = config.views or (DEFAULT_TRAIN_VIEWS if mode == "train" else DEFAULT_TEST_CLIPS)
    descriptions = None
    descriptions_sha = None
    if config.descriptions is not None:
        from froster.pipeline.descriptions import read_descriptions

        by_class = read_descriptions(config.descriptions, class_names=manifest.classes)  # raw name -> strings
        descriptions = {manifest.prompt_names[i]: by_class[c] for i, c in enumerate(manifest.classes)}
        descriptions_sha = file_sha256(config.descriptions)
    settings = _settings(config, manifest, mode, views, descriptions_sha)
    request = _teacher_request(config)
    out = Path(config.out)

    existing = None
    if out.exists() and not config.overwrite:
        existing = FeatureStore.open(out, mode="r+")
        _refuse_differences(out, differing_settings({k: existing.attrs.get(k) for k in settings}, settings))
        if existing.complete and existing.attrs.get("teacher_request") == jsonable(request):
            log.info("%s is complete; nothing to do", out)
            return out

    # set up: the teacher, and the store (created with the text features)
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise FrosterError("--device cuda: torch finds no CUDA device here")
    spec = _teacher_spec(config)
    loaded = _load_teacher(spec, config.device, config.seed)
    attrs = {
        **settings,
        "config": _config_json(config),
        "teacher": loaded.provenance,
        "teacher_request": request,
        "image_size": int(loaded.image_size),
        "mean": [float(x) for x in loaded.mean],
        "std": [float(x) for x in loaded.std],
    }
    if existing is not None:
        _refuse_differences(out, differing_settings(existing.attrs, attrs))
        if existing.complete:
            log.info("%s is complete; nothing to do", out)
            return out
        store = existing
    else:
        prompts = build_prompts(list(manifest.prompt_names), descriptions)
        log.info("teacher text features of %d x %d prompts", len(prompts.texts), len(prompts.texts[0]))
        text = encode_text_features(loaded, prompts.texts, config.device, config.resolved_precision)  # [P, C, D]
        store = FeatureStore.create(
            out, manifest=manifest, prompts=prompts, text_features=text, attrs=attrs, views=views,
            frames=config.frames, block_rows=config.block_rows, overwrite=config.overwrite,
        )

    # one loop: the pending row blocks
    sampling = Sampling(
        mode=mode, frames=config.frames, views=views, rate=config.rate, target_fps=float(config.target_fps),
        seed=config.seed, image_size=int(loaded.image_size), mean=tuple(attrs["mean"]), std=tuple(attrs["std"]),
    )
    compute = Compute(
        teacher=spec, device=config.device, precision=config.resolved_precision, batch_size=config.batch_size,
        decode_threads=config.decode_threads, seed=config.seed,
    )
    rows = manifest_rows(manifest)  # this run's manifest: same rows as the store's (fingerprint), current root
    pending = store.pending_blocks()
    todo = sum(store.block_range(b)[1] - store.block_range(b)[0] for b in pending)
    log.info(
        "%s: %d of %d videos to extract (%d blocks of %d rows), V=%d %s views x T=%d frames",
        out, todo, len(rows), len(pending), config.block_rows, views, mode, config.frames,
    )
    with _progress(config.progress) as bar:
        task = bar.add_task("extract-teacher", total=todo)
        if config.workers or config.scheduler:
            del loaded  # the workers load their own teacher
            _run_dask(config, store, pending, rows, sampling, compute, lambda n: bar.advance(task, n))
        else:
            extract_blocks(store, pending, rows, loaded.model, sampling, compute, lambda n: bar.advance(task, n))

    # write outputs: merge the block records into the manifest, set complete last
    counts = store.finalize()
    log.info(
        "%s complete: %d videos, %d with features, %d failed %s",
        out, counts["videos"], counts["done"], counts["failed"],
        {k: n for k, n in counts["by_status"].items() if k != "ok"},
    )
    return out


def _config_json(config: ExtractConfig) -> dict:
    """The first run's resolved config (a record, not compared on resume: batch size or workers may change)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}


def _refuse_differences(out: Path, diffs: list) -> None:
    if diffs:
        listed = "; ".join(f"{name}: store has {old!r}, this run {new!r}" for name, old, new in diffs)
        raise FrosterError(
            f"{out} was made with different settings ({listed}); rerun with the store's settings to resume, "
            "use another --out, or --overwrite to start over"
        )


def _run_dask(config: ExtractConfig, store, pending, rows, sampling, compute, on_videos) -> None:
    """One task per pending row block on a LocalCluster of ``config.workers`` processes or at ``config.scheduler``."""
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if config.scheduler is None:
        # Processes, one thread each: a task decodes with its own threads; torch uses one thread per worker.
        cluster = LocalCluster(
            n_workers=config.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
        )
        client = Client(cluster)
    else:
        try:
            client = Client(config.scheduler, timeout="20s")
        except OSError as e:
            raise FrosterError(f"--scheduler {config.scheduler}: cannot connect ({e})") from e
    if cluster is not None:
        # The workers share this machine's cores; each task's torch gets its share.
        compute = replace(compute, torch_threads=max(1, (os.cpu_count() or 1) // config.workers))
    try:
        path = str(Path(store.path).resolve())
        futures = {}
        for b in pending:
            lo, hi = store.block_range(b)
            fut = client.submit(
                _block_task, path, b, list(rows[lo:hi]), sampling, compute, key=f"froster-block-{b}-{os.getpid()}",
                pure=False, retries=1,
            )
            futures[fut] = hi - lo
        for fut in as_completed(list(futures)):
            fut.result()  # raises the task's error here
            on_videos(futures[fut])
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
