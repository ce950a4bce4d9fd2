"""Writes real video files with PyAV (h264 mp4 or mpeg4 avi) for the tests, the benchmarks and the toy benchmark.

PyAV is an optional dependency (the ``test`` and ``demo`` extras). Never compare pixels PyAV decodes with decord's:
they differ by a few levels. To check frame-exact reading, write ``frame_numbered`` content and read the number back
with ``decode_frame_number``.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from froster.pipeline.errors import FrosterError

# codec name -> (PyAV encoder, container format, encoder options)
CODECS = {
    "h264": ("libx264", "mp4", {"crf": "12", "preset": "veryfast", "g": "8"}),
    "mpeg4": ("mpeg4", "avi", {}),
}

_BITS = 10  # frame numbers up to 1023


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 30.0, codec: str = "h264") -> Path:
    """Encode uint8 ``frames [T, H, W, 3]`` (H and W even) to ``path`` at ``fps`` with ``codec`` ("h264" or "mpeg4").

    Deterministic: the same frames and settings give the same decoded content.
    """
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise FrosterError("writing videos needs PyAV: pip install 'froster[demo]' (or av)") from e
    if codec not in CODECS:
        raise FrosterError(f"unknown codec {codec!r}; expected one of {sorted(CODECS)}")
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise FrosterError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise FrosterError(f"frame size must be even for yuv420p, got {w}x{h}")
    encoder, container_format, options = CODECS[codec]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(encoder, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "mpeg4":
            stream.bit_rate = 8_000_000
        stream.options = dict(options)
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_numbered(num_frames: int, height: int = 64, width: int = 96, seed: int = 0) -> np.ndarray:
    """Frames whose number is written as ``_BITS`` black/white vertical bands in the top half (robust to lossy
    codecs), over a smooth seeded colour gradient in the bottom half. Returns uint8 ``[T, H, W, 3]``."""
    if num_frames > 2**_BITS:
        raise ValueError(f"at most {2**_BITS} numbered frames")
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 215, size=3)
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((num_frames, height, width, 3), np.uint8)
    band = width // _BITS
    for t in range(num_frames):
        img = np.empty((height, width, 3), np.float64)
        for c in range(3):
            img[..., c] = base[c] + 30 * np.sin((xx + 3 * t) / 17.0 + c) * np.cos(yy / 13.0)
        top = img[: height // 2]
        for b in range(_BITS):
            top[:, b * band : (b + 1) * band] = 255.0 if (t >> b) & 1 else 0.0
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def decode_frame_number(frame: np.ndarray) -> int:
    """Read back the number ``frame_numbered`` wrote into uint8 ``frame [H, W, 3]``."""
    h, w, _ = frame.shape
    band = w // _BITS
    top = frame[h // 8 : 3 * h // 8].astype(np.float64).mean(axis=(0, 2))  # [W]
    value = 0
    for b in range(_BITS):
        m = top[b * band + band // 4 : (b + 1) * band - band // 4].mean()
        value |= int(m > 127.5) << b
    return value
