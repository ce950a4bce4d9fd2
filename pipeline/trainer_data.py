"""Training data from a feature store: per store row, the pixels of one stored view, rebuilt exactly, with the
teacher's stored frame features of that view and the label.

The student sees exactly what the teacher saw: the view's frame indices, crop box and flip come from the store and the
pixels are rebuilt with ``render_view`` (stage one's own function), so the stored teacher features are the teacher's
output on these very pixels. No further augmentation.

Which view: each row takes one of its V stored views per epoch, ``(offset(seed, row) + epoch) mod V``: a different one
each epoch (all V in turn before any repeats), deterministic in (seed, epoch, row), and a different phase per row so one
epoch mixes the views.

The sampler yields ``(epoch, position)`` keys, so the dataset needs no mutable epoch state and persistent workers see
the right epoch. The Zarr store is opened lazily inside each DataLoader worker (never carried across a fork or pickle).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from froster.pipeline.errors import FrosterError


def _mix(*values: int) -> int:
    """A stable 64-bit hash of a few integers (Python's ``hash`` is salted per process for strings, not stable)."""
    h = hashlib.blake2b(digest_size=8)
    for v in values:
        h.update(int(v).to_bytes(8, "little", signed=True))
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def view_for(seed: int, epoch: int, row: int, num_views: int) -> int:
    """The stored view row ``row`` uses in ``epoch``: ``(offset(seed, row) + epoch) mod V``."""
    return int((_mix(seed, row, 0x766965) + epoch) % num_views)


def epoch_order(num_items: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of ``num_items`` positions for ``epoch``: a seeded permutation, the same on every run."""
    g = torch.Generator().manual_seed(_mix(seed, epoch, 0x6F72646572))
    return torch.randperm(num_items, generator=g).tolist()


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, position)`` keys for epochs ``start_epoch..``, in each epoch's seeded order.

    ``skip_batches`` drops the first batches of the first epoch (a run resumed mid-epoch). The last partial batch is
    dropped (as the release's training loader), so every step sees ``batch_size`` clips.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, epoch: int, skip_batches: int = 0):
        self.num_items, self.batch_size, self.seed, self.epoch = num_items, batch_size, seed, epoch
        self.skip_batches = skip_batches

    def __len__(self) -> int:
        return max(0, self.num_items // self.batch_size - self.skip_batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(self.num_items, self.seed, self.epoch)
        n_batches = self.num_items // self.batch_size
        for b in range(self.skip_batches, n_batches):
            yield [(self.epoch, i) for i in order[b * self.batch_size : (b + 1) * self.batch_size]]


@dataclass(frozen=True)
class TrainItem:
    """What the dataset needs per training item: the store row, its label in the run's vocabulary, its video file."""

    row: int
    label: int
    path: str


class StoreViews(Dataset):
    """Per item: ``pixels`` float32 [T, 3, S, S], ``teacher`` float32 [T, D] (the stored, normalised teacher frame
    features of the same view; absent when ``with_features`` is False), ``label``, ``row``, ``view`` (int64).

    Keys are ``(epoch, position)`` tuples (see ``EpochBatchSampler``; the view is ``view_for(seed, epoch, row, V)``)
    or ``(epoch, position, view)`` with an explicit view (evaluation over every view); ``position`` indexes ``items``.
    """

    def __init__(
        self,
        store_path: str | os.PathLike,
        items: Sequence[TrainItem],
        *,
        seed: int,
        num_views: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        with_features: bool = True,
    ):
        self.store_path = str(store_path)
        self.items = list(items)
        self.seed, self.num_views = int(seed), int(num_views)
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)
        self.with_features = with_features
        self._store = None  # opened on first use, in the process that reads (a DataLoader worker)

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"] = None
        return state

    def close(self) -> None:
        self._store = None

    def _open(self):
        if self._store is None:
            from froster.pipeline.store import FeatureStore

            self._store = FeatureStore.open(self.store_path)
        return self._store

    def __getitem__(self, key: tuple[int, ...]) -> dict:
        from froster.pipeline.video import read_frames
        from froster.pipeline.views import render_view

        epoch, position = key[0], key[1]
        item = self.items[position]
        store = self._open()
        v = int(key[2]) if len(key) > 2 else view_for(self.seed, epoch, item.row, self.num_views)
        frame_index = np.asarray(store.frame_index[item.row, v])  # [T]
        crop = np.asarray(store.crop[item.row, v])  # [4]
        flip = bool(np.asarray(store.flip[item.row, v]))
        frames = read_frames(item.path, frame_index)  # uint8 [T, H, W, 3]
        pixels = render_view(frames, crop, flip, self.image_size, self.mean, self.std)  # [T, 3, S, S]
        out = {
            "pixels": pixels,
            "label": torch.tensor(item.label, dtype=torch.int64),
            "row": torch.tensor(item.row, dtype=torch.int64),
            "view": torch.tensor(v, dtype=torch.int64),
        }
        if self.with_features:
            feats = np.asarray(store.video_features[item.row, v])  # fp16 [T, D]
            out["teacher"] = torch.from_numpy(feats.astype(np.float32))  # [T, D]
        return out


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: drop any store handle a forked worker inherited, so each opens its own."""
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, StoreViews):
        info.dataset.close()


def video_paths(relative: Sequence[str], video_root: str | os.PathLike) -> list[str]:
    """Absolute paths of the manifest's relative ``path`` column under ``video_root``."""
    root = Path(video_root)
    return [str(root / p) for p in relative]


def check_videos(
    paths: Sequence[str], sizes: Sequence[int], mtimes: Sequence[float], store_path: str | os.PathLike
) -> None:
    """Refuse when a video changed since the store was made: its size or mtime differs from the manifest's.

    Raises FrosterError naming the first changed or missing file (and how many more), the store, and what differs.
    """
    problems = []
    for path, size, mtime in zip(paths, sizes, mtimes):
        try:
            st = os.stat(path)
        except OSError:
            problems.append(f"{path}: missing (the store recorded {size} bytes; --video-root points at moved videos)")
            continue
        if st.st_size != size:
            problems.append(f"{path}: size {st.st_size} bytes, the store recorded {size}")
        elif abs(st.st_mtime - mtime) > 1e-3:
            problems.append(f"{path}: modified time {st.st_mtime:.3f}, the store recorded {mtime:.3f}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise FrosterError(
            f"{problems[0]}{more}: the video changed since {store_path} was made, so its stored teacher "
            "features no longer match its pixels; re-run extract-teacher"
        )
