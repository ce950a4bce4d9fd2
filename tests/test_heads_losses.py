"""Heads and the FROSTER loss against values worked out by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from froster.pipeline.errors import FrosterError
from froster.pipeline.heads import IdentityHead, MLPHead, ResidualHead, create_head
from froster.pipeline.losses import feature_distance, froster_loss, video_logits
from froster.pipeline.text import class_embeddings

SQRT2 = math.sqrt(2.0)


def gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / SQRT2))


def set_identity_weights(head: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        head.fc1.weight.copy_(torch.eye(head.fc1.weight.shape[0]))
        head.fc2.weight.copy_(torch.eye(head.fc2.weight.shape[0]))
    return head


def test_residual_head_is_identity_at_init():
    head = ResidualHead(16)
    z = torch.randn(5, 3, 16)
    assert torch.equal(head(z), z)
    assert head.fc1.weight.abs().sum() > 0 and head.fc2.weight.abs().sum() == 0
    assert head.fc1.bias is None and head.fc2.bias is None
    assert head.fc1.weight.std().item() == pytest.approx(math.sqrt(2.0 / 16), rel=0.25)  # Kaiming-normal, fan_in 16
    assert not torch.equal(ResidualHead(16, zero_init=False)(z), z)  # Table 5's ablation starts elsewhere


def test_heads_by_hand():
    z = torch.tensor([[1.0, -2.0]])
    rfd = set_identity_weights(ResidualHead(2, alpha=0.1))
    mlp = set_identity_weights(MLPHead(2))
    # W1 = W2 = I: rfd = z + 0.1 * gelu(z); fd-mlp = gelu(z); fd = z.
    torch.testing.assert_close(rfd(z), torch.tensor([[1.0 + 0.1 * gelu(1.0), -2.0 + 0.1 * gelu(-2.0)]]))
    torch.testing.assert_close(mlp(z), torch.tensor([[gelu(1.0), gelu(-2.0)]]))
    torch.testing.assert_close(IdentityHead()(z), z)


def test_create_head_kinds():
    assert isinstance(create_head("rfd", 4), ResidualHead)
    assert create_head("rfd", 4, alpha=0.5).alpha == 0.5
    assert isinstance(create_head("fd-mlp", 4), MLPHead)
    assert isinstance(create_head("fd", 4), IdentityHead)
    assert isinstance(create_head("none", 4), IdentityHead)
    with pytest.raises(FrosterError, match="unknown distillation head 'mlp'; known: none, fd, fd-mlp, rfd"):
        create_head("mlp", 4)


def test_distances_by_hand():
    pred = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # Rows: cos 1 and 0 -> mean(1 - cos) = 0.5. Norms of the differences 0 and sqrt(1 + 4) -> mean sqrt5 / 2.
    assert feature_distance(pred, target, "cosine").item() == pytest.approx(0.5)
    assert feature_distance(pred, target, "l2").item() == pytest.approx(math.sqrt(5) / 2)
    with pytest.raises(FrosterError, match="unknown distillation distance"):
        feature_distance(pred, target, "kl")


# One batch worked out by hand: B = 1 video of T = 2 frames, K = 2 classes, D = 2.
LOGITS = torch.tensor([[0.0, math.log(3.0)]])  # softmax [1/4, 3/4]: CE for label 0 = ln 4
LABELS = torch.tensor([0])
STUDENT_FRAMES = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [B, T, D], normalised
TEACHER_FRAMES = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # frame 0 agrees, frame 1 is orthogonal
STUDENT_CLASSES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # [K, D]
TEACHER_CLASSES = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # class 0 orthogonal, class 1 agrees
CE = math.log(4.0)


def loss(distill="rfd", distill_on="both", distance="cosine", beta=2.0, vision_head=None, text_head=None):
    return froster_loss(
        LOGITS, LABELS, STUDENT_FRAMES, TEACHER_FRAMES, STUDENT_CLASSES, TEACHER_CLASSES,
        vision_head or create_head(distill, 2), text_head or create_head(distill, 2),
        beta=beta, distance=distance, distill_on=distill_on, distill=distill,
    )


def expect(terms, ce, fd_vision, fd_text, beta=2.0):
    assert terms.keys() == {"ce", "fd_vision", "fd_text", "total"}
    assert terms["ce"].item() == pytest.approx(ce)
    assert terms["fd_vision"].item() == pytest.approx(fd_vision)
    assert terms["fd_text"].item() == pytest.approx(fd_text)
    assert terms["total"].item() == pytest.approx(ce + beta * (fd_vision + fd_text))


@pytest.mark.parametrize("distill", ["fd", "rfd"])  # rfd with W2 = 0 is fd exactly
def test_loss_fd_and_rfd_at_init_by_hand(distill):
    # Cosine: frames 1 - (1, 0) -> mean 0.5; classes 1 - (0, 1) -> mean 0.5.
    expect(loss(distill), CE, 0.5, 0.5)
    # L2: frame differences (0, 0), (-1, 1) -> norms 0, sqrt2 -> mean sqrt2/2; classes the same.
    expect(loss(distill, distance="l2"), CE, SQRT2 / 2, SQRT2 / 2)


def test_loss_none_distils_nothing_but_logs_zeros():
    terms = loss("none")
    expect(terms, CE, 0.0, 0.0)
    assert terms["total"].item() == pytest.approx(CE)


def test_loss_distill_on_vision_or_text():
    expect(loss(distill_on="vision"), CE, 0.5, 0.0)
    expect(loss(distill_on="text"), CE, 0.0, 0.5)
    expect(loss(distill_on="vision", distance="l2"), CE, SQRT2 / 2, 0.0)


def test_loss_fd_mlp_by_hand():
    # W1 = W2 = I: h(z) = gelu(z). Frames: gelu([1, 0]) = [g1, 0] vs [1, 0] -> cos 1; gelu([0, 1]) = [0, g1] vs
    # [1, 0] -> cos 0. Classes: [g1, 0] vs [0, 1] -> 0; [0, g1] vs [0, 1] -> 1. Cosine terms 0.5 and 0.5.
    head = lambda: set_identity_weights(MLPHead(2))  # noqa: E731
    expect(loss("fd-mlp", vision_head=head(), text_head=head()), CE, 0.5, 0.5)
    # L2: frame 0 |g1 - 1|, frame 1 sqrt(1 + g1^2); classes the same two values in the other order.
    g1 = gelu(1.0)
    fd = (abs(g1 - 1.0) + math.sqrt(1.0 + g1 * g1)) / 2
    expect(loss("fd-mlp", distance="l2", vision_head=head(), text_head=head()), CE, fd, fd)


def test_loss_rfd_trained_head_by_hand():
    # W1 = W2 = I, alpha 0.1: h(z) = z + 0.1 gelu(z); student [1, 0] -> [1 + 0.1 g1, 0], [0, 1] -> [0, 1 + 0.1 g1].
    # Cosine is unchanged by the scale (0.5, 0.5); L2 sees it: frame 0 0.1 g1, frame 1 sqrt(1 + (1 + 0.1 g1)^2).
    head = lambda: set_identity_weights(ResidualHead(2, alpha=0.1))  # noqa: E731
    expect(loss("rfd", vision_head=head(), text_head=head()), CE, 0.5, 0.5)
    a = 1.0 + 0.1 * gelu(1.0)
    fd = (0.1 * gelu(1.0) + math.sqrt(1.0 + a * a)) / 2
    expect(loss("rfd", distance="l2", vision_head=head(), text_head=head()), CE, fd, fd)


def test_beta_scales_only_the_distillation():
    for beta in (0.0, 1.0, 3.5):
        expect(loss(beta=beta), CE, 0.5, 0.5, beta=beta)


def test_loss_refuses_unknown_settings():
    with pytest.raises(FrosterError, match="unknown distillation 'rfd2'"):
        loss("rfd2", vision_head=IdentityHead(), text_head=IdentityHead())
    with pytest.raises(FrosterError, match="unknown distill_on 'audio'"):
        loss(distill_on="audio")
    with pytest.raises(FrosterError, match="unknown distillation distance 'mse'"):
        loss(distance="mse")


def test_loss_takes_float16_teacher_targets_and_gives_finite_gradients_at_zero_distance():
    student = STUDENT_FRAMES.clone().requires_grad_(True)
    classes = STUDENT_CLASSES.clone().requires_grad_(True)
    for distance in ("cosine", "l2"):
        terms = froster_loss(
            LOGITS, LABELS, student, student.detach().half(), classes, classes.detach().half(),
            create_head("rfd", 2), create_head("rfd", 2), distance=distance,
        )
        assert terms["fd_vision"].item() == pytest.approx(0.0, abs=1e-6)
        terms["total"].backward()
        assert torch.isfinite(student.grad).all() and torch.isfinite(classes.grad).all()
        student.grad = classes.grad = None


def test_text_target_construction_by_hand():
    # Two prompts (templated, bare) per class, student and teacher built the same way (class_embeddings).
    student_prompts = torch.tensor([[[2.0, 0.0]], [[0.0, 3.0]]])  # [P=2, K=1, D=2] -> class [1, 1]/sqrt2
    teacher_prompts = torch.tensor([[[0.0, 1.0]], [[0.0, 5.0]]])  # -> class [0, 1]
    student = class_embeddings(student_prompts)
    teacher = class_embeddings(teacher_prompts)
    torch.testing.assert_close(student, torch.tensor([[1 / SQRT2, 1 / SQRT2]]))
    terms = froster_loss(
        torch.zeros(1, 1), torch.tensor([0]), STUDENT_FRAMES, STUDENT_FRAMES, student, teacher,
        IdentityHead(), IdentityHead(), distill="fd",
    )
    # cos([1, 1]/sqrt2, [0, 1]) = 1/sqrt2; CE over one class is 0.
    expect(terms, 0.0, 0.0, 1.0 - 1.0 / SQRT2)


def test_video_logits_by_hand():
    frames = torch.tensor([[[2.0, 0.0], [0.0, 5.0]]])  # [B=1, T=2, D=2]; normalised [1, 0], [0, 1]; mean [.5, .5]
    classes = torch.tensor([[3.0, 0.0], [-1.0, -1.0]])  # normalised [1, 0], [-1, -1]/sqrt2
    scale = torch.tensor(math.log(10.0))  # exp -> 10
    # Release: 10 * [.5, .5] . [1, 0] = 5 and 10 * [.5, .5] . [-1, -1]/sqrt2 = -10/sqrt2 (= mean of per-frame logits).
    expected = torch.tensor([[5.0, -10.0 / SQRT2]])
    torch.testing.assert_close(video_logits(frames, classes, scale), expected)
    per_frame = 10.0 * F.normalize(frames, dim=-1) @ F.normalize(classes, dim=-1).t()  # [B, T, K]
    torch.testing.assert_close(video_logits(frames, classes, scale), per_frame.mean(dim=1))
    # Re-normalised video embedding [1, 1]/sqrt2: logits 10/sqrt2 and -10.
    renormalized = video_logits(frames, classes, scale, renormalize=True)
    torch.testing.assert_close(renormalized, torch.tensor([[10 / SQRT2, -10.0]]))
