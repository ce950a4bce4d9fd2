"""The built-in synthetic world (short clips of one object doing one motion) and its toy CLIP teacher.

The world stands in for Kinetics when nothing can be downloaded. A clip is a 32x32 RGB video of 8 frames: one object
(colour x shape x size) on a noisy background doing a motion. Motions come in time-reversed pairs (moving left / right,
up / down, growing / shrinking, appearing / disappearing): the second of a pair is the first played backwards, so the
per-pixel time average of the two clips is identical and a model that averages frames cannot tell them apart.

Default world "A" (what the prototype in ../shared/reference/toy-world-notes.md found informative):
- base: 12 objects ({red, green, blue, yellow, purple, orange} x {circle, square}), 2 motion pairs each: 48 classes;
- novel "seen objects": the same 12 objects with a third motion pair: 24 classes;
- novel "unseen objects": {red, green, blue, yellow} x {triangle, cross, diamond}, one pair each: 24 classes. Their
  shapes never appear in a base video; their colours are base colours, so colour alone does not give them away.
World "B" (the cross-dataset target) has other objects, larger sizes and a textured, lighter background.

Training lists hold the base classes only (``train_novel`` adds the novel ones), ``train_clips`` per class, so that a
base-to-novel protocol can draw ``shots`` <= train_clips of them per seed; the test list holds every class.

The toy teacher is a tiny open_clip CLIP (``data/toy_clip.json``: ViT 32 px, patch 8, width 64, 3 layers; text width
64, 3 layers, context 24; embed 64; open_clip's default tokenizer) pretrained contrastively on single frames drawn by
the same renderer with captions about appearance and position only ("a small red circle at the top left"). It knows
8 colours x 6 shapes, two sizes and a 3x3 grid of positions; it never sees a motion word. The recipe (TeacherRecipe):
fresh frames every step; a multi-positive loss (every caption a frame fits is a target, so partial captions such as
"a red circle" are right for many frames); 30% of captions wrapped in the class-prompt templates so that templated
class prompts stay meaningful; frames drawn in small runs that share attributes (hard negatives); objects first near
the patch corners, then anywhere (a ViT learns shapes far sooner when they sit on the patch grid). It is saved as an
ordinary open_clip ``local-dir:`` folder and reused when the fingerprint (recipe, seed, image size, renderer) matches.

Nothing here prints: progress goes to an optional callback and to ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from froster.pipeline.errors import ConfigError, FrosterError
from froster.pipeline.prompts import PREFIXES, SUFFIXES, TEMPLATES

logger = logging.getLogger(__name__)

# Bump when a change to the drawing code changes pixels: world and teacher fingerprints include it.
RENDERER_VERSION = 1

# The teacher's vocabulary. RGB in [0, 1]; bright, saturated colours that stand out on the dark-to-mid backgrounds.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.10, 0.72, 0.18),
    "blue": (0.15, 0.35, 1.00),
    "yellow": (0.95, 0.88, 0.10),
    "purple": (0.62, 0.20, 0.85),
    "orange": (1.00, 0.52, 0.05),
    "cyan": (0.10, 0.85, 0.92),
    "pink": (1.00, 0.50, 0.78),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond", "ring")
SIZES: tuple[str, ...] = ("small", "large")
X_POSITIONS: tuple[str, ...] = ("left", "center", "right")
Y_POSITIONS: tuple[str, ...] = ("top", "middle", "bottom")
# Time-reversed pairs: the second motion of a pair is the first played backwards.
MOTION_PAIRS: tuple[tuple[str, str], ...] = (
    ("moving left", "moving right"),
    ("moving up", "moving down"),
    ("growing", "shrinking"),
    ("appearing", "disappearing"),
)
MOTIONS: tuple[str, ...] = tuple(m for pair in MOTION_PAIRS for m in pair)
BACKGROUNDS: tuple[str, ...] = ("plain", "textured")

ROLE_BASE = "base"
ROLE_NOVEL_SEEN = "novel_seen"  # a base object with a motion pair it never does in a base class
ROLE_NOVEL_UNSEEN = "novel_unseen"  # an object whose shape never appears in a base class

_MOTION_INDEX = {m: (p, k) for p, pair in enumerate(MOTION_PAIRS) for k, m in enumerate(pair)}

# Caption wrappers are the release's 28 class-prompt templates (pipeline/prompts.py), so the toy teacher learns that
# these words carry no meaning and the templated class prompts of stage one stay readable.
_EMPTY_CAPTION = "an empty background"


# ----------------------------------------------------------------------------------------------------------------------
# The world's definition
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyClass:
    """One class of a world: an object doing a motion."""

    name: str  # "red circle moving left": the class name written to the class file and used as the prompt name
    colour: str  # a key of COLOURS
    shape: str  # one of SHAPES
    motion: str  # one of MOTIONS
    role: str  # ROLE_BASE, ROLE_NOVEL_SEEN or ROLE_NOVEL_UNSEEN


def class_name(colour: str, shape: str, motion: str) -> str:
    return f"{colour} {shape} {motion}"


def parse_class_name(name: str) -> tuple[str, str, str]:
    """``"red circle moving left"`` -> ("red", "circle", "moving left"); FrosterError outside the vocabulary."""
    parts = name.strip().split(" ", 2)
    if len(parts) != 3 or parts[0] not in COLOURS or parts[1] not in SHAPES or parts[2] not in _MOTION_INDEX:
        raise FrosterError(
            f"toy class {name!r} is not '<colour> <shape> <motion>' with colour in {sorted(COLOURS)}, shape in "
            f"{list(SHAPES)} and motion in {list(MOTIONS)}"
        )
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True)
class WorldSpec:
    """Everything a generated world depends on. Same spec, same frames (and the same fingerprint)."""

    name: str  # a label written to world.json ("A", "B", ...)
    seed: int  # every clip's random stream derives from (seed, split, label, clip index)
    size: int  # frame height and width in pixels; even (yuv420p), 32 in the presets
    frames: int  # frames per clip T; 8 in the presets, 16 also works
    fps: float  # frame rate written into the mp4 files; 8.0, so a clip lasts one second
    train_clips: int  # training clips per base class; a base2novel run takes `shots` <= this many per class
    test_clips: int  # test clips per class; >= 12 resolves 1-3 point gaps (the notes)
    objects: tuple[tuple[str, str], ...]  # (colour, shape) of the base objects, in label order
    base_pairs: int  # motion pairs each base object does in base classes (pair i, i+1, ... for object i, mod 4)
    novel_pairs: int  # further pairs per base object that make "novel, seen object" classes; 0 = no such classes
    unseen_objects: tuple[tuple[str, str], ...]  # objects of the "novel, unseen object" classes; shapes not in objects
    unseen_pairs: int  # motion pairs per unseen object (pair j, j+1, ... for unseen object j, mod 4)
    radius: tuple[float, float]  # object radius range in pixels for every motion but growing / shrinking
    grow_from: tuple[float, float]  # radius range at the small end of growing / shrinking
    grow_to: tuple[float, float]  # radius range at the large end of growing / shrinking
    background: str  # "plain" (grey + tint + gradient) or "textured" (plus stripes)
    bg_level: tuple[float, float]  # range of the background's grey level in [0, 1]
    noise: float  # per-frame, per-pixel Gaussian noise sigma in [0, 1] units
    codec: str = "h264"  # a codec of pipeline.videowriter.CODECS
    train_novel: bool = False  # novel classes get training clips too (as Kinetics); False saves their generation

    def __post_init__(self):
        def bad(field_name: str, expected: str, found) -> ConfigError:
            return ConfigError(f"WorldSpec.{field_name}: expected {expected}, found {found!r}")

        if self.size < 16 or self.size % 2:
            raise bad("size", "an even number of pixels >= 16", self.size)
        if not 4 <= self.frames <= 64:
            raise bad("frames", "4..64 frames", self.frames)
        if not self.fps > 0:
            raise bad("fps", "a positive frame rate", self.fps)
        if self.train_clips < 0:
            raise bad("train_clips", ">= 0", self.train_clips)
        if self.test_clips < 1:
            raise bad("test_clips", ">= 1", self.test_clips)
        for fname in ("objects", "unseen_objects"):
            objs = getattr(self, fname)
            for obj in objs:
                if len(obj) != 2 or obj[0] not in COLOURS or obj[1] not in SHAPES:
                    raise bad(fname, f"(colour, shape) pairs from {sorted(COLOURS)} x {list(SHAPES)}", obj)
            if len(set(objs)) != len(objs):
                raise bad(fname, "no duplicate objects", objs)
        if not self.objects:
            raise bad("objects", "at least one object", self.objects)
        n_pairs = len(MOTION_PAIRS)
        if not 1 <= self.base_pairs <= n_pairs:
            raise bad("base_pairs", f"1..{n_pairs}", self.base_pairs)
        if not 0 <= self.novel_pairs <= n_pairs - self.base_pairs:
            raise bad("novel_pairs", f"0..{n_pairs - self.base_pairs} (4 pairs in all)", self.novel_pairs)
        if not 0 <= self.unseen_pairs <= n_pairs or (self.unseen_objects and self.unseen_pairs < 1):
            raise bad("unseen_pairs", f"1..{n_pairs} when there are unseen objects", self.unseen_pairs)
        base_shapes = {s for _, s in self.objects}
        leaked = sorted({s for _, s in self.unseen_objects} & base_shapes)
        if leaked:
            raise bad("unseen_objects", f"shapes that no base object has (base shapes {sorted(base_shapes)})", leaked)
        for fname in ("radius", "grow_from", "grow_to"):
            lo, hi = getattr(self, fname)
            if not 0 < lo <= hi <= self.size / 2:
                raise bad(fname, f"0 < low <= high <= {self.size / 2} pixels", (lo, hi))
        if self.background not in BACKGROUNDS:
            raise bad("background", f"one of {list(BACKGROUNDS)}", self.background)
        lo, hi = self.bg_level
        if not 0 <= lo <= hi <= 1:
            raise bad("bg_level", "0 <= low <= high <= 1", self.bg_level)
        if not 0 <= self.noise <= 0.5:
            raise bad("noise", "a sigma in [0, 0.5]", self.noise)
        from froster.pipeline.videowriter import CODECS

        if self.codec not in CODECS:
            raise bad("codec", f"one of {sorted(CODECS)}", self.codec)

    # -- presets ---------------------------------------------------------------------------------------------------

    @classmethod
    def default(cls, seed: int = 0, frames: int = 8) -> "WorldSpec":
        """World A, the notes' informative world: 48 base + 24 novel-seen + 24 novel-unseen classes."""
        return cls(
            name="A",
            seed=seed,
            size=32,
            frames=frames,
            fps=8.0,
            train_clips=12,
            test_clips=12,
            objects=tuple(
                itertools.product(("red", "green", "blue", "yellow", "purple", "orange"), ("circle", "square"))
            ),
            base_pairs=2,
            novel_pairs=1,
            unseen_objects=tuple(
                itertools.product(("red", "green", "blue", "yellow"), ("triangle", "cross", "diamond"))
            ),
            unseen_pairs=1,
            radius=(3.5, 6.0),
            grow_from=(2.5, 3.5),
            grow_to=(7.0, 8.5),
            background="plain",
            bg_level=(0.08, 0.45),
            noise=0.05,
        )

    @classmethod
    def quick(cls, seed: int = 0, frames: int = 8) -> "WorldSpec":
        """A small world A for the test suite: 16 base + 8 novel-seen + 4 novel-unseen classes, 5 clips each."""
        return cls(
            name="A-quick",
            seed=seed,
            size=32,
            frames=frames,
            fps=8.0,
            train_clips=3,
            test_clips=2,
            objects=(("red", "circle"), ("red", "square"), ("blue", "circle"), ("blue", "square")),
            base_pairs=2,
            novel_pairs=1,
            unseen_objects=(("red", "triangle"), ("blue", "diamond")),
            unseen_pairs=1,
            radius=(3.5, 6.0),
            grow_from=(2.5, 3.5),
            grow_to=(7.0, 8.5),
            background="plain",
            bg_level=(0.08, 0.45),
            noise=0.05,
        )

    @classmethod
    def default_b(cls, seed: int = 1, frames: int = 8) -> "WorldSpec":
        """World B, the cross-dataset target: other objects (no class name shared with A), larger objects, a lighter
        textured background; 6 objects x 8 motions = 48 classes, test clips only."""
        return cls(
            name="B",
            seed=seed,
            size=32,
            frames=frames,
            fps=8.0,
            train_clips=0,
            test_clips=12,
            objects=(
                ("cyan", "circle"),
                ("pink", "square"),
                ("purple", "triangle"),
                ("orange", "diamond"),
                ("cyan", "cross"),
                ("pink", "triangle"),
            ),
            base_pairs=4,
            novel_pairs=0,
            unseen_objects=(),
            unseen_pairs=0,
            radius=(4.5, 7.0),
            grow_from=(3.0, 4.0),
            grow_to=(8.0, 9.5),
            background="textured",
            bg_level=(0.35, 0.6),
            noise=0.05,
        )

    @classmethod
    def quick_b(cls, seed: int = 1, frames: int = 8) -> "WorldSpec":
        """A small world B for the test suite: 2 objects x 8 motions = 16 classes, 2 test clips each."""
        return cls(
            name="B-quick",
            seed=seed,
            size=32,
            frames=frames,
            fps=8.0,
            train_clips=0,
            test_clips=2,
            objects=(("cyan", "circle"), ("pink", "triangle")),
            base_pairs=4,
            novel_pairs=0,
            unseen_objects=(),
            unseen_pairs=0,
            radius=(4.5, 7.0),
            grow_from=(3.0, 4.0),
            grow_to=(8.0, 9.5),
            background="textured",
            bg_level=(0.35, 0.6),
            noise=0.05,
        )

    # -- derived -----------------------------------------------------------------------------------------------------

    def classes(self) -> list[ToyClass]:
        """All classes in label order: base, then novel-seen, then novel-unseen."""
        n_pairs = len(MOTION_PAIRS)
        out: list[ToyClass] = []

        def add(colour: str, shape: str, pairs: Sequence[int], role: str) -> None:
            for p in pairs:
                for motion in MOTION_PAIRS[p]:
                    out.append(ToyClass(class_name(colour, shape, motion), colour, shape, motion, role))

        for i, (colour, shape) in enumerate(self.objects):
            add(colour, shape, [(i + k) % n_pairs for k in range(self.base_pairs)], ROLE_BASE)
        for i, (colour, shape) in enumerate(self.objects):
            first = i + self.base_pairs
            add(colour, shape, [(first + k) % n_pairs for k in range(self.novel_pairs)], ROLE_NOVEL_SEEN)
        for j, (colour, shape) in enumerate(self.unseen_objects):
            add(colour, shape, [(j + k) % n_pairs for k in range(self.unseen_pairs)], ROLE_NOVEL_UNSEEN)
        return out

    def has_novel(self) -> bool:
        return any(c.role != ROLE_BASE for c in self.classes())

    def fingerprint(self) -> str:
        blob = json.dumps({"spec": asdict(self), "renderer": RENDERER_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------------
# Rendering (numpy, float32 in [0, 1] until the final quantisation)
# ----------------------------------------------------------------------------------------------------------------------


def _lerp(lo_hi: tuple[float, float], u):
    lo, hi = lo_hi
    return lo + (hi - lo) * u


def _draw_background_params(rng: np.random.Generator, n: int, level_lo, level_hi) -> dict[str, np.ndarray]:
    """Draws the same amount of randomness whatever the style, so a clip's later draws do not depend on it."""
    u = rng.random((n, 11), dtype=np.float32)  # [N, 11]
    level_lo = np.asarray(level_lo, np.float32)
    return {
        "level": level_lo + (np.asarray(level_hi, np.float32) - level_lo) * u[:, 0],  # [N]
        "tint": u[:, 1:4] * 2 - 1,  # [N, 3] in [-1, 1], scaled by style
        "grad_amp": u[:, 4],  # [N]
        "grad_angle": u[:, 5] * np.float32(2 * np.pi),  # [N]
        "tex_amp": u[:, 6],  # [N]
        "tex_freq": u[:, 7],  # [N]
        "tex_angle": u[:, 8] * np.float32(np.pi),  # [N]
        "tex_phase": u[:, 9] * np.float32(2 * np.pi),  # [N]
        "tex_mix": u[:, 10],  # [N] how much the stripes are coloured
    }


def _backgrounds(p: dict[str, np.ndarray], textured: np.ndarray, size: int) -> np.ndarray:
    """Backgrounds float32 ``[N, S, S, 3]``: grey level + colour tint + linear gradient (+ stripes when textured)."""
    f32 = lambda a: np.asarray(a, np.float32)[:, None, None]  # noqa: E731  [N] -> [N, 1, 1]
    c = (np.arange(size, dtype=np.float32) + 0.5 - size / 2) / (size / 2)  # [S] in (-1, 1)
    yy, xx = c[None, :, None], c[None, None, :]  # [1, S, 1], [1, 1, S]
    tex = f32(textured)  # [N, 1, 1]
    ang = f32(p["grad_angle"])
    grey = f32(p["level"]) + (f32(p["grad_amp"]) * (0.12 - 0.06 * tex)) * (xx * np.cos(ang) + yy * np.sin(ang))
    tint = p["tint"].astype(np.float32)[:, None, None, :] * (0.06 + 0.04 * tex)[..., None]  # [N, 1, 1, 3]
    if not textured.any():
        return grey[..., None] + tint  # [N, S, S, 3]
    t_ang, freq = f32(p["tex_angle"]), (0.2 + 0.35 * f32(p["tex_freq"])) * (size / 2)  # radians per half-frame
    stripes = np.sin(freq * (xx * np.cos(t_ang) + yy * np.sin(t_ang)) + f32(p["tex_phase"]))  # [N, S, S]
    stripes *= (0.04 + 0.06 * f32(p["tex_amp"])) * tex
    # Textured stripes are partly coloured along the tint's direction, so B's backgrounds look unlike A's flat greys.
    hue = 0.5 * f32(p["tex_mix"])[..., None] * np.sign(tint)  # [N, 1, 1, 3]
    return (grey + stripes)[..., None] + tint + stripes[..., None] * hue


# Signed distance (pixels, negative inside) of each shape with "radius" r; shapes have roughly the area of a circle of
# radius r so that size is comparable across shapes. dx, dy: [N, S, S] offsets from the centre (y grows downwards).
def _sdf_circle(dx, dy, r):
    return np.hypot(dx, dy) - r


def _sdf_square(dx, dy, r):
    return np.maximum(np.abs(dx), np.abs(dy)) - 0.886 * r


def _sdf_triangle(dx, dy, r):
    inradius = 0.78 * r  # equilateral, pointing up, centroid at the centre
    s, c = math.sin(math.pi / 3), 0.5
    d = np.maximum(dy, np.maximum(s * dx - c * dy, -s * dx - c * dy))
    return d - inradius


def _sdf_cross(dx, dy, r):
    arm, half = 1.2 * r, 0.42 * r
    ax, ay = np.abs(dx), np.abs(dy)
    return np.minimum(np.maximum(ax - arm, ay - half), np.maximum(ax - half, ay - arm))


def _sdf_diamond(dx, dy, r):
    return (np.abs(dx) + np.abs(dy) - 1.25 * r) / math.sqrt(2)


def _sdf_ring(dx, dy, r):
    return np.abs(np.hypot(dx, dy) - 0.8 * r) - 0.38 * r


_SDF = {
    "circle": _sdf_circle,
    "square": _sdf_square,
    "triangle": _sdf_triangle,
    "cross": _sdf_cross,
    "diamond": _sdf_diamond,
    "ring": _sdf_ring,
}
assert tuple(_SDF) == SHAPES


def _draw_objects(
    bg: np.ndarray,
    shape_idx: np.ndarray,
    colour: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    r: np.ndarray,
    visible: np.ndarray,
) -> np.ndarray:
    """Composite one anti-aliased object per image onto ``bg [N, S, S, 3]``.

    shape_idx int [N] (index into SHAPES), colour [N, 3], cx, cy, r [N] in pixels (pixel i covers [i, i+1)),
    visible bool [N]. Returns float32 [N, S, S, 3].
    """
    n, size = bg.shape[0], bg.shape[1]
    centres = np.arange(size, dtype=np.float32) + 0.5  # [S]
    alpha = np.zeros((n, size, size), np.float32)  # [N, S, S]
    for k, name in enumerate(SHAPES):
        m = (shape_idx == k) & visible
        if not m.any():
            continue
        dx = centres[None, None, :] - cx[m, None, None].astype(np.float32)  # [M, 1, S]
        dy = centres[None, :, None] - cy[m, None, None].astype(np.float32)  # [M, S, 1]
        dx, dy = np.broadcast_arrays(dx, dy)
        alpha[m] = np.clip(0.5 - _SDF[name](dx, dy, r[m, None, None].astype(np.float32)), 0.0, 1.0)
    a = alpha[..., None]  # [N, S, S, 1]
    return bg * (1 - a) + colour[:, None, None, :].astype(np.float32) * a


def _quantise(img: np.ndarray) -> np.ndarray:
    """float [..., 3] in [0, 1] -> uint8, rounded."""
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _chroma_subsample(img: np.ndarray) -> np.ndarray:
    """Mimic yuv420p: keep luma, average chroma over 2x2 blocks. float [N, S, S, 3] -> same shape.

    The teacher's frames go through this so that it sees colour edges as blurred as in the decoded h264 clips."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb, cr = (b - y) * 0.564, (r - y) * 0.713
    n, h, w = y.shape

    def pool(c):
        c = c.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))  # [N, S/2, S/2]
        return np.repeat(np.repeat(c, 2, axis=1), 2, axis=2)

    cb, cr = pool(cb), pool(cr)
    return np.stack([y + 1.403 * cr, y - 0.344 * cb - 0.714 * cr, y + 1.773 * cb], axis=-1)


def render_clip(spec: WorldSpec, cls: str | ToyClass, rng: np.random.Generator) -> np.ndarray:
    """One clip of class ``cls`` (a ToyClass or a name such as "red circle moving left"): uint8 ``[T, S, S, 3]``.

    The draws from ``rng`` do not depend on the class, so two classes rendered from equal generators share the
    background, noise, colour jitter and path; the second motion of a pair is exactly the first reversed in time.
    """
    if isinstance(cls, ToyClass):
        colour, shape, motion = cls.colour, cls.shape, cls.motion
    else:
        colour, shape, motion = parse_class_name(cls)
    size, T = spec.size, spec.frames
    bgp = _draw_background_params(rng, 1, spec.bg_level[0], spec.bg_level[1])
    jitter = rng.uniform(-0.04, 0.04, 3)  # [3]
    u = rng.random(10)  # [10] path parameters, used as each motion needs
    noise = rng.standard_normal((T, size, size, 3), dtype=np.float32) * np.float32(spec.noise)  # [T, S, S, 3]

    pair, reverse = _MOTION_INDEX[motion]
    t = np.linspace(0.0, 1.0, T)  # [T]
    ones = np.ones(T)
    r_static = _lerp(spec.radius, u[0])
    visible = np.ones(T, bool)
    # The canonical (first) motion of each pair; the second is the canonical clip reversed below.
    if pair in (0, 1):  # moving left (x decreases) / moving up (y decreases)
        along = size * _lerp((0.66, 0.80), u[1]) - size * _lerp((0.34, 0.46), u[2]) * t
        across = size * _lerp((0.28, 0.72), u[3]) * ones
        cx, cy = (along, across) if pair == 0 else (across, along)
        r = r_static * ones
    elif pair == 2:  # growing
        cx = size * (0.5 + _lerp((-0.1, 0.1), u[4])) * ones
        cy = size * (0.5 + _lerp((-0.1, 0.1), u[5])) * ones
        r0, r1 = _lerp(spec.grow_from, u[6]), _lerp(spec.grow_to, u[7])
        r = r0 + (r1 - r0) * t
    else:  # appearing: absent for the first k frames, k in [T/4, 3T/4]
        cx = size * _lerp((0.28, 0.72), u[4]) * ones
        cy = size * _lerp((0.28, 0.72), u[5]) * ones
        r = r_static * ones
        k = min(T // 4 + int(u[8] * (T // 2 + 1)), T - 1)
        visible = np.arange(T) >= k

    bg = _backgrounds(bgp, np.array([spec.background == "textured"]), size)  # [1, S, S, 3]
    rgb = np.clip(np.asarray(COLOURS[colour]) + jitter, 0, 1)
    frames = _draw_objects(
        np.repeat(bg, T, axis=0),
        np.full(T, SHAPES.index(shape)),
        np.repeat(rgb[None], T, axis=0),
        cx,
        cy,
        r,
        visible,
    )  # [T, S, S, 3]
    frames = _quantise(frames + noise)
    if reverse:
        frames = frames[::-1]
    return np.ascontiguousarray(frames)


# ----------------------------------------------------------------------------------------------------------------------
# Writing a world to disk
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldFiles:
    """Where a generated world lies. Annotation lists hold ``relative/path,label`` lines relative to ``root``."""

    root: Path  # the video root; the paths in train.txt / test.txt are relative to it
    facts: Path  # world.json: spec, fingerprint, classes with attributes, counts, chance levels
    classes: Path  # classes.txt: one class name per line, line i = label i
    train: Path | None  # train.txt (headerless "path,label"): base classes (all with train_novel); None without clips
    test: Path  # test.txt
    base: Path | None  # base.txt: base class names, one per line (None for a world without novel classes)
    novel: Path | None  # novel.txt: novel class names (seen-object then unseen-object classes)
    novel_seen: Path | None  # novel_seen.txt: base objects doing a pair they never do in a base class
    novel_unseen: Path | None  # novel_unseen.txt: objects whose shapes never appear in a base class
    num_classes: int  # lines in classes.txt
    num_train: int  # lines in train.txt (0 without one)
    num_test: int  # lines in test.txt
    fingerprint: str  # WorldSpec.fingerprint() of the spec that made it
    reused: bool  # True when an existing, complete world with the same fingerprint was kept


def _train_classes(spec: WorldSpec) -> list[ToyClass]:
    return [c for c in spec.classes() if spec.train_novel or c.role == ROLE_BASE]


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def _clip_rng(spec: WorldSpec, split: str, label: int, index: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, {"train": 0, "test": 1}[split], label, index])


def _world_files(spec: WorldSpec, root: Path, reused: bool) -> WorldFiles:
    classes = spec.classes()
    novel = spec.has_novel()
    return WorldFiles(
        root=root,
        facts=root / "world.json",
        classes=root / "classes.txt",
        train=root / "train.txt" if spec.train_clips else None,
        test=root / "test.txt",
        base=root / "base.txt" if novel else None,
        novel=root / "novel.txt" if novel else None,
        novel_seen=root / "novel_seen.txt" if novel else None,
        novel_unseen=root / "novel_unseen.txt" if novel else None,
        num_classes=len(classes),
        num_train=len(_train_classes(spec)) * spec.train_clips,
        num_test=len(classes) * spec.test_clips,
        fingerprint=spec.fingerprint(),
        reused=reused,
    )


def _world_facts(spec: WorldSpec, files: WorldFiles) -> dict:
    classes = spec.classes()
    roles = {r: [c.name for c in classes if c.role == r] for r in (ROLE_BASE, ROLE_NOVEL_SEEN, ROLE_NOVEL_UNSEEN)}
    novel = roles[ROLE_NOVEL_SEEN] + roles[ROLE_NOVEL_UNSEEN]
    rel = lambda p: None if p is None else p.name  # noqa: E731
    return {
        "froster_toyworld": RENDERER_VERSION,
        "name": spec.name,
        "fingerprint": spec.fingerprint(),
        "spec": asdict(spec),
        "classes": [
            {"label": i, "name": c.name, "colour": c.colour, "shape": c.shape, "motion": c.motion, "role": c.role}
            for i, c in enumerate(classes)
        ],
        "counts": {
            "classes": len(classes),
            "base": len(roles[ROLE_BASE]),
            "novel": len(novel),
            "novel_seen": len(roles[ROLE_NOVEL_SEEN]),
            "novel_unseen": len(roles[ROLE_NOVEL_UNSEEN]),
            "train_videos": files.num_train,
            "train_classes": len(_train_classes(spec)) if spec.train_clips else 0,
            "test_videos": files.num_test,
        },
        # Top-1 chance of a classifier over each vocabulary.
        "chance": {
            "all": 1 / len(classes),
            "base": 1 / len(roles[ROLE_BASE]) if roles[ROLE_BASE] else None,
            "novel": 1 / len(novel) if novel else None,
        },
        "motion_pairs": [list(p) for p in MOTION_PAIRS],
        "files": {
            "classes": rel(files.classes),
            "train": rel(files.train),
            "test": rel(files.test),
            "base": rel(files.base),
            "novel": rel(files.novel),
            "novel_seen": rel(files.novel_seen),
            "novel_unseen": rel(files.novel_unseen),
        },
        "complete": True,
    }


def _read_facts(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def generate_world(
    spec: WorldSpec,
    root: str | os.PathLike,
    progress: Callable[[int, int], None] | None = None,
) -> WorldFiles:
    """Write every clip of ``spec`` as an mp4 under ``root/videos/{split}/``, the annotation lists, class files and
    world.json. A complete world with the same fingerprint already at ``root`` is kept (``reused=True``); an older toy
    world there is replaced; any other non-empty directory is refused. ``progress(done, total)`` after each clip.
    """
    from froster.pipeline.videowriter import write_video

    root = Path(root)
    fingerprint = spec.fingerprint()
    facts = _read_facts(root / "world.json") if (root / "world.json").is_file() else None
    if facts is not None and facts.get("fingerprint") == fingerprint and facts.get("complete"):
        files = _world_files(spec, root, reused=True)
        listed = [p for p in (files.classes, files.train, files.test, files.base, files.novel) if p is not None]
        if all(p.is_file() for p in listed):
            logger.info("toy world %s at %s is up to date (fingerprint %s)", spec.name, root, fingerprint)
            return files
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and facts is None)):
        raise FrosterError(
            f"{root}: expected an empty directory or an earlier toy world (with world.json) to write the toy world "
            f"into, found other files; choose another directory"
        )

    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    classes = spec.classes()
    train_classes = {c.name for c in _train_classes(spec)}
    splits = [("train", spec.train_clips), ("test", spec.test_clips)]
    total = len(train_classes) * spec.train_clips + len(classes) * spec.test_clips
    done = 0
    t0 = time.perf_counter()
    try:
        for split, clips in splits:
            if clips == 0:
                continue
            lines = []
            for label, cls in enumerate(classes):
                if split == "train" and cls.name not in train_classes:
                    continue
                folder = f"videos/{split}/{label:03d}_{_slug(cls.name)}"
                for i in range(clips):
                    rel = f"{folder}/{i:03d}.mp4"
                    frames = render_clip(spec, cls, _clip_rng(spec, split, label, i))  # [T, S, S, 3]
                    write_video(tmp / rel, frames, fps=spec.fps, codec=spec.codec)
                    lines.append(f"{rel},{label}\n")
                    done += 1
                    if progress is not None:
                        progress(done, total)
            (tmp / f"{split}.txt").write_text("".join(lines))
        (tmp / "classes.txt").write_text("".join(f"{c.name}\n" for c in classes))
        if spec.has_novel():
            by_role = lambda *roles: "".join(f"{c.name}\n" for c in classes if c.role in roles)  # noqa: E731
            (tmp / "base.txt").write_text(by_role(ROLE_BASE))
            (tmp / "novel.txt").write_text(by_role(ROLE_NOVEL_SEEN, ROLE_NOVEL_UNSEEN))
            (tmp / "novel_seen.txt").write_text(by_role(ROLE_NOVEL_SEEN))
            (tmp / "novel_unseen.txt").write_text(by_role(ROLE_NOVEL_UNSEEN))
        files = _world_files(spec, root, reused=False)
        # world.json last: its "complete" marks a finished world.
        (tmp / "world.json").write_text(json.dumps(_world_facts(spec, files), indent=2) + "\n")
        if root.exists():
            old = root.parent / f".{root.name}.old-{os.getpid()}"
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote toy world %s: %d clips in %.1f s to %s", spec.name, total, time.perf_counter() - t0, root)
    return files


# ----------------------------------------------------------------------------------------------------------------------
# Single frames for the teacher (and the object probe)
# ----------------------------------------------------------------------------------------------------------------------

# Attribute columns of a frame's description; -1 in a caption means "not mentioned".
_A_SIZE, _A_COLOUR, _A_SHAPE, _A_X, _A_Y = range(5)
_COLOUR_NAMES = tuple(COLOURS)
_COLOUR_RGB = np.array([COLOURS[c] for c in _COLOUR_NAMES], np.float32)  # [8, 3]
# Teacher frames: small and large radii are separated by a gap so that "small" / "large" has a clear meaning; likewise
# positions: the centre lies in one third of the frame along each axis, at least 4% of the frame from the thirds'
# borders (and 9% from the frame's edge), anywhere else, as in the moving clips. "Aligned" frames instead put it near a
# quarter point (the corners of the 8-pixel patches), where a ViT learns shapes much sooner; training starts with
# those and moves on to free positions.
_SMALL_RADIUS = (3.0, 4.6)
_LARGE_RADIUS = (5.4, 8.0)
_POSITION_MARGIN = 0.04
_POSITION_EDGE = 0.09
# Both worlds' background styles, so that world B's look is known to the teacher but not to a model tuned on A.
_TEACHER_LEVEL = {"plain": (0.05, 0.5), "textured": (0.3, 0.65)}


_N_VALUES = np.array([len(SIZES), len(COLOURS), len(SHAPES), len(X_POSITIONS), len(Y_POSITIONS)])  # per column


def _teacher_frames(
    rng: np.random.Generator,
    n: int,
    size: int,
    empty_prob: float,
    noise_bank: np.ndarray | None = None,
    group: int = 1,
    aligned: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fresh single frames: (uint8 [N, S, S, 3], attributes int [N, 5] (size, colour, shape, x, y), empty bool [N]).

    The object's centre lies in one cell of a 3x3 grid (see _POSITION_MARGIN), its radius in one of two ranges.
    ``group`` > 1 draws frames in runs of ``group`` that share each attribute of the run's first frame with
    probability 1/2 (hard negatives: frames of a batch that differ in one or two attributes only).
    ``noise_bank`` float32 [K, S, S, 3] of standard normals: noise is picked from it (rolled by a random offset)
    instead of drawn, which is most of the drawing time; None draws fresh noise. ``aligned``: the fraction of frames
    whose object sits near a quarter point of the frame (within 7% of it) instead of anywhere in its cell."""
    attrs = (rng.random((n, 5)) * _N_VALUES).astype(np.int64)  # [N, 5] independent uniform attributes
    if group > 1:
        # Frames after the first of a run copy each of its attributes with probability 1/2.
        first = np.arange(n) // group * group  # [N]
        attrs = np.where(rng.random((n, 5)) < 0.5, attrs[first], attrs)
    empty = rng.random(n) < empty_prob  # [N]
    textured = rng.random(n) < 0.5  # [N]
    level_lo = np.where(textured, _TEACHER_LEVEL["textured"][0], _TEACHER_LEVEL["plain"][0])
    level_hi = np.where(textured, _TEACHER_LEVEL["textured"][1], _TEACHER_LEVEL["plain"][1])
    bg = _backgrounds(_draw_background_params(rng, n, level_lo, level_hi), textured, size)  # [N, S, S, 3]
    u = rng.random(n)  # [N]
    r = np.where(attrs[:, _A_SIZE] == 0, _lerp(_SMALL_RADIUS, u), _lerp(_LARGE_RADIUS, u))  # [N]
    cell = attrs[:, [_A_X, _A_Y]]  # [N, 2] third along x, y
    lo = np.maximum(cell / 3 + _POSITION_MARGIN, _POSITION_EDGE)
    hi = np.minimum((cell + 1) / 3 - _POSITION_MARGIN, 1 - _POSITION_EDGE)
    free = lo + (hi - lo) * rng.random((n, 2))  # [N, 2] in frame fractions
    near_grid = (cell + 1) / 4 + rng.uniform(-0.07, 0.07, (n, 2))  # [N, 2]
    cx, cy = (size * np.where((rng.random(n) < aligned)[:, None], near_grid, free)).T  # [N] each
    # Keep most of a large object inside the frame (shape must stay visible); never moves a centre out of its cell.
    cx, cy = np.clip(cx, 0.7 * r, size - 0.7 * r), np.clip(cy, 0.7 * r, size - 0.7 * r)
    rgb = np.clip(_COLOUR_RGB[attrs[:, _A_COLOUR]] + rng.uniform(-0.04, 0.04, (n, 3)), 0, 1)  # [N, 3]
    img = _draw_objects(bg, attrs[:, _A_SHAPE], rgb, cx, cy, r, ~empty)
    sigma = rng.uniform(0.03, 0.07, n).astype(np.float32)[:, None, None, None]
    if noise_bank is None:
        noise = rng.standard_normal(img.shape, dtype=np.float32)  # [N, S, S, 3]
    else:
        shift = tuple(int(v) for v in rng.integers(0, size, 2))
        noise = np.roll(noise_bank[rng.integers(0, len(noise_bank), n)], shift, axis=(1, 2))
    img = img + noise * sigma
    return _quantise(_chroma_subsample(img)), attrs, empty


def _caption(attr: Sequence[int], article: bool) -> str:
    """Caption of an attribute row (-1 = not mentioned); the shape is always mentioned."""
    size, colour, shape, x, y = (int(a) for a in attr)
    words = []
    if size >= 0:
        words.append(SIZES[size])
    if colour >= 0:
        words.append(_COLOUR_NAMES[colour])
    words.append(SHAPES[shape])
    if y >= 0 and x >= 0:
        words.append(f"at the {Y_POSITIONS[y]} {X_POSITIONS[x]}")
    elif y >= 0:
        words.append(f"at the {Y_POSITIONS[y]}")
    elif x >= 0:
        words.append(f"at the {X_POSITIONS[x]}")
    return ("a " if article else "") + " ".join(words)


def _sample_captions(
    rng: np.random.Generator, attrs: np.ndarray, empty: np.ndarray, full_prob: float, template_prob: float
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One caption per frame: full with ``full_prob``, else each of size, colour, x, y kept with p 0.5 (shape always).
    Returns (texts [N], caption attributes int [N, 5] with -1 for unmentioned, empty-caption flags bool [N])."""
    n = len(attrs)
    keep = rng.random((n, 4)) < 0.5  # [N, 4] size, colour, x, y
    keep[rng.random(n) < full_prob] = True
    cap = attrs.copy()
    for j, col in enumerate((_A_SIZE, _A_COLOUR, _A_X, _A_Y)):
        cap[~keep[:, j], col] = -1
    article = rng.random(n) < 0.5
    templated = rng.random(n) < template_prob
    pre = rng.integers(0, len(PREFIXES), n)
    suf = rng.integers(0, len(SUFFIXES), n)
    texts = []
    for i in range(n):
        core = _EMPTY_CAPTION if empty[i] else _caption(cap[i], bool(article[i]))
        if templated[i]:
            core = f"{PREFIXES[pre[i]]} {SUFFIXES[suf[i]].format(core)}"
        texts.append(core)
    return texts, cap, empty.copy()


def _satisfies(attrs: np.ndarray, empty: np.ndarray, cap: np.ndarray, cap_empty: np.ndarray) -> np.ndarray:
    """bool [N_images, N_captions]: image i fits caption j (every mentioned attribute equal; empty only with empty)."""
    match = ((cap[None] == -1) | (cap[None] == attrs[:, None])).all(-1)  # [N, M]
    obj = match & ~empty[:, None] & ~cap_empty[None, :]
    return obj | (empty[:, None] & cap_empty[None, :])


@dataclass(frozen=True)
class ObjectProbe:
    """Single frames of every known object (8 colours x 6 shapes) for a frame-level object zero-shot probe."""

    frames: np.ndarray  # uint8 [N, S, S, 3], rendered like the world's clips (background, radius, noise, yuv420p)
    labels: np.ndarray  # int64 [N], index into names
    names: tuple[str, ...]  # the 48 object names ("red circle"), colour-major
    in_base: np.ndarray  # bool [N]: the frame's object is one of the world's base objects


def object_probe(spec: WorldSpec, per_object: int = 8, seed: int = 0) -> ObjectProbe:
    """``per_object`` frames of each of the 48 objects at random positions, drawn like ``spec``'s clips. Measures
    forgetting: a tuned model's accuracy on objects outside the base set against the teacher's."""
    objects = [(c, s) for c in _COLOUR_NAMES for s in SHAPES]
    n = len(objects) * per_object
    rng = np.random.default_rng([spec.seed, 7, seed])
    labels = np.repeat(np.arange(len(objects)), per_object)  # [N]
    colour_idx = np.array([_COLOUR_NAMES.index(objects[k][0]) for k in labels])
    shape_idx = np.array([SHAPES.index(objects[k][1]) for k in labels])
    textured = np.full(n, spec.background == "textured")
    bg = _backgrounds(_draw_background_params(rng, n, spec.bg_level[0], spec.bg_level[1]), textured, spec.size)
    r = _lerp(spec.radius, rng.random(n))
    cx, cy = (spec.size * _lerp((0.25, 0.75), rng.random((2, n)))).astype(np.float32)
    rgb = np.clip(_COLOUR_RGB[colour_idx] + rng.uniform(-0.04, 0.04, (n, 3)), 0, 1)
    img = _draw_objects(bg, shape_idx, rgb, cx, cy, r, np.ones(n, bool))
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(spec.noise)
    base = set(spec.objects)
    return ObjectProbe(
        frames=_quantise(_chroma_subsample(img)),
        labels=labels.astype(np.int64),
        names=tuple(f"{c} {s}" for c, s in objects),
        in_base=np.array([objects[k] in base for k in labels]),
    )


# ----------------------------------------------------------------------------------------------------------------------
# The toy teacher
# ----------------------------------------------------------------------------------------------------------------------

# Pixel normalisation written into the teacher's preprocess_cfg (OpenAI CLIP's, as open_clip's default).
TOY_MEAN = (0.48145466, 0.4578275, 0.40821073)
TOY_STD = (0.26862954, 0.26130258, 0.27577711)
_RESULT_FILE = "toy_teacher.json"
# Bump when the pretraining data or loss changes: the fingerprint includes it.
TEACHER_VERSION = 1


def toy_clip_config(image_size: int = 32) -> dict:
    """The toy teacher's open_clip model config (package data ``data/toy_clip.json``) for ``image_size``."""
    cfg = json.loads(resources.files("froster.pipeline").joinpath("data/toy_clip.json").read_text())
    cfg["vision_cfg"]["image_size"] = image_size
    return cfg


@dataclass(frozen=True)
class TeacherRecipe:
    """How the toy teacher is pretrained. Defaults (1500 steps x 256 frames): held-out shape 0.86, x and y 1.00,
    exact caption 0.85 for seeds 0 and 1; about 350 s of CPU time on one thread of this 2-core machine."""

    steps: int = 1500  # optimisation steps; each sees `batch` freshly rendered frames
    batch: int = 256  # frames (and captions) per step
    lr: float = 2e-3  # AdamW peak learning rate
    weight_decay: float = 0.05  # AdamW weight decay on matrices (not on biases, norms, embeddings, logit scale)
    warmup: int = 100  # linear warm-up steps, then cosine to 0
    logit_scale: float = 30.0  # initial temperature inverse (learned, clamped at 100)
    full_caption_prob: float = 0.5  # captions naming every attribute; the rest drop size/colour/x/y with p 0.5 each
    template_prob: float = 0.3  # captions wrapped in a class-prompt template ("a photo of a person doing {}.")
    empty_prob: float = 0.04  # frames without an object, captioned "an empty background"
    aligned_start: float = 1.0  # fraction of frames with patch-aligned objects at the start (shapes learn sooner)
    aligned_end: float = 0.25  # ... reached linearly at 2/3 of the steps and kept; evaluation uses free positions
    group: int = 4  # frames come in runs of `group` sharing attributes with p 1/2: hard negatives in every batch
    eval_frames: int = 2000  # held-out frames for the accuracies
    min_shape: float = 0.8  # guard: held-out shape accuracy (free positions; seed 0 reaches 0.86, the notes ask 0.85)
    min_position: float = 0.95  # guard: held-out x and y accuracy needed (left / right needs positions)

    def __post_init__(self):
        for name in ("steps", "batch", "eval_frames", "group"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TeacherRecipe.{name}: expected >= 1, found {getattr(self, name)!r}")
        if self.warmup < 0 or self.warmup >= self.steps:
            raise ConfigError(f"TeacherRecipe.warmup: expected 0 <= warmup < steps ({self.steps}), found {self.warmup}")
        for name in (
            "full_caption_prob",
            "template_prob",
            "empty_prob",
            "aligned_start",
            "aligned_end",
            "min_shape",
            "min_position",
        ):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"TeacherRecipe.{name}: expected a value in [0, 1], found {getattr(self, name)!r}")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.logit_scale > 0):
            raise ConfigError(
                f"TeacherRecipe: expected lr > 0, weight_decay >= 0, logit_scale > 0, found "
                f"{self.lr}, {self.weight_decay}, {self.logit_scale}"
            )

    @classmethod
    def default(cls) -> "TeacherRecipe":
        return cls()

    @classmethod
    def quick(cls) -> "TeacherRecipe":
        """Seconds, for the test suite: small batches (more updates per second) of plain captions; weak (colour and
        size mostly) but far above chance on retrieval; no guard."""
        return cls(
            steps=200,
            batch=32,
            warmup=40,
            template_prob=0.0,
            group=1,
            eval_frames=400,
            min_shape=0.0,
            min_position=0.0,
        )


@dataclass(frozen=True)
class ToyTeacherResult:
    """A pretrained (or reused) toy teacher."""

    model: str  # "local-dir:/abs/path": what TeacherSpec.model / open_clip.create_model take
    path: Path  # the local-dir folder (open_clip_config.json, open_clip_model.safetensors, toy_teacher.json)
    fingerprint: str  # hash of recipe, seed, image size, model config, renderer and teacher versions
    reused: bool  # True when an earlier run's folder with the same fingerprint was loaded instead of training
    seconds: float  # training + evaluation wall time of the run that made the weights
    metrics: dict = field(default_factory=dict)  # held-out accuracies: retrieval, colour, shape, size, x, y, object
    chance: dict = field(default_factory=dict)  # chance level of each metric


class ToyTeacherTooWeak(FrosterError):
    """The pretrained toy teacher does not recognise shapes or positions well enough for the world to be informative."""


_CHANCE = {
    "retrieval": 1 / (len(SIZES) * len(COLOURS) * len(SHAPES) * len(X_POSITIONS) * len(Y_POSITIONS)),
    "colour": 1 / len(COLOURS),
    "shape": 1 / len(SHAPES),
    "size": 1 / len(SIZES),
    "x": 1 / len(X_POSITIONS),
    "y": 1 / len(Y_POSITIONS),
    "object": 1 / (len(COLOURS) * len(SHAPES)),
    "object_prompted": 1 / (len(COLOURS) * len(SHAPES)),
}


def _teacher_fingerprint(recipe: TeacherRecipe, seed: int, image_size: int) -> str:
    """What the weights and their measured accuracies depend on; the guard's minimums are checked on every load."""
    trained = {k: v for k, v in asdict(recipe).items() if k not in ("min_shape", "min_position")}
    blob = json.dumps(
        {
            "recipe": trained,
            "seed": seed,
            "config": toy_clip_config(image_size),
            "renderer": RENDERER_VERSION,
            "teacher": TEACHER_VERSION,
            "mean": TOY_MEAN,
            "std": TOY_STD,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _to_input(frames: np.ndarray):
    """uint8 [N, S, S, 3] -> normalised float32 tensor [N, 3, S, S], as pipeline.views.render_view does."""
    import torch

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(TOY_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(TOY_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class _TokenCache:
    """Tokenises each distinct caption once (captions repeat a lot)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.rows: dict[str, object] = {}

    def __call__(self, texts: Sequence[str]):
        import torch

        missing = [t for t in dict.fromkeys(texts) if t not in self.rows]
        if missing:
            for t, row in zip(missing, self.tokenizer(missing)):
                self.rows[t] = row
        return torch.stack([self.rows[t] for t in texts])  # [N, L]


def _encode_text_trimmed(model, tokens):
    """``model.encode_text`` on tokens [N, L] cut to the longest caption's length: the same features (the causal
    mask keeps padding out of the end-of-text token's feature) for about half the work on short captions.
    Returns [N, D], unnormalised."""
    import torch

    length = int((tokens != 0).sum(1).max())
    tokens = tokens[:, :length]  # [N, L']
    x = model.token_embedding(tokens) + model.positional_embedding[:length]  # [N, L', W]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(len(tokens)), tokens.argmax(dim=-1)]  # [N, W] at the end-of-text token (the largest id)
    return x @ model.text_projection


def _encode_texts(model, tokens, chunk: int = 1024):
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        return torch.cat(
            [
                F.normalize(_encode_text_trimmed(model, tokens[i : i + chunk]), dim=-1)
                for i in range(0, len(tokens), chunk)
            ]
        )


def _encode_images(model, frames: np.ndarray, chunk: int = 512):
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        return torch.cat(
            [
                F.normalize(model.encode_image(_to_input(frames[i : i + chunk])), dim=-1)
                for i in range(0, len(frames), chunk)
            ]
        )


def evaluate_toy_teacher(model, tokenizer, image_size: int, frames: int = 2000, seed: int = 12345) -> dict:
    """Held-out accuracies of a toy teacher on fresh frames (a stream no training step draws from).

    retrieval: top-1 exact caption among all 864 full captions ("a small red circle at the top left"); colour, shape,
    size, x, y: that caption's attributes; object: 48-way zero-shot with "a {colour} {shape}"; object_prompted: the same
    with class embeddings averaged over the 28 templates and the bare name, as stage one builds class prompts."""
    import torch

    was_training = model.training
    model.eval()
    rng = np.random.default_rng([seed, 99])
    imgs, attrs, _ = _teacher_frames(rng, frames, image_size, empty_prob=0.0)
    img = _encode_images(model, imgs)  # [N, D]
    full = np.array(
        list(itertools.product(range(len(SIZES)), range(len(COLOURS)), range(len(SHAPES)), range(3), range(3)))
    )  # [864, 5]
    txt = _encode_texts(model, tokenizer([_caption(a, True) for a in full]))  # [864, D]
    pred = full[(img @ txt.T).argmax(1).numpy()]  # [N, 5]
    metrics = {
        "retrieval": float((pred == attrs).all(1).mean()),
        "size": float((pred[:, _A_SIZE] == attrs[:, _A_SIZE]).mean()),
        "colour": float((pred[:, _A_COLOUR] == attrs[:, _A_COLOUR]).mean()),
        "shape": float((pred[:, _A_SHAPE] == attrs[:, _A_SHAPE]).mean()),
        "x": float((pred[:, _A_X] == attrs[:, _A_X]).mean()),
        "y": float((pred[:, _A_Y] == attrs[:, _A_Y]).mean()),
    }
    objects = list(itertools.product(range(len(COLOURS)), range(len(SHAPES))))  # [48] (colour, shape)
    truth = attrs[:, _A_COLOUR] * len(SHAPES) + attrs[:, _A_SHAPE]  # [N]
    names = [f"{_COLOUR_NAMES[c]} {SHAPES[s]}" for c, s in objects]
    obj_txt = _encode_texts(model, tokenizer([f"a {n}" for n in names]))  # [48, D]
    metrics["object"] = float(((img @ obj_txt.T).argmax(1).numpy() == truth).mean())
    prompts = [t.format(n) for n in names for t in TEMPLATES] + names
    per = len(TEMPLATES)
    t = _encode_texts(model, tokenizer(prompts))  # [48 * 28 + 48, D]
    templated = t[: len(names) * per].view(len(names), per, -1)  # [48, 28, D]
    cls_emb = torch.cat([templated, t[len(names) * per :, None]], dim=1).mean(1)  # [48, D]
    cls_emb = torch.nn.functional.normalize(cls_emb, dim=-1)
    metrics["object_prompted"] = float(((img @ cls_emb.T).argmax(1).numpy() == truth).mean())
    model.train(was_training)
    return metrics


def _write_local_dir(model, config: dict, path: Path) -> None:
    """An open_clip ``local-dir:`` folder (open_clip_config.json + open_clip_model.safetensors), via the teacher
    module's writer so that ``load_clip`` and open_clip read it."""
    from froster.pipeline.teacher import save_local_dir

    preprocess = {
        "size": config["vision_cfg"]["image_size"],
        "mean": list(TOY_MEAN),
        "std": list(TOY_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    save_local_dir(model, config, path, preprocess_cfg=preprocess)


def _check_guard(metrics: dict, recipe: TeacherRecipe, path: Path) -> None:
    weak = []
    if metrics["shape"] < recipe.min_shape:
        weak.append(f"shape {metrics['shape']:.3f} < {recipe.min_shape}")
    for axis in ("x", "y"):
        if metrics[axis] < recipe.min_position:
            weak.append(f"{axis} {metrics[axis]:.3f} < {recipe.min_position}")
    if weak:
        raise ToyTeacherTooWeak(
            f"toy teacher at {path} is too weak for an informative world: {', '.join(weak)} (held-out accuracies; "
            f"a student cannot learn left/right or unseen shapes from it). Expected the TeacherRecipe's minimums; "
            f"raise TeacherRecipe.steps (now {recipe.steps}) or use TeacherRecipe.default()"
        )


def pretrain_toy_teacher(
    spec: WorldSpec,
    out_dir: str | os.PathLike,
    recipe: TeacherRecipe | None = None,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> ToyTeacherResult:
    """Pretrain the toy CLIP teacher on single frames of ``spec``'s size and save it as an open_clip ``local-dir:``
    folder at ``out_dir``; reuse the folder when its fingerprint matches. ``progress(step, steps, loss)`` every 25
    steps.

    Raises ToyTeacherTooWeak (a FrosterError) when held-out shape or position accuracy is under the recipe's minimums;
    the weights are kept, so a rerun with the same settings raises the same error at once.
    Uses torch's current thread count; does not change global RNG state.
    """
    import torch
    import torch.nn.functional as F
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    from froster.pipeline.teacher import LOCAL_DIR_WEIGHTS

    recipe = recipe or TeacherRecipe.default()
    out_dir = Path(out_dir)
    fingerprint = _teacher_fingerprint(recipe, seed, spec.size)
    result_path = out_dir / _RESULT_FILE
    if result_path.is_file() and (out_dir / LOCAL_DIR_WEIGHTS).is_file():
        saved = _read_facts(result_path)
        if saved is not None and saved.get("fingerprint") == fingerprint:
            logger.info("reusing toy teacher %s (fingerprint %s)", out_dir, fingerprint)
            _check_guard(saved["metrics"], recipe, out_dir)
            return ToyTeacherResult(
                model=f"local-dir:{out_dir.resolve()}",
                path=out_dir,
                fingerprint=fingerprint,
                reused=True,
                seconds=float(saved["seconds"]),
                metrics=saved["metrics"],
                chance=saved["chance"],
            )
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not result_path.is_file())):
        raise FrosterError(
            f"{out_dir}: expected an empty directory or an earlier toy teacher (with {_RESULT_FILE}), found other "
            f"files; choose another directory"
        )
    if spec.size % toy_clip_config()["vision_cfg"]["patch_size"]:
        raise FrosterError(f"WorldSpec.size {spec.size} must be a multiple of the toy teacher's patch size 8")

    config = toy_clip_config(spec.size)
    t0, cpu0 = time.perf_counter(), time.process_time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**config, init_logit_scale=math.log(recipe.logit_scale))
    tokenizer = SimpleTokenizer(context_length=config["text_cfg"]["context_length"])
    tokens_of = _TokenCache(tokenizer)
    # The token table (49408 x 64, 90% of the weights) gets sparse gradients and SparseAdam: the captions use a few
    # dozen tokens, and a dense AdamW step over the whole table costs as much as the model's forward pass.
    model.token_embedding.sparse = True
    named = [(n, p) for n, p in model.named_parameters() if n != "token_embedding.weight"]
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
    optimizers = [
        torch.optim.AdamW(
            [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}],
            lr=recipe.lr,
            betas=(0.9, 0.98),
            eps=1e-6,
        ),
        torch.optim.SparseAdam([model.token_embedding.weight], lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6),
    ]
    rng = np.random.default_rng([seed, 1])
    noise_bank = rng.standard_normal((512, spec.size, spec.size, 3), dtype=np.float32)  # [K, S, S, 3]

    def make_batch(step: int):
        frac = min(1.0, step / (2 / 3 * recipe.steps))
        aligned = recipe.aligned_start + (recipe.aligned_end - recipe.aligned_start) * frac
        frames, attrs, empty = _teacher_frames(
            rng, recipe.batch, spec.size, recipe.empty_prob, noise_bank, recipe.group, aligned
        )
        texts, cap, cap_empty = _sample_captions(rng, attrs, empty, recipe.full_caption_prob, recipe.template_prob)
        pos = torch.from_numpy(_satisfies(attrs, empty, cap, cap_empty)).float()  # [B, B], diagonal all ones
        return _to_input(frames), tokens_of(texts), pos

    max_log_scale = math.log(100.0)
    model.train()
    loss_value = float("nan")
    # One worker draws the next batch while torch works on this one; it alone uses `rng`, so batches are
    # the same whatever the timing.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(make_batch, 0)
        for step in range(recipe.steps):
            if step < recipe.warmup:
                lr = recipe.lr * (step + 1) / recipe.warmup
            else:
                frac = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
                lr = 0.5 * recipe.lr * (1 + math.cos(math.pi * frac))
            for opt in optimizers:
                for g in opt.param_groups:
                    g["lr"] = lr
            x, tokens, pos = pending.result()  # [B, 3, S, S], [B, L], [B, B]
            if step + 1 < recipe.steps:
                pending = pool.submit(make_batch, step + 1)
            img = F.normalize(model.encode_image(x), dim=-1)  # [B, D]
            txt = F.normalize(_encode_text_trimmed(model, tokens), dim=-1)  # [B, D]
            logits = model.logit_scale.exp() * img @ txt.T  # [B, B]
            # Multi-positive contrastive loss: every caption an image fits is a target (partial captions fit many).
            i2t = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
            t2i = -(pos.T / pos.T.sum(1, keepdim=True) * F.log_softmax(logits.T, dim=1)).sum(1).mean()
            loss = 0.5 * (i2t + t2i)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers:
                opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, max_log_scale)
            loss_value = float(loss.detach())
            if (step + 1) % 25 == 0 or step + 1 == recipe.steps:
                logger.debug("toy teacher step %d/%d loss %.4f", step + 1, recipe.steps, loss_value)
                if progress is not None:
                    progress(step + 1, recipe.steps, loss_value)
    model.token_embedding.sparse = False
    model.eval()
    metrics = evaluate_toy_teacher(model, tokenizer, spec.size, frames=recipe.eval_frames)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    logger.info(
        "toy teacher: %d steps in %.0f s (%.0f s CPU); held-out %s",
        recipe.steps,
        seconds,
        cpu_seconds,
        ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()),
    )

    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    _write_local_dir(model, config, tmp)
    saved = {
        "fingerprint": fingerprint,
        "recipe": asdict(recipe),
        "seed": seed,
        "image_size": spec.size,
        "steps": recipe.steps,
        "final_loss": loss_value,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "threads": torch.get_num_threads(),
        "metrics": metrics,
        "chance": dict(_CHANCE),
        "passed": True,
    }
    try:
        _check_guard(metrics, recipe, out_dir)
    except ToyTeacherTooWeak:
        saved["passed"] = False
        raise
    finally:
        (tmp / _RESULT_FILE).write_text(json.dumps(saved, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out_dir)
    return ToyTeacherResult(
        model=f"local-dir:{out_dir.resolve()}",
        path=out_dir,
        fingerprint=fingerprint,
        reused=False,
        seconds=seconds,
        metrics=metrics,
        chance=dict(_CHANCE),
    )
