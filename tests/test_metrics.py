"""pipeline/metrics.py on hand-made logits and embeddings: every expected value is worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from froster.pipeline import metrics


# 4 videos, 6 classes. Row ranks (best first):
#   v0: 0 1 2 3 4 5   label 0 -> top-1 yes
#   v1: 5 4 3 2 1 0   label 0 -> top-1 no, top-5 no (0 is 6th)
#   v2: 2 0 1 ...     label 1 -> top-1 no, top-5 yes
#   v3: 3 ...         label 3 -> top-1 yes
LOGITS = np.array(
    [
        [6, 5, 4, 3, 2, 1],
        [1, 2, 3, 4, 5, 6],
        [5, 4, 6, 1, 2, 3],
        [0, 0, 0, 9, 0, 0],
    ],
    dtype=np.float32,
)
LABELS = np.array([0, 0, 1, 3])


def test_topk_accuracy_by_hand():
    acc = metrics.topk_accuracy(LOGITS, LABELS, ks=(1, 5))
    assert acc[1] == pytest.approx(50.0)  # v0, v3
    assert acc[5] == pytest.approx(75.0)  # v0, v2, v3
    np.testing.assert_array_equal(metrics.topk_correct(LOGITS, LABELS, 1), [True, False, False, True])
    np.testing.assert_array_equal(metrics.topk_correct(LOGITS, LABELS, 2), [True, False, False, True])
    np.testing.assert_array_equal(metrics.topk_correct(LOGITS, LABELS, 3), [True, False, True, True])


def test_topk_ties_go_to_lower_class_and_k_is_clipped():
    # v3 has five tied zeros: the lower class indices come first.
    np.testing.assert_array_equal(metrics.topk_indices(LOGITS[3:], 3), [[3, 0, 1]])
    # k beyond the number of classes counts as all classes: every row is right.
    assert metrics.topk_accuracy(LOGITS, LABELS, ks=(10,))[10] == pytest.approx(100.0)
    assert math.isnan(metrics.topk_accuracy(np.zeros((0, 3)), np.zeros(0, int))[1])


def test_topk_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        metrics.topk_accuracy(LOGITS, np.array([0, 0, 1, 6]))
    with pytest.raises(ValueError, match="rows"):
        metrics.topk_accuracy(LOGITS, np.array([0, 0]))


def test_harmonic_mean():
    assert metrics.harmonic_mean(80.0, 40.0) == pytest.approx(2 * 80 * 40 / 120)  # 53.33
    assert metrics.harmonic_mean(77.8, 64.3) == pytest.approx(70.4, abs=0.05)  # the paper's FROSTER K400 row
    assert metrics.harmonic_mean(50.0, 50.0) == pytest.approx(50.0)
    assert metrics.harmonic_mean(0.0, 0.0) == 0.0
    with pytest.raises(ValueError):
        metrics.harmonic_mean(-1.0, 3.0)


def test_mean_std_sample_and_population():
    s = metrics.mean_std([70.0, 72.0, 74.0], ddof=1)
    assert s.mean == pytest.approx(72.0)
    assert s.std == pytest.approx(2.0)  # sample: sqrt((4 + 0 + 4) / 2)
    assert s.n == 3
    p = metrics.mean_std([70.0, 72.0, 74.0])
    assert p.std == pytest.approx(math.sqrt(8 / 3))  # population, the default (as protocols' ddof = 0)
    assert "population" in metrics.std_name(0) and "sample" in metrics.std_name(1)
    one = metrics.mean_std([74.2])
    assert one.mean == pytest.approx(74.2) and math.isnan(one.std) and one.n == 1
    assert metrics.mean_std([float("nan"), 1.0, 3.0]).mean == pytest.approx(2.0)
    assert metrics.mean_std([]).n == 0


def test_class_classifier_is_normalised_mean_of_normalised_prompts():
    # 2 prompts x 2 classes x D=2; prompt lengths differ so that normalising first matters.
    x = np.array([[[3.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 5.0]]])  # [P, K, D]
    w = metrics.class_classifier(x)
    s = 1 / math.sqrt(2)
    np.testing.assert_allclose(w, [[s, s], [0.0, 1.0]], atol=1e-6)


def test_video_scores_pool_frames_then_sum_clips():
    # 1 video, V=2 clips, T=2 frames, D=2; classes e0 and e1.
    f = np.array([[[[2.0, 0.0], [0.0, 3.0]], [[1.0, 0.0], [1.0, 0.0]]]])  # [1, 2, 2, 2]
    w = np.array([[1.0, 0.0], [0.0, 2.0]])
    pooled = metrics.pool_clips(f)
    np.testing.assert_allclose(pooled, [[1.5, 0.5]])  # clip0 mean (0.5, 0.5) + clip1 mean (1, 0)
    scores = metrics.video_scores(pooled, w)
    # per-frame cosines: clip0 -> class0 (1, 0), class1 (0, 1); clip1 -> class0 (1, 1), class1 (0, 0)
    np.testing.assert_allclose(scores, [[0.5 + 1.0, 0.5 + 0.0]])


def test_ensemble_is_sum_of_cosine_scores():
    teacher = np.array([[0.30, 0.20, 0.10], [0.10, 0.25, 0.20]])
    tuned = np.array([[0.05, 0.30, 0.10], [0.10, 0.10, 0.30]])
    ens = metrics.ensemble_scores(teacher, tuned)
    np.testing.assert_allclose(ens, [[0.35, 0.50, 0.20], [0.20, 0.35, 0.50]])
    labels = np.array([1, 1])
    # teacher: v0 wrong (0), v1 right (1); tuned: v0 right, v1 wrong (2); ensemble: v0 right, v1 wrong (2)
    assert metrics.topk_accuracy(teacher, labels, (1,))[1] == 50.0
    assert metrics.topk_accuracy(tuned, labels, (1,))[1] == 50.0
    np.testing.assert_array_equal(metrics.topk_indices(ens, 1)[:, 0], [1, 2])
    with pytest.raises(ValueError, match="shape"):
        metrics.ensemble_scores(teacher, tuned[:1])


def test_dataset_distance_by_hand():
    # source: e0, e1 (D=3). target: e0 (exact), (e1+e2)/sqrt2 (cos 0.707 to e1), e2 (orthogonal to both).
    source = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    target = np.array([[5.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    d = metrics.dataset_distance(target, source, num_pairs=5)
    s = 1 / math.sqrt(2)
    assert d.per_target_max == pytest.approx((1.0, s, 0.0))
    assert d.per_target_nearest[:2] == (0, 1)
    assert d.mean_max_similarity == pytest.approx((1.0 + s + 0.0) / 3)
    assert d.max_max_similarity == pytest.approx(1.0)
    assert d.min_max_similarity == pytest.approx(0.0)
    # target -> source: worst target e2 has distance 1; source -> target: e0 matched exactly, e1 at 1 - s.
    assert d.hausdorff_target_to_source == pytest.approx(1.0)
    assert d.hausdorff_source_to_target == pytest.approx(1 - s)
    assert d.hausdorff == pytest.approx(1.0)
    # pairs by similarity: (0,0)=1, (1,1)=s, then the four zeros in (target, source) order.
    pairs = [(p.target, p.source) for p in d.closest_pairs]
    assert pairs == [(0, 0), (1, 1), (0, 1), (1, 0), (2, 0)]
    assert d.closest_pairs[1].similarity == pytest.approx(s)


def test_dataset_distance_identical_vocabularies_are_at_distance_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 16))
    d = metrics.dataset_distance(x, x)
    assert d.mean_max_similarity == pytest.approx(1.0)
    assert d.hausdorff == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="D"):
        metrics.dataset_distance(x, x[:, :8])
