"""Views: reproducible training views, hand-checked test views, and the one pixel function."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from froster.pipeline import views
from froster.pipeline.errors import FrosterError
from froster.pipeline.views import View, arrays_to_views, render_view, train_views, views_to_arrays

NO_NORM = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _levels(x: torch.Tensor) -> np.ndarray:
    """render_view output with mean 0 / std 1 back on the 0..255 grid."""
    return torch.round(x * 255.0).to(torch.int64).numpy()


# --- training views ---------------------------------------------------------------------------------------------


def test_train_views_same_arguments_same_views():
    a = train_views(7, "vid_a", 300, 30.0, 320, 240, T=8, V=4)
    b = train_views(7, "vid_a", 300, 30.0, 320, 240, T=8, V=4)
    assert a == b
    # View v depends on v only, not on how many views were asked for.
    assert train_views(7, "vid_a", 300, 30.0, 320, 240, T=8, V=2) == a[:2]


def test_train_views_independent_of_order():
    videos = [(f"v{i}", 100 + 37 * i, 25.0 if i % 2 else 30.0) for i in range(6)]
    forward = {vid: train_views(3, vid, n, fps, 320, 240, 8, 3) for vid, n, fps in videos}
    backward = {vid: train_views(3, vid, n, fps, 320, 240, 8, 3) for vid, n, fps in reversed(videos)}
    assert forward == backward


def test_train_views_differ_by_seed_video_and_view():
    base = train_views(0, "a", 300, 30.0, 320, 240, 8, 2)
    assert base[0] != base[1]
    assert train_views(1, "a", 300, 30.0, 320, 240, 8, 2) != base
    assert train_views(0, "b", 300, 30.0, 320, 240, 8, 2) != base


def test_train_views_golden_values():
    # Pinned: a change here changes every store ever written (the key derivation or the draw order changed).
    got = train_views(0, "a", 300, 30.0, 320, 240, 8, 2)
    assert got[0] == View([171, 189, 207, 225, 243, 261, 279, 298], [67, 2, 305, 240], True)
    assert got[1] == View([158, 176, 194, 212, 231, 249, 267, 285], [66, 1, 302, 237], False)


def test_train_views_same_in_another_process():
    # Python's hash() is salted per process; the view key must not depend on it.
    code = (
        "import json; from froster.pipeline.views import train_views, views_to_arrays;"
        "fi, crop, flip = views_to_arrays(train_views(5, 'clip/x y.mp4', 123, 29.97, 640, 360, 8, 4));"
        "print(json.dumps([fi.tolist(), crop.tolist(), flip.tolist()]))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    fi, crop, flip = views_to_arrays(train_views(5, "clip/x y.mp4", 123, 29.97, 640, 360, 8, 4))
    assert json.loads(out) == [fi.tolist(), crop.tolist(), flip.tolist()]


@pytest.mark.parametrize(
    "frames,fps,width,height",
    [
        (300, 30.0, 320, 240),  # landscape, long
        (250, 25.0, 240, 320),  # portrait
        (1000, 29.97, 640, 360),
        (40, 30.0, 320, 240),  # shorter than the 128-frame window
        (1, 30.0, 64, 48),  # a single frame
        (90, 60.0, 96, 96),  # square, high fps: a 256-frame window, shrunk
    ],
)
def test_train_views_inside_video_and_frame(frames, fps, width, height):
    T = 8
    length = views.window_length(frames, fps, T)
    short = min(width, height)
    smallest = int(np.floor(short * 224 / 256 + 0.5))
    flips = []
    for seed in range(5):
        for v in train_views(seed, f"vid{seed}", frames, fps, width, height, T, 8):
            fi, (x0, y0, x1, y1) = v.frame_index, v.crop
            assert fi.dtype == np.int32 and fi.shape == (T,) and v.crop.dtype == np.int32
            assert 0 <= fi.min() and fi.max() <= frames - 1
            assert np.all(np.diff(fi) >= 0)
            assert fi[-1] - fi[0] <= np.ceil(length - 1)  # within one window
            assert x1 - x0 == y1 - y0  # square
            assert smallest <= x1 - x0 <= short
            assert 0 <= x0 and x1 <= width and 0 <= y0 and y1 <= height
            flips.append(v.flip)
    assert 0 < sum(flips) < len(flips)  # both flips occur


def test_train_views_short_video_spans_everything():
    # 40 frames at 30 fps: the 128-frame window shrinks to the video, so every view starts at 0 and ends at 39.
    for v in train_views(0, "short", 40, 30.0, 320, 240, 8, 4):
        assert v.frame_index.tolist() == [0, 6, 11, 17, 22, 28, 33, 39]  # round(39 * k / 7)


def test_train_views_window_scales_with_fps():
    # 25 fps: the window spans 8 * 16 * 25 / 30 = 106.67 source frames, so consecutive indices are ~15.1 apart.
    fi = train_views(0, "a", 1000, 25.0, 320, 240, 8, 1)[0].frame_index
    assert np.allclose(np.diff(fi), 105.667 / 7, atol=1.0)
    fi60 = train_views(0, "a", 1000, 60.0, 320, 240, 8, 1)[0].frame_index
    assert np.allclose(np.diff(fi60), 255.0 / 7, atol=1.0)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(frames=0), "frames"),
        (dict(fps=0.0), "fps"),
        (dict(fps=float("nan")), "fps"),
        (dict(width=0), "width"),
        (dict(height=-3), "height"),
        (dict(T=0), "T"),
        (dict(V=0), "V"),
        (dict(frames=12.5), "frames"),
        (dict(video_id=""), "video_id"),
    ],
)
def test_train_views_rejects_bad_inputs(kwargs, needle):
    args = dict(seed=0, video_id="x", frames=100, fps=30.0, width=64, height=48, T=8, V=2)
    args.update(kwargs)
    with pytest.raises(FrosterError, match=needle):
        train_views(**args)


# --- test views ----------------------------------------------------------------------------------------------------


def test_test_views_by_hand_30fps_landscape():
    # 300 frames at 30 fps: window 128 frames, max_start 172, clips start at 0, 86, 172;
    # indices round(start + 127 * k / 7) = start + [0, 18, 36, 54, 73, 91, 109, 127]. Centre square of 240 in 320x240.
    got = views.test_views(300, 320, 240, 8, fps=30.0)
    offsets = [0, 18, 36, 54, 73, 91, 109, 127]
    assert got == [View([s + o for o in offsets], [40, 0, 280, 240], False) for s in (0, 86, 172)]


def test_test_views_by_hand_25fps_portrait():
    # 300 frames at 25 fps: window 8*16*25/30 = 106.67 frames, max_start 193.33; the middle clip starts at 96.67 and
    # its indices are round(96.67 + 105.67 * k / 7). Centre square of 240 in 240x320: y0 = 40.
    got = views.test_views(300, 240, 320, 8, fps=25.0)
    assert got[0].frame_index.tolist() == [0, 15, 30, 45, 60, 75, 91, 106]
    assert got[1].frame_index.tolist() == [97, 112, 127, 142, 157, 172, 187, 202]
    assert got[2].frame_index.tolist() == [193, 208, 224, 239, 254, 269, 284, 299]
    assert all(v.crop.tolist() == [0, 40, 240, 280] and not v.flip for v in got)


def test_test_views_short_video_and_single_clip():
    # Shorter than the window: every clip covers the whole video.
    short = views.test_views(50, 64, 48, 8, fps=25.0)
    assert all(v.frame_index.tolist() == [0, 7, 14, 21, 28, 35, 42, 49] for v in short)
    assert short[0].crop.tolist() == [8, 0, 56, 48]
    # One clip is centred: max_start = 300 - 128 = 172, start 86.
    (one,) = views.test_views(300, 320, 240, 8, clips=1, fps=30.0)
    assert one.frame_index[0] == 86 and one.frame_index[-1] == 86 + 127


def test_test_views_need_fps():
    with pytest.raises(TypeError):
        views.test_views(300, 320, 240, 8)  # fps is keyword-only and required
    with pytest.raises(FrosterError, match="clips"):
        views.test_views(300, 320, 240, 8, clips=0, fps=30.0)


# --- arrays ---------------------------------------------------------------------------------------------------------


def test_views_to_arrays_round_trip():
    vs = train_views(1, "a", 300, 30.0, 320, 240, 8, 4)
    fi, crop, flip = views_to_arrays(vs)
    assert fi.shape == (4, 8) and fi.dtype == np.int32
    assert crop.shape == (4, 4) and crop.dtype == np.int32
    assert flip.shape == (4,) and flip.dtype == bool
    assert arrays_to_views(fi, crop, flip) == vs


def test_views_to_arrays_rejects_mixed_lengths():
    with pytest.raises(FrosterError, match="same number of frames"):
        views_to_arrays([View([0, 1], [0, 0, 2, 2], False), View([0], [0, 0, 2, 2], False)])
    with pytest.raises(FrosterError, match="crop"):
        arrays_to_views(np.zeros((2, 8)), np.zeros((2, 3)), np.zeros(2, bool))


def test_view_is_frozen():
    v = View([1, 2], [0, 0, 4, 4], True)
    with pytest.raises(ValueError):
        v.frame_index[0] = 5
    with pytest.raises(AttributeError):
        v.flip = False


# --- render_view -----------------------------------------------------------------------------------------------------


def _random_frames(T=2, H=6, W=7, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(T, H, W, 3), dtype=np.uint8)


def test_render_view_box_of_its_own_size_is_the_pixels_normalised():
    frames = _random_frames()
    mean, std = (0.5, 0.25, 0.1), (0.25, 0.5, 2.0)
    out = render_view(frames, (1, 0, 7, 6), False, 6, mean, std)  # a 6x6 box rendered at 6x6: no resampling
    assert out.dtype == torch.float32 and out.shape == (2, 3, 6, 6)
    box = torch.from_numpy(frames[:, 0:6, 1:7, :]).permute(0, 3, 1, 2).double() / 255.0  # [T, 3, 6, 6]
    expected = (box - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)


def test_render_view_flip_reverses_width():
    frames = _random_frames(H=20, W=30)
    plain = render_view(frames, (3, 2, 19, 18), False, 8, *NO_NORM)
    flipped = render_view(frames, (3, 2, 19, 18), True, 8, *NO_NORM)
    assert torch.equal(flipped, plain.flip(-1))


def test_render_view_downscaled_ramp_by_hand():
    # A horizontal ramp 10*x (x = 0..15) shrunk 2x: output pixel j is centred on source x = 2j + 0.5, and bicubic
    # reproduces linear functions, so its value is 20j + 5 where the kernel (radius 4 source pixels) fits inside.
    row = (10 * np.arange(16)).astype(np.uint8)
    frames = np.broadcast_to(row[None, None, :, None], (1, 16, 16, 3)).copy()
    got = _levels(render_view(frames, (0, 0, 16, 16), False, 8, *NO_NORM))[0]  # [3, 8, 8]
    expected = 20 * np.arange(8) + 5
    assert np.array_equal(got[:, :, 2:6], np.broadcast_to(expected[2:6], (3, 8, 4)))
    assert np.abs(got - expected).max() <= 1
    # A constant image stays constant at any size.
    const = np.full((1, 10, 12, 3), 77, np.uint8)
    assert set(_levels(render_view(const, (1, 2, 9, 10), True, 5, *NO_NORM)).ravel()) == {77}


def test_render_view_tensor_and_numpy_agree():
    frames = _random_frames(H=40, W=50)
    a = render_view(frames, (5, 5, 37, 37), True, 16, *NO_NORM)
    b = render_view(torch.from_numpy(frames), np.array([5, 5, 37, 37], np.int32), True, 16, *NO_NORM)
    assert torch.equal(a, b)


def test_render_view_close_to_pil_bicubic():
    """CLIP's own preprocessing resizes with PIL bicubic. Measured with torchvision 0.29.1 / Pillow 13 on this smooth
    320x240 image: box 240 -> 224 max 2 levels (10 of 150528 values; mean 0.003), 200 -> 32 max 1, 240 -> 64 max 1,
    80 -> 224 (upscale) max 2 (mean 0.001). The native uint8 kernel, like PIL, rounds between its two passes."""
    from PIL import Image

    yy, xx = np.mgrid[0:240, 0:320].astype(np.float64)
    img = np.stack(
        [
            127.5 + 120 * np.sin(xx / 23.0) * np.cos(yy / 31.0),
            127.5 + 120 * np.cos((xx + yy) / 41.0),
            127.5 + 100 * np.sin(xx / 17.0 + yy / 29.0),
        ],
        -1,
    )
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)  # [H, W, 3]
    for (x0, y0, x1, y1), size in [((40, 0, 280, 240), 224), ((60, 20, 260, 220), 32), ((0, 0, 240, 240), 64),
                                   ((10, 10, 90, 90), 224)]:
        ours = _levels(render_view(img[None], (x0, y0, x1, y1), False, size, *NO_NORM))[0].transpose(1, 2, 0)
        pil = np.asarray(Image.fromarray(img[y0:y1, x0:x1]).resize((size, size), Image.BICUBIC)).astype(np.int64)
        diff = np.abs(ours - pil)
        assert diff.max() <= 2, (size, diff.max())
        assert diff.mean() < 0.01, (size, diff.mean())


@pytest.mark.parametrize(
    "frames,crop,needle",
    [
        (np.zeros((1, 8, 8, 3), np.float32), (0, 0, 8, 8), "uint8"),
        (np.zeros((8, 8, 3), np.uint8), (0, 0, 8, 8), r"\[T, H, W, 3\]"),
        (np.zeros((1, 8, 8, 3), np.uint8), (0, 0, 9, 8), "inside"),
        (np.zeros((1, 8, 8, 3), np.uint8), (4, 0, 4, 8), "non-empty"),
        (np.zeros((1, 8, 8, 3), np.uint8), (0, 0, 8), "x0, y0, x1, y1"),
    ],
)
def test_render_view_rejects_bad_inputs(frames, crop, needle):
    with pytest.raises(FrosterError, match=needle):
        render_view(frames, crop, False, 4, *NO_NORM)


def test_render_view_rejects_bad_stats():
    frames = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(FrosterError, match="std must be > 0"):
        render_view(frames, (0, 0, 8, 8), False, 4, (0, 0, 0), (1, 0, 1))
    with pytest.raises(FrosterError, match="mean must have 3"):
        render_view(frames, (0, 0, 8, 8), False, 4, (0, 0), (1, 1, 1))


def test_resize_impl_names_versions():
    import torchvision

    assert "BICUBIC" in views.RESIZE_IMPL and "antialias=True" in views.RESIZE_IMPL
    assert torchvision.__version__ in views.RESIZE_IMPL
