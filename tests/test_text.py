"""The trimmed, bucketed text forward equals open_clip's encode_text; class embeddings; prompt rows."""

from __future__ import annotations

import logging
import math

import open_clip
import pytest
import torch

from froster.pipeline.errors import FrosterError
from froster.pipeline.text import (
    class_embeddings,
    encode_text_trimmed,
    token_lengths,
    tokenize,
    training_prompt_rows,
)

DESCRIPTION = (
    "Abseiling: This video shows a climber descending a steep rock face on a rope, leaning back with feet against "
    "the wall and controlling the speed with a belay device."
)
# Bare names, templated prompts, templated prompts with a description (release-like), and one near 77 tokens.
PROMPTS = [
    "abseiling",
    "riding a bike",
    "a video of a person doing abseiling.",
    "a demonstration of practicing tai chi.",
    DESCRIPTION,
    f"a photo of a person using abseiling. {DESCRIPTION}",
    f"a example of during abseiling. {DESCRIPTION} {DESCRIPTION[12:160]}",  # 75 tokens
]


TINY_MODEL = "froster-test-tiny"  # registered with open_clip by tests/conftest.py


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return open_clip.create_model(TINY_MODEL).eval(), open_clip.get_tokenizer(TINY_MODEL)


def test_trimmed_forward_equals_open_clip(tiny):
    model, tokenizer = tiny
    tokens = tokenize(tokenizer, PROMPTS)  # [P, 77]
    lengths = token_lengths(model, tokens)
    assert lengths.min() <= 8 and lengths.max() >= 70  # the buckets span short names to near-full prompts
    with torch.no_grad():
        expected = model.encode_text(tokens)  # [P, D]
        for multiple in (1, 8, 77):
            got = encode_text_trimmed(model, tokens, multiple=multiple)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        got = encode_text_trimmed(model, tokens, max_batch=2)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_trimmed_forward_gradients_equal_open_clip(tiny):
    model, tokenizer = tiny
    tokens = tokenize(tokenizer, PROMPTS)
    weights = torch.randn(len(PROMPTS), model.text_projection.shape[1])

    def grads(fn):
        model.zero_grad()
        (fn(model, tokens) * weights).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    expected = grads(lambda m, t: m.encode_text(t))
    got = grads(encode_text_trimmed)
    checkpointed = grads(lambda m, t: encode_text_trimmed(m, t, grad_checkpointing=True))
    model.zero_grad()
    assert expected.keys() == got.keys() == checkpointed.keys()
    for name in expected:
        # Weight gradients sum many products, so compare at float32 round-off relative to each tensor's scale.
        scale = expected[name].abs().max().item()
        torch.testing.assert_close(got[name], expected[name], atol=1e-5 * scale, rtol=0)
        torch.testing.assert_close(checkpointed[name], got[name], atol=1e-6 * scale, rtol=0)


def test_untrimmable_tower_falls_back_to_open_clip(tiny, monkeypatch):
    model, tokenizer = tiny
    tokens = tokenize(tokenizer, PROMPTS[:3])
    # Pooling at the last position would move under trimming: the full forward must be used.
    monkeypatch.setattr(model, "text_pool_type", "last")
    with torch.no_grad():
        torch.testing.assert_close(encode_text_trimmed(model, tokens), model.encode_text(tokens), atol=0, rtol=0)


def test_token_lengths_count_start_and_end_tokens(tiny):
    model, tokenizer = tiny
    tokens = tokenize(tokenizer, ["abseiling", "riding a bike"])
    # <start> abseiling <end>: "abseiling" is 3 BPE pieces (ab, sei, ling) in CLIP's vocabulary.
    assert token_lengths(model, tokens).tolist() == [5, 5]


def test_tokenize_warns_on_full_context(tiny, caplog):
    _, tokenizer = tiny
    with caplog.at_level(logging.WARNING, logger="froster.pipeline.text"):
        tokens = tokenize(tokenizer, ["word " * 100, "short"])
    assert tokens.shape == (2, 77)
    assert "1 of 2 prompts fill all 77 tokens" in caplog.text
    with pytest.raises(FrosterError, match="empty"):
        tokenize(tokenizer, [])
    with pytest.raises(FrosterError, match="one string"):
        tokenize(tokenizer, "abseiling")


def test_class_embeddings_by_hand():
    # Class 0: prompts [3, 0] and [0, 2] -> normalised [1, 0], [0, 1] -> mean [.5, .5] -> [1/sqrt2, 1/sqrt2].
    # Class 1: prompts [0, -1] and [0, -5] -> [0, -1] twice -> [0, -1].
    emb = torch.tensor([[[3.0, 0.0], [0.0, -1.0]], [[0.0, 2.0], [0.0, -5.0]]])  # [P=2, C=2, D=2]
    expected = torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)], [0.0, -1.0]])
    torch.testing.assert_close(class_embeddings(emb), expected)
    # The per-class list form, with different numbers of prompts per class.
    listed = class_embeddings([emb[:, 0], emb[:1, 1]])
    torch.testing.assert_close(listed, expected)
    with pytest.raises(FrosterError):
        class_embeddings(torch.zeros(2, 3))


def test_training_prompt_rows():
    # Two descriptions: rows 0..28 use description 0, rows 29..57 description 1 (P = 29 * n_descriptions).
    template_index = list(range(29)) * 2
    description_index = [0] * 29 + [1] * 29
    assert training_prompt_rows(template_index, description_index, template=5) == [5, 28]
    assert training_prompt_rows(template_index, description_index, template=0, description=1) == [29, 57]
    with pytest.raises(FrosterError, match="template_index 3 and description_index 2"):
        training_prompt_rows(template_index, description_index, template=3, description=2)
