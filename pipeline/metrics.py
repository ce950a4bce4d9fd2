"""Metrics: top-k accuracy from logits, the harmonic mean of base and novel accuracy, mean +- std over splits, the
ensemble of two models' scores, class classifiers from prompt embeddings, and dataset distances between vocabularies.

Accuracies are percentages (0..100), as the paper's tables print them. Everything here is NumPy on the CPU: the inputs
are [N, K] score matrices and [K, D] class embeddings, small next to the video work that produced them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

# The std printed as "mean +- std" over splits. The paper does not say which; a protocol file names it
# ([aggregation] ddof, pipeline/protocols.py, default 0) and every table says which was used. Population std
# (ddof=0, numpy's default) is the default here too, so the two agree when nothing is said.
STD_DDOF = 0


def std_name(ddof: int) -> str:
    """How tables name the std of ``ddof``."""
    return {0: "population std (ddof=0)", 1: "sample std (ddof=1)"}.get(ddof, f"std with ddof={ddof}")


# ---- accuracy ----


def _check_logits(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, K], got shape {logits.shape}")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), found {labels.min()}..{labels.max()}")
    return logits, labels


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first; ties go to the lower class index. [N, min(k, K)]."""
    scores = np.asarray(scores, dtype=np.float64)
    k = min(int(k), scores.shape[1])
    # A stable sort of the negated scores keeps equal scores in class order, so results never depend on the platform.
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Whether each row's true label is among its ``k`` highest logits. ``k`` larger than the number of classes K
    counts as K (every row is then correct). Returns bool [N]."""
    logits, labels = _check_logits(logits, labels)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top = topk_indices(logits, k)  # [N, k]
    return (top == labels[:, None]).any(axis=1)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy in percent for each k in ``ks`` over the N rows of ``logits [N, K]`` with ``labels [N]``.
    An empty set gives NaN (there is nothing to be right about)."""
    logits, labels = _check_logits(logits, labels)
    if labels.size == 0:
        return {int(k): float("nan") for k in ks}
    return {int(k): 100.0 * float(topk_correct(logits, labels, k).mean()) for k in ks}


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2 b n / (b + n), the paper's Table 1 summary of base and novel accuracy; 0 when both are 0."""
    if base < 0 or novel < 0:
        raise ValueError(f"accuracies must be >= 0, got base={base}, novel={novel}")
    if base + novel == 0:
        return 0.0
    return 2.0 * base * novel / (base + novel)


@dataclass(frozen=True)
class Summary:
    """Mean and std of one metric over ``n`` values (splits or runs); ``std`` is NaN for a single value."""

    mean: float
    std: float
    n: int


def mean_std(values: Sequence[float], ddof: int = STD_DDOF) -> Summary:
    """Mean and std over splits, NaN values skipped. ``ddof=0`` (default) is the population std, ``ddof=1`` the sample
    std. A single value has std NaN (the tables then print the value alone), whatever ``ddof``."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return Summary(float("nan"), float("nan"), 0)
    std = float(np.std(x, ddof=ddof)) if x.size > max(1, ddof) else float("nan")
    return Summary(float(x.mean()), std, int(x.size))


# ---- classifiers and scores ----


def _normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def class_classifier(prompt_features: np.ndarray) -> np.ndarray:
    """The class classifier from prompt embeddings ``[P, K, D]`` (P prompts per class): per class, the L2-normalised
    mean over its P prompts of the L2-normalised embeddings. Returns float32 [K, D]."""
    x = np.asarray(prompt_features, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"prompt features must be [P, K, D], got shape {x.shape}")
    return _normalize(_normalize(x).mean(axis=0)).astype(np.float32)  # [K, D]


def pool_clips(frame_features: np.ndarray) -> np.ndarray:
    """Per-video embeddings from per-frame embeddings ``[N, V, T, D]`` (V clips of T frames): each frame
    L2-normalised, averaged over the T frames of a clip, summed over the V clips. Returns float64 [N, D] (not
    normalised: its dot product with a unit class vector is the video's score, see ``video_scores``)."""
    f = np.asarray(frame_features, dtype=np.float64)
    if f.ndim != 4:
        raise ValueError(f"frame features must be [N, V, T, D], got shape {f.shape}")
    return _normalize(f).mean(axis=2).sum(axis=1)  # [N, D]


def video_scores(pooled: np.ndarray, classifier: np.ndarray) -> np.ndarray:
    """Cosine scores ``[N, K]`` of videos against classes, from ``pool_clips`` output ``[N, D]`` and a classifier
    ``[K, D]`` (normalised here).

    This is, per clip, the mean over frames of cos(frame, class), summed over the clips: the release averages the
    per-frame logits of a clip and its 3x1 test fusion sums the clips' logits. Mean and sum are linear, so pooling
    first gives the same numbers without an [N, V, T, K] tensor. Values lie in [-V, V].
    """
    p = np.asarray(pooled, dtype=np.float64)
    w = _normalize(np.asarray(classifier, dtype=np.float64))  # [K, D]
    if p.ndim != 2 or w.ndim != 2 or p.shape[1] != w.shape[1]:
        raise ValueError(f"pooled features [N, D] and classifier [K, D] must share D, got {p.shape} and {w.shape}")
    return p @ w.T  # [N, K]


def ensemble_scores(scores_a: np.ndarray, scores_b: np.ndarray) -> np.ndarray:
    """The paper's Fig. 1 ensemble: the sum of two models' cosine-similarity scores ``[N, K]`` for the same videos
    and classes. We sum cosines, not logit_scale * cos, so the two models weigh equally whatever their learned
    temperatures (the frozen teacher's is CLIP's 100; the tuned model's drifts in training)."""
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"ensemble needs scores of one shape, got {a.shape} and {b.shape}")
    return a + b


# ---- dataset distance (the paper's Fig. 1 and 5) ----


@dataclass(frozen=True)
class ClassPair:
    """One (target class, source class) pair and the cosine similarity of their text embeddings."""

    target: int
    source: int
    similarity: float


@dataclass(frozen=True)
class DatasetDistance:
    """How close a target vocabulary is to a source vocabulary, from L2-normalised text embeddings.

    - ``mean_max_similarity``: the authors' measure (``dataset_distance/cal_sim.py``): the mean over target classes of
      the highest cosine similarity to any source class. A similarity, directed target -> source: higher is closer.
      ``max_max_similarity`` / ``min_max_similarity`` are the largest and smallest of those per-target maxima.
    - ``hausdorff``: the symmetric Hausdorff distance with the cosine distance d = 1 - cos:
      max(max_t min_s d, max_s min_t d). ``hausdorff_target_to_source`` and ``hausdorff_source_to_target`` are the
      two directed terms. A distance: lower is closer; 0 when every class has an exact match on the other side.
    - ``closest_pairs``: the most similar (target, source) pairs, best first.
    """

    mean_max_similarity: float
    max_max_similarity: float
    min_max_similarity: float
    hausdorff: float
    hausdorff_target_to_source: float
    hausdorff_source_to_target: float
    closest_pairs: tuple[ClassPair, ...]
    per_target_max: tuple[float, ...]  # by target class
    per_target_nearest: tuple[int, ...]  # source index of each target class's nearest source class


def similarity_matrix(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Cosine similarity ``[Kt, Ks]`` between target ``[Kt, D]`` and source ``[Ks, D]`` embeddings (normalised
    here)."""
    t = np.asarray(target, dtype=np.float64)
    s = np.asarray(source, dtype=np.float64)
    if t.ndim != 2 or s.ndim != 2 or t.shape[1] != s.shape[1]:
        raise ValueError(f"embeddings must be [K, D] with one D, got target {t.shape} and source {s.shape}")
    if t.shape[0] == 0 or s.shape[0] == 0:
        raise ValueError(f"both vocabularies need at least one class, got {t.shape[0]} target, {s.shape[0]} source")
    return _normalize(t) @ _normalize(s).T


def closest_pairs(similarity: np.ndarray, k: int = 5) -> tuple[ClassPair, ...]:
    """The ``k`` (target, source) pairs with the highest similarity in ``similarity [Kt, Ks]``, best first; ties go
    to the lower target index, then the lower source index."""
    sim = np.asarray(similarity, dtype=np.float64)
    flat = np.argsort(-sim.reshape(-1), kind="stable")[: max(0, int(k))]
    rows, cols = np.unravel_index(flat, sim.shape)
    return tuple(ClassPair(int(r), int(c), float(sim[r, c])) for r, c in zip(rows, cols))


def dataset_distance(target: np.ndarray, source: np.ndarray, num_pairs: int = 5) -> DatasetDistance:
    """The distances between a target vocabulary ``[Kt, D]`` and a source vocabulary ``[Ks, D]`` (see
    DatasetDistance)."""
    sim = similarity_matrix(target, source)  # [Kt, Ks]
    best = sim.max(axis=1)  # [Kt]
    dist = 1.0 - sim
    t_to_s = float(dist.min(axis=1).max())  # the worst-matched target class
    s_to_t = float(dist.min(axis=0).max())  # the worst-matched source class
    return DatasetDistance(
        mean_max_similarity=float(best.mean()),
        max_max_similarity=float(best.max()),
        min_max_similarity=float(best.min()),
        hausdorff=max(t_to_s, s_to_t),
        hausdorff_target_to_source=t_to_s,
        hausdorff_source_to_target=s_to_t,
        closest_pairs=closest_pairs(sim, num_pairs),
        per_target_max=tuple(float(x) for x in best),
        per_target_nearest=tuple(int(x) for x in sim.argmax(axis=1)),
    )
