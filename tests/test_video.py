"""Video reading (decord) against frame-numbered content written with PyAV, and probe statuses of bad files.

Pixels decoded by PyAV and decord are never compared: the frame number written into each frame is read back instead.
"""

from __future__ import annotations

import numpy as np
import pytest

from froster.pipeline.errors import FrosterError
from froster.pipeline.video import (
    STATUS_EMPTY,
    STATUS_MISSING,
    STATUS_OK,
    STATUS_UNDECODABLE,
    VideoError,
    probe_video,
    read_frames,
)
from froster.pipeline.videowriter import decode_frame_number, frame_numbered, write_video

av = pytest.importorskip("av")

NUM_FRAMES = 20
EXTENSIONS = {"h264": "mp4", "mpeg4": "avi"}
SIZES = {"landscape": (64, 96), "portrait": (96, 64)}  # (H, W)
FPS = [25.0, 30000 / 1001, 30.0]
CASES = [(codec, fps, orient) for codec in EXTENSIONS for fps in FPS for orient in SIZES]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """One frame-numbered video per (codec, fps, orientation)."""
    d = tmp_path_factory.mktemp("videos")
    out = {}
    for codec, fps, orient in CASES:
        h, w = SIZES[orient]
        path = d / f"{codec}_{fps:.3f}_{orient}.{EXTENSIONS[codec]}"
        out[codec, fps, orient] = write_video(path, frame_numbered(NUM_FRAMES, h, w, seed=3), fps=fps, codec=codec)
    return out


@pytest.mark.parametrize("codec, fps, orient", CASES, ids=[f"{c}-{f:.2f}-{o}" for c, f, o in CASES])
def test_read_frames_exact(videos, codec, fps, orient):
    path = videos[codec, fps, orient]
    indices = [0, 19, 7, 7, 3, 12, 1, 18]  # any order, repeats, both ends
    frames = read_frames(path, indices)
    h, w = SIZES[orient]
    assert frames.dtype == np.uint8 and frames.shape == (len(indices), h, w, 3)
    assert [decode_frame_number(f) for f in frames] == indices
    every = read_frames(path, np.arange(NUM_FRAMES))
    assert [decode_frame_number(f) for f in every] == list(range(NUM_FRAMES))


@pytest.mark.parametrize("codec, fps, orient", CASES, ids=[f"{c}-{f:.2f}-{o}" for c, f, o in CASES])
def test_probe_ok(videos, codec, fps, orient):
    path = videos[codec, fps, orient]
    info = probe_video(path)
    h, w = SIZES[orient]
    assert info.status == STATUS_OK and info.reason == ""
    assert (info.frames, info.width, info.height) == (NUM_FRAMES, w, h)
    assert info.fps == pytest.approx(fps, rel=1e-3)
    assert info.size == path.stat().st_size and info.mtime == path.stat().st_mtime


def test_read_frames_errors_name_the_file(videos, tmp_path):
    path = videos["h264", 25.0, "landscape"]
    with pytest.raises(VideoError, match=rf"{path.name}: frame index 20 outside \[0, 20\)"):
        read_frames(path, [0, 20])
    with pytest.raises(VideoError, match=r"frame index -1 outside"):
        read_frames(path, [-1])
    missing = tmp_path / "missing.mp4"
    with pytest.raises(VideoError, match="missing.mp4: cannot open video"):
        read_frames(missing, [0])
    assert issubclass(VideoError, FrosterError)


def test_probe_missing_and_zero_bytes(tmp_path):
    info = probe_video(tmp_path / "nope.mp4")
    assert info.status == STATUS_MISSING and info.size == -1 and info.mtime == -1 and "nope.mp4" in info.reason
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    info = probe_video(empty)
    assert info.status == STATUS_EMPTY and info.size == 0 and info.reason == "file has 0 bytes"


def test_probe_corrupt_files(videos, tmp_path):
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).bytes(5000))
    data = videos["h264", 30.0, "landscape"].read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    for path in (noise, truncated):
        info = probe_video(path)
        assert info.status == STATUS_UNDECODABLE, path
        assert info.frames == 0 and info.size == path.stat().st_size and info.reason


@pytest.mark.parametrize("ext, encoder", [("mp4", "libx264"), ("avi", "mpeg4")])
def test_probe_container_without_frames(tmp_path, ext, encoder):
    """A valid container with a video stream but no frame. decord fails to open these (it finds no usable stream),
    so probing reports them undecodable rather than empty; either way the row is kept as not ok, with a reason."""
    path = tmp_path / f"zero.{ext}"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=30)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
        for packet in stream.encode():  # flush: nothing was encoded
            container.mux(packet)
    assert path.stat().st_size > 0
    info = probe_video(path)
    assert info.status in (STATUS_EMPTY, STATUS_UNDECODABLE)
    assert info.frames == 0 and info.reason
