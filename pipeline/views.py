"""Views: which frames and which box of a video the teacher (and later the student) sees, and the one pixel function.

A view is three small things that are stored, so any stage rebuilds exactly the pixels the teacher saw:
``frame_index [T] int32`` (0-based into the decoded frames), ``crop [4] int32`` (x0, y0, x1, y1 in source pixels,
x1/y1 exclusive) and ``flip``. ``render_view`` turns decoded frames and a view into the model's input; every stage calls
it, so there is exactly one resize implementation (named by ``RESIZE_IMPL``, recorded in the store).

Sampling follows the authors' release (SlowFast dense sampling, ``NUM_FRAMES 8``, ``SAMPLING_RATE 16``,
``TARGET_FPS 30``): a window of ``T * rate`` frames at 30 fps, i.e. ``T * rate * fps / target_fps`` source frames,
shrunk to the video when it is shorter, with T evenly spaced indices in it.

- Training views: random window start, a square box of side ``short_side * 224 / s`` with ``s ~ U[224, 256]`` at a
  random position (the release resizes the short side to s and takes a random 224 crop; the same box in source
  pixels), random horizontal flip. The randomness is a counter-based RNG (Philox) keyed by a SHA-256 of
  (seed, video_id, view index), so a view never depends on the order or the process that computes it.
- Test views: ``clips`` windows evenly spread over the video, the first at the start and the last at the end
  (start of clip i = max_start * i / (clips - 1); the release's pyav path uses max_start * i / clips, which never
  reaches the end, and a single clip is centred), the centred square of side short_side, no flip.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torchvision
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from froster.pipeline.errors import FrosterError

logger = logging.getLogger(__name__)

# Recorded in the store's attributes: a store is only comparable with pixels rendered by the same implementation.
# On CPU torchvision resizes uint8 bicubic natively with fixed-point weights in two passes with a uint8 intermediate,
# as PIL does; measured against PIL on smooth images: 99.7% of values equal, the rest 1 level off, at most 2 (a handful
# of pixels; tests/test_views.py). On CUDA torchvision would take a float path that differs by a level in ~20% of the
# pixels, so render_view always resizes on the CPU.
RESIZE_IMPL = (
    "torchvision.transforms.v2.functional.resize(uint8 on CPU, BICUBIC, antialias=True); "
    f"torchvision=={torchvision.__version__} torch=={torch.__version__}"
)

# The release's short-side jitter range for training ([224, 256]) and its crop size.
JITTER_MIN = 224.0
JITTER_MAX = 256.0
CROP_REF = 224.0

# Uniforms drawn per training view, in this order: window start, jitter scale s, box x, box y, flip.
_DRAWS_PER_VIEW = 5


@dataclass(frozen=True, eq=False)
class View:
    """One view of a video: ``frame_index [T] int32``, ``crop [4] int32`` (x0, y0, x1, y1, exclusive), ``flip``."""

    frame_index: np.ndarray  # [T] int32
    crop: np.ndarray  # [4] int32
    flip: bool

    def __post_init__(self):
        fi = np.array(self.frame_index, dtype=np.int32).reshape(-1)  # [T]
        crop = np.array(self.crop, dtype=np.int32).reshape(-1)  # [4]
        if crop.shape != (4,):
            raise ValueError(f"crop must have 4 values (x0, y0, x1, y1), got {crop.shape[0]}")
        # Read-only so that a frozen View really cannot change under a caller that keeps a reference.
        fi.setflags(write=False)
        crop.setflags(write=False)
        object.__setattr__(self, "frame_index", fi)
        object.__setattr__(self, "crop", crop)
        object.__setattr__(self, "flip", bool(self.flip))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, View):
            return NotImplemented
        return (
            np.array_equal(self.frame_index, other.frame_index)
            and np.array_equal(self.crop, other.crop)
            and self.flip == other.flip
        )

    __hash__ = None  # arrays inside: equal views are not meant as dict keys

    def __repr__(self) -> str:
        return f"View(frame_index={self.frame_index.tolist()}, crop={self.crop.tolist()}, flip={self.flip})"


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise FrosterError(f"views: {name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise FrosterError(f"views: {name} must be >= {minimum}, got {value}")
    return int(value)


def _check_positive_float(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise FrosterError(f"views: {name} must be a number > 0, got {value!r}") from e
    if not math.isfinite(v) or v <= 0:
        raise FrosterError(f"views: {name} must be a finite number > 0, got {value!r}")
    return v


def _round_half_up(x: np.ndarray | float) -> np.ndarray:
    # np.rint rounds half to even; half-up is what one computes by hand, and ties are rare anyway.
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5)


def window_length(frames: int, fps: float, T: int, rate: int = 16, target_fps: float = 30.0) -> float:
    """Source frames spanned by a dense window: ``T * rate`` frames at ``target_fps``, shrunk to the video."""
    length = T * rate * fps / target_fps
    # At least one frame, at most the whole video (short videos get a window over everything they have).
    return float(min(max(length, 1.0), frames))


def _window_indices(start: float, length: float, frames: int, T: int) -> np.ndarray:
    # SlowFast: end = start + clip_size - 1, T points of linspace(start, end), clamped into the video.
    idx = _round_half_up(np.linspace(start, start + length - 1.0, T))  # [T]
    return np.clip(idx, 0, frames - 1).astype(np.int32)


def view_key(seed: int, video_id: str, view: int) -> int:
    """The 128-bit Philox key of one training view: a SHA-256 of (seed, video_id, view), stable across processes."""
    # Python's hash() is salted per process; hashlib is not. The prefix keeps these keys apart from any other use.
    payload = f"froster.views.train|{int(seed)}|{video_id}|{int(view)}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(payload).digest()[:16], "little")


def train_views(
    seed: int,
    video_id: str,
    frames: int,
    fps: float,
    width: int,
    height: int,
    T: int,
    V: int,
    rate: int = 16,
    target_fps: float = 30.0,
) -> list[View]:
    """V random training views of one video (dense window, jittered square box, random flip), reproducible.

    View v depends only on (seed, video_id, v) and the video's size, never on which other views or videos were drawn
    before it: the same command gives the same views in any order, process or worker.
    """
    seed = _check_int("seed", seed, minimum=-(2**63))
    if not isinstance(video_id, str) or not video_id:
        raise FrosterError(f"views: video_id must be a non-empty string, got {video_id!r}")
    frames = _check_int(f"frames of video {video_id!r}", frames, 1)
    fps = _check_positive_float(f"fps of video {video_id!r}", fps)
    width = _check_int(f"width of video {video_id!r}", width, 1)
    height = _check_int(f"height of video {video_id!r}", height, 1)
    T = _check_int("T (frames per view)", T, 1)
    V = _check_int("V (views per video)", V, 1)
    rate = _check_int("rate (sampling rate)", rate, 1)
    target_fps = _check_positive_float("target_fps", target_fps)

    length = window_length(frames, fps, T, rate, target_fps)
    max_start = frames - length
    short = min(width, height)
    views = []
    for v in range(V):
        rng = np.random.Generator(np.random.Philox(key=view_key(seed, video_id, v)))
        # Plain uniforms mapped by hand: Generator.random's stream is fixed by the bit generator, whereas
        # integers()/uniform() algorithms may change between numpy versions.
        u = rng.random(_DRAWS_PER_VIEW)  # [5] in [0, 1)
        start = u[0] * max_start
        frame_index = _window_indices(start, length, frames, T)  # [T]
        s = JITTER_MIN + (JITTER_MAX - JITTER_MIN) * u[1]
        side = int(min(max(_round_half_up(short * CROP_REF / s), 1), short))
        x0 = min(int(u[2] * (width - side + 1)), width - side)
        y0 = min(int(u[3] * (height - side + 1)), height - side)
        flip = bool(u[4] < 0.5)
        views.append(View(frame_index, np.array([x0, y0, x0 + side, y0 + side]), flip))
    return views


def test_views(
    frames: int,
    width: int,
    height: int,
    T: int,
    clips: int = 3,
    *,
    fps: float,
    rate: int = 16,
    target_fps: float = 30.0,
) -> list[View]:
    """``clips`` evaluation views: dense windows spread evenly from the start to the end, centred short-side square.

    ``fps`` is keyword-only and required: the window spans ``T * rate * fps / target_fps`` source frames, the same
    window as training, so a 25 fps video's test clip covers the same seconds as a 30 fps one's.
    """
    frames = _check_int("frames", frames, 1)
    width = _check_int("width", width, 1)
    height = _check_int("height", height, 1)
    T = _check_int("T (frames per view)", T, 1)
    clips = _check_int("clips", clips, 1)
    fps = _check_positive_float("fps", fps)
    rate = _check_int("rate (sampling rate)", rate, 1)
    target_fps = _check_positive_float("target_fps", target_fps)

    length = window_length(frames, fps, T, rate, target_fps)
    max_start = frames - length
    side = min(width, height)
    x0 = (width - side) // 2
    y0 = (height - side) // 2
    crop = np.array([x0, y0, x0 + side, y0 + side])
    views = []
    for i in range(clips):
        start = max_start * i / (clips - 1) if clips > 1 else max_start / 2.0
        views.append(View(_window_indices(start, length, frames, T), crop, False))
    return views


def views_to_arrays(views: Sequence[View]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack views into the store's arrays: ``frame_index [V, T] int32``, ``crop [V, 4] int32``, ``flip [V] bool``."""
    if len(views) == 0:
        raise FrosterError("views: views_to_arrays needs at least one view, got none")
    lengths = {len(v.frame_index) for v in views}
    if len(lengths) != 1:
        raise FrosterError(f"views: every view must have the same number of frames T, found {sorted(lengths)}")
    frame_index = np.stack([v.frame_index for v in views]).astype(np.int32)  # [V, T]
    crop = np.stack([v.crop for v in views]).astype(np.int32)  # [V, 4]
    flip = np.array([v.flip for v in views], dtype=bool)  # [V]
    return frame_index, crop, flip


def arrays_to_views(frame_index: np.ndarray, crop: np.ndarray, flip: np.ndarray) -> list[View]:
    """The inverse of ``views_to_arrays``: ``frame_index [V, T]``, ``crop [V, 4]``, ``flip [V]`` -> V views."""
    frame_index = np.asarray(frame_index)
    crop = np.asarray(crop)
    flip = np.asarray(flip)
    if frame_index.ndim != 2 or crop.shape != (frame_index.shape[0], 4) or flip.shape != (frame_index.shape[0],):
        raise FrosterError(
            "views: expected frame_index [V, T], crop [V, 4], flip [V], "
            f"got {frame_index.shape}, {crop.shape}, {flip.shape}"
        )
    return [View(frame_index[v], crop[v], bool(flip[v])) for v in range(frame_index.shape[0])]


def render_view(
    frames: np.ndarray | torch.Tensor,
    crop: Sequence[int] | np.ndarray,
    flip: bool,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """The model input of one view: ``frames uint8 [T, H, W, 3]`` -> ``float32 [T, 3, size, size]``.

    Cut the box, resize the uint8 box to (size, size) with torchvision's bicubic antialiased resize on the CPU (within
    two levels of CLIP's own PIL preprocessing, nearly always equal; see RESIZE_IMPL), flip horizontally if set, scale
    to [0, 1] and normalise with the model's mean and std. ``frames`` are the view's frames already read
    (``read_frames`` of the view's ``frame_index``), so this function never touches a file.
    """
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            raise FrosterError(f"render_view: frames must be uint8, got {frames.dtype}")
        # torch.from_numpy warns on read-only arrays (e.g. np.load(mmap_mode="r")); a copy is only made then.
        x = torch.from_numpy(frames if frames.flags.writeable else frames.copy())
    elif isinstance(frames, torch.Tensor):
        if frames.dtype != torch.uint8:
            raise FrosterError(f"render_view: frames must be uint8, got {frames.dtype}")
        x = frames
    else:
        raise FrosterError(f"render_view: frames must be a numpy array or a torch tensor, got {type(frames).__name__}")
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] == 0:
        raise FrosterError(f"render_view: frames must be [T, H, W, 3] with T >= 1, got {tuple(x.shape)}")
    _, H, W, _ = x.shape
    box = [int(c) for c in np.asarray(crop).reshape(-1)]
    if len(box) != 4:
        raise FrosterError(f"render_view: crop must be (x0, y0, x1, y1), got {len(box)} values")
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
        raise FrosterError(f"render_view: crop {box} is not a non-empty box inside the {W}x{H} frames")
    size = _check_int("size", size, 1)
    mean_t = _channel_stat("mean", mean, x.device)  # [3, 1, 1]
    std_t = _channel_stat("std", std, x.device)  # [3, 1, 1]
    if bool((std_t <= 0).any()):
        raise FrosterError(f"render_view: std must be > 0, got {list(std)}")

    device = x.device
    # One implementation on every device (see RESIZE_IMPL): the box goes to the CPU for the resize.
    box_px = x[:, y0:y1, x0:x1, :].to("cpu").permute(0, 3, 1, 2).contiguous()  # [T, 3, h, w] uint8
    out = TF.resize(box_px, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)  # [T, 3, S, S] uint8
    if flip:
        out = out.flip(-1)
    out = out.to(device=device, dtype=torch.float32).div_(255.0)
    return out.sub_(mean_t).div_(std_t)  # [T, 3, S, S]


def _channel_stat(name: str, values: Sequence[float], device: torch.device) -> torch.Tensor:
    vals = [float(v) for v in values]
    if len(vals) != 3:
        raise FrosterError(f"render_view: {name} must have 3 values (R, G, B), got {len(vals)}")
    return torch.tensor(vals, dtype=torch.float32, device=device).view(3, 1, 1)


# pytest collects any callable named test_* that a test module imports; this one is library code, not a test.
test_views.__test__ = False
