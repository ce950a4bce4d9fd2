"""AdamW parameter groups and the warmup + cosine schedule at its boundaries."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch

from froster.pipeline.errors import FrosterError
from froster.pipeline.heads import ResidualHead
from froster.pipeline.optim import lr_at, param_groups

TINY_MODEL = "froster-test-tiny"  # registered with open_clip by tests/conftest.py


def test_param_groups_exempt_biases_1d_and_logit_scale():
    clip_model = open_clip.create_model(TINY_MODEL)
    heads = torch.nn.ModuleDict({"vision": ResidualHead(32), "text": ResidualHead(32)})
    clip_model.visual.conv1.weight.requires_grad_(False)  # frozen parameters stay out of both groups
    decay_group, no_decay_group = param_groups([clip_model, heads, clip_model.visual])  # a repeated module
    assert decay_group["weight_decay"] == 0.01 and no_decay_group["weight_decay"] == 0.0
    decay = {id(p) for p in decay_group["params"]}
    no_decay = {id(p) for p in no_decay_group["params"]}
    assert len(decay) == len(decay_group["params"]) and len(no_decay) == len(no_decay_group["params"])
    named = dict(clip_model.named_parameters()) | {f"heads.{n}": p for n, p in heads.named_parameters()}
    trainable = {id(p) for p in named.values() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay
    for name in ("logit_scale", "visual.class_embedding", "ln_final.weight", "ln_final.bias",
                 "transformer.resblocks.0.attn.in_proj_bias", "visual.transformer.resblocks.1.mlp.c_fc.bias"):
        assert id(named[name]) in no_decay, name
    for name in ("text_projection", "visual.proj", "positional_embedding", "token_embedding.weight",
                 "transformer.resblocks.0.attn.in_proj_weight", "heads.vision.fc1.weight", "heads.text.fc2.weight"):
        assert id(named[name]) in decay, name
    assert id(clip_model.visual.conv1.weight) not in decay | no_decay
    torch.optim.AdamW(param_groups(clip_model, weight_decay=0.05))  # the groups are AdamW's format


def test_lr_schedule_boundaries():
    base, steps, epochs = 3.33e-6, 10, 12  # warmup over steps 0..19, cosine over steps 20..120
    assert lr_at(0, steps, epochs) == pytest.approx(3.33e-8, rel=1e-12)
    assert lr_at(10, steps, epochs) == pytest.approx(3.33e-8 + (base - 3.33e-8) * 0.5, rel=1e-12)  # mid-warmup
    assert lr_at(20, steps, epochs) == pytest.approx(base, rel=1e-12)  # end of warmup = start of cosine
    assert lr_at(19, steps, epochs) == pytest.approx(3.33e-8 + (base - 3.33e-8) * 19 / 20, rel=1e-12)
    assert lr_at(70, steps, epochs) == pytest.approx((base + 3.33e-8) / 2, rel=1e-12)  # cosine's midpoint
    quarter = 3.33e-8 + (base - 3.33e-8) * 0.5 * (1 + math.cos(math.pi / 4))
    assert lr_at(45, steps, epochs) == pytest.approx(quarter, rel=1e-12)
    assert lr_at(120, steps, epochs) == pytest.approx(3.33e-8, rel=1e-12)
    assert lr_at(500, steps, epochs) == pytest.approx(3.33e-8, rel=1e-12)  # past the end: stays at the end value
    lrs = [lr_at(s, steps, epochs) for s in range(121)]
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:21])) and all(a > b for a, b in zip(lrs[20:120], lrs[21:]))


def test_lr_schedule_options_and_errors():
    assert lr_at(0, 4, 3, base_lr=1.0, warmup_epochs=0) == pytest.approx(1.0)
    assert lr_at(12, 4, 3, base_lr=1.0, warmup_epochs=0, end_factor=0.0) == pytest.approx(0.0)
    assert lr_at(0, 4, 3, base_lr=1.0, warmup_epochs=1, start_factor=0.5) == pytest.approx(0.5)
    with pytest.raises(FrosterError, match="warmup_epochs=2.0, epochs=2"):
        lr_at(0, 4, 2)
    with pytest.raises(FrosterError, match="steps_per_epoch"):
        lr_at(0, 0, 12)
    with pytest.raises(FrosterError, match="step must be"):
        lr_at(-1, 4, 12)
