"""Students against open_clip: the frame-wise CLIP, VCLIP's neighbour attention and its edges, the factory."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch

from froster.pipeline.errors import FrosterError
from froster.pipeline.students import (
    Student,
    _vclip_block,
    create_student,
    list_students,
    neighbour_attention,
)
from froster.pipeline.text import encode_text_trimmed

TINY_MODEL = "froster-test-tiny"  # registered with open_clip by tests/conftest.py
SIZE = 32  # the tiny model's image size


@pytest.fixture
def clip_model():
    return open_clip.create_model(TINY_MODEL).eval()


def frames(B: int, T: int) -> torch.Tensor:
    return torch.randn(B, T, 3, SIZE, SIZE)  # [B, T, 3, H, W]


def test_factory_lists_and_refuses(clip_model):
    assert list_students() == ["clip", "vclip"]
    with pytest.raises(FrosterError, match="unknown student 'timesformer'; known students: clip, vclip"):
        create_student("timesformer", clip_model, 8)
    with pytest.raises(FrosterError, match="unknown option.*edge"):
        create_student("clip", clip_model, 8, edge="mask")
    with pytest.raises(FrosterError, match="edge must be one of zero, mask"):
        create_student("vclip", clip_model, 8, edge="reflect")
    with pytest.raises(FrosterError, match="num_frames"):
        create_student("clip", clip_model, 0)
    student = create_student("clip", clip_model, 2)
    with pytest.raises(FrosterError, match=r"expects frames \[B, 2, 3, H, W\], found shape \(1, 3, 3, 32, 32\)"):
        student.encode_frames(frames(1, 3))


@pytest.mark.parametrize("name", ["clip", "vclip"])
def test_student_trains_everything_and_shares_logit_scale(clip_model, name):
    clip_model.requires_grad_(False)  # as a frozen teacher would be: the student turns everything back on
    student = create_student(name, clip_model, 2)
    assert isinstance(student, Student)
    assert all(p.requires_grad for p in student.parameters())
    assert student.logit_scale is clip_model.logit_scale
    assert student.logit_scale.ndim == 0


def test_clip_student_is_encode_image_per_frame(clip_model):
    student = create_student("clip", clip_model, 3)
    x = frames(2, 3)
    with torch.no_grad():
        got = student.encode_frames(x)  # [B, T, D]
        expected = clip_model.encode_image(x.flatten(0, 1)).reshape(2, 3, -1)
    assert got.shape == (2, 3, 32)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_student_text_is_the_exact_text_forward(clip_model):
    student = create_student("vclip", clip_model, 1)
    tokens = open_clip.get_tokenizer(TINY_MODEL)(["abseiling", "a video of a person doing abseiling."])
    with torch.no_grad():
        torch.testing.assert_close(student.encode_text(tokens), encode_text_trimmed(clip_model, tokens))
        torch.testing.assert_close(student.encode_text(tokens), clip_model.encode_text(tokens), atol=1e-5, rtol=0)


def test_vclip_single_frame_masked_is_encode_image(clip_model):
    student = create_student("vclip", clip_model, 1, edge="mask")
    x = frames(3, 1)
    with torch.no_grad():
        got = student.encode_frames(x)[:, 0]
        expected = clip_model.encode_image(x[:, 0])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_vclip_identical_frames_masked_is_encode_image(clip_model):
    # Attending to three identical copies of a frame's tokens is attending to one copy.
    student = create_student("vclip", clip_model, 4, edge="mask")
    x = frames(2, 1).expand(2, 4, 3, SIZE, SIZE)
    with torch.no_grad():
        got = student.encode_frames(x)  # [B, T, D]
        expected = clip_model.encode_image(x[:, 0])  # [B, D]
    torch.testing.assert_close(got, expected[:, None].expand_as(got), atol=1e-5, rtol=0)


def test_vclip_zero_edge_dilutes_only_edge_frames_in_one_layer(clip_model):
    # One block on identical frames: interior frames see three real copies (= plain attention); the first and the
    # last frame see two copies and a zero block, which differs. Deeper layers carry the edge change inward.
    block = clip_model.visual.transformer.resblocks[0]
    x = torch.randn(1, 17, 64).expand(4, 17, 64)  # [B*T, N, W], B=1, T=4, identical frames
    with torch.no_grad():
        plain = block(x)
        zero = _vclip_block(block, x, num_frames=4, edge="zero")
        masked = _vclip_block(block, x, num_frames=4, edge="mask")
    torch.testing.assert_close(masked, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(zero[1:3], plain[1:3], atol=1e-5, rtol=0)
    assert (zero[[0, 3]] - plain[[0, 3]]).abs().max() > 1e-3


def test_neighbour_attention_by_hand():
    # One clip of T=3 frames, one head, one token per frame, head dim 1 (scale 1/sqrt(1) = 1).
    # q = 1 everywhere, keys ln2, ln3, ln5 so the exp(logits) are 2, 3, 5; values 10, 20, 30.
    q = torch.ones(3, 1, 1, 1)
    k = torch.tensor([math.log(2), math.log(3), math.log(5)]).reshape(3, 1, 1, 1)
    v = torch.tensor([10.0, 20.0, 30.0]).reshape(3, 1, 1, 1)
    zero = neighbour_attention(q, k, v, num_frames=3, edge="zero").flatten()
    masked = neighbour_attention(q, k, v, num_frames=3, edge="mask").flatten()
    # Frame 0 sees (zero block, frame 0, frame 1): weights exp(0)=1, 2, 3; values 0, 10, 20.
    # Frame 1 sees frames 0, 1, 2: weights 2, 3, 5. Frame 2 sees (frame 1, frame 2, zero block): 3, 5, 1.
    expected_zero = torch.tensor([(2 * 10 + 3 * 20) / 6, (2 * 10 + 3 * 20 + 5 * 30) / 10, (3 * 20 + 5 * 30) / 9])
    expected_mask = torch.tensor([(2 * 10 + 3 * 20) / 5, (2 * 10 + 3 * 20 + 5 * 30) / 10, (3 * 20 + 5 * 30) / 8])
    torch.testing.assert_close(zero, expected_zero)
    torch.testing.assert_close(masked, expected_mask)


def test_vclip_mixes_only_neighbours_per_layer(clip_model):
    # Two layers, each reaching one frame further: changing frame 5 of 6 changes frames 3..5, never frames 0..2,
    # and the clips of a batch stay independent.
    student = create_student("vclip", clip_model, 6)
    x = frames(2, 6)
    y = x.clone()
    y[0, 5] = torch.randn(3, SIZE, SIZE)
    with torch.no_grad():
        a, b = student.encode_frames(x), student.encode_frames(y)
    change = (a - b).abs().amax(dim=-1)  # [B, T]
    assert change[0, :3].max() == 0
    assert change[0, 3:].min() > 1e-4
    assert change[1].max() == 0


def test_vclip_grad_checkpointing_same_values_and_gradients():
    torch.manual_seed(0)
    x = frames(2, 3)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        student = create_student("vclip", open_clip.create_model(TINY_MODEL), 3, grad_checkpointing=checkpointing)
        out = student.encode_frames(x)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in student.named_parameters() if p.grad is not None}))
    (out0, grads0), (out1, grads1) = results
    torch.testing.assert_close(out1, out0, atol=0, rtol=0)
    assert grads0.keys() == grads1.keys() and len(grads0) > 0
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], atol=1e-6, rtol=1e-5)


def test_vclip_refuses_towers_it_cannot_reproduce(clip_model):
    clip_model.visual.attn_pool = torch.nn.Identity()
    with pytest.raises(FrosterError, match="attentional pooling"):
        create_student("vclip", clip_model, 8)
