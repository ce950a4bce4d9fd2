"""Shared fixtures: a tiny open_clip config registered under TINY_MODEL (no download), and deterministic torch."""

from __future__ import annotations

import copy

import pytest
import torch

TINY_MODEL = "froster-test-tiny"

# A few layers and a small width: builds in milliseconds, encodes 32x32 images. Same tokenizer as CLIP (77 tokens).
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_tiny_model() -> str:
    from open_clip import factory

    factory._MODEL_CONFIGS[TINY_MODEL] = copy.deepcopy(TINY_CONFIG)
    return TINY_MODEL


register_tiny_model()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_model_name() -> str:
    return register_tiny_model()
