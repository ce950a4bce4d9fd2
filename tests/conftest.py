"""Shared fixtures: a tiny open_clip config registered under TINY_MODEL (no download), and deterministic torch."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

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


class _RepoRootIsNotATestPackage:
    """The repository root is the `froster` package (it has an __init__.py). pytest would collect it as a test
    package and import that __init__.py a second time under the name of the checkout folder; collect it as a plain
    directory instead, so every module is imported once, as `froster.*`."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if Path(path).resolve() == REPO_ROOT:
            return pytest.Dir.from_parent(parent, path=Path(path))
        return None


def pytest_configure(config):
    config.pluginmanager.register(_RepoRootIsNotATestPackage(), "froster-repo-root-is-a-dir")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_model_name() -> str:
    return register_tiny_model()
