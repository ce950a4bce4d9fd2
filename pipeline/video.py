"""Decoding. This module owns every read of a video file (decord, exact batch reads).

``read_frames`` uses decord's ``get_batch``, which decodes exactly the frames asked for; ``seek()`` + ``next()`` is not
frame-exact on many files, so it is never used. Frames come back as uint8 ``[T, H, W, 3]`` RGB.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from froster.pipeline.errors import FrosterError

# Probe statuses recorded in manifests and stores. Nothing is dropped: a bad video keeps its row with one of these.
STATUS_OK = "ok"
STATUS_MISSING = "missing"
STATUS_EMPTY = "empty"  # a file of zero bytes, or a container without any decodable frame
STATUS_UNDECODABLE = "undecodable"
STATUS_UNPROBED = "unprobed"

# decord is not safe to initialise concurrently from several threads on some builds.
_DECORD_LOCK = threading.Lock()


# decord prefixes its messages with "[HH:MM:SS] /its/source/file.cc:LINE: "; users need only the message.
_DECORD_PREFIX = re.compile(r"\[\d{2}:\d{2}:\d{2}\]\s+\S+:\d+:\s*")


def _clean_reason(error: Exception) -> str:
    lines = [_DECORD_PREFIX.sub("", line).strip() for line in str(error).strip().splitlines()]
    lines = [line for line in lines if line]
    return (lines[0] if lines else type(error).__name__)[:300]


class VideoError(FrosterError):
    """A video cannot be read; the message names the file and the reason."""


@dataclass(frozen=True)
class VideoInfo:
    """What probing a file found. ``status`` is one of the STATUS_* values; ``reason`` says why when it is not ok."""

    frames: int
    fps: float
    width: int
    height: int
    size: int  # bytes on disk, -1 when missing
    mtime: float  # seconds since the epoch, -1 when missing
    status: str
    reason: str = ""


def decord_version() -> str:
    import decord

    return str(getattr(decord, "__version__", "unknown"))


def _open(path: Path):
    import decord

    with _DECORD_LOCK:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Open ``path`` with decord, count its frames and decode its first and last frames.

    Never raises for a bad file: the status and reason say what is wrong (missing, empty, undecodable).
    """
    path = Path(path)
    if not path.is_file():
        return VideoInfo(0, 0.0, 0, 0, -1, -1.0, STATUS_MISSING, f"no file at {path}")
    st = path.stat()
    if st.st_size == 0:
        return VideoInfo(0, 0.0, 0, 0, 0, st.st_mtime, STATUS_EMPTY, "file has 0 bytes")
    try:
        reader = _open(path)
        n = len(reader)
        if n == 0:
            return VideoInfo(0, 0.0, 0, 0, st.st_size, st.st_mtime, STATUS_EMPTY, "container holds no video frames")
        fps = float(reader.get_avg_fps())
        first = reader.get_batch([0, n - 1]).asnumpy()  # [2, H, W, 3]
    except Exception as e:  # decord raises DECORDError / RuntimeError for corrupt containers
        return VideoInfo(0, 0.0, 0, 0, st.st_size, st.st_mtime, STATUS_UNDECODABLE, _clean_reason(e))
    h, w = int(first.shape[1]), int(first.shape[2])
    return VideoInfo(n, fps, w, h, st.st_size, st.st_mtime, STATUS_OK)


def read_frames(path: str | os.PathLike, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Decode exactly the frames ``indices`` (0-based, any order, repeats allowed) of ``path``.

    Returns uint8 ``[T, H, W, 3]`` RGB. Raises VideoError naming the file when it cannot be decoded or an index is
    outside ``[0, frames)``.
    """
    path = Path(path)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)  # [T]
    try:
        reader = _open(path)
    except Exception as e:
        raise VideoError(f"{path}: cannot open video ({_clean_reason(e)})") from e
    n = len(reader)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise VideoError(f"{path}: frame index {int(idx.max() if idx.max() >= n else idx.min())} outside [0, {n})")
    try:
        frames = reader.get_batch(idx.tolist()).asnumpy()  # [T, H, W, 3]
    except Exception as e:
        raise VideoError(f"{path}: decoding frames failed ({_clean_reason(e)})") from e
    return np.ascontiguousarray(frames, dtype=np.uint8)
