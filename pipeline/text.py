"""CLIP's text tower, run exactly on prompts trimmed to their length, and class embeddings built from prompts.

Why trimming is exact: CLIP's text attention is causal and the embedding is read at the end-of-text (EOT) token, so
nothing after a prompt's EOT can reach it. A batch of prompts whose EOTs all lie before position L therefore gives the
same embeddings when cut to L tokens, with the positional embedding and the causal mask cut to L as well. open_clip's
``encode_text`` adds the full 77-row positional embedding and so refuses shorter sequences; ``encode_text_trimmed``
runs the same blocks itself on length buckets. The release's prompts average 41 tokens templated and 32 bare against
77 padded (issue 5), so about half of the release's text compute was padding.

Class embeddings follow the release's ``achieve_csf_matrix``: a class's embedding is the L2-normalised mean of the
L2-normalised embeddings of its chosen prompts (the templated prompt and the bare prompt in training, all 29 prompts
at test; release notes section 4).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from froster.pipeline.errors import FrosterError

logger = logging.getLogger(__name__)

# PromptTable's template_index of the bare prompt ("Name: description", or the name alone): ARCHITECTURE.md, Prompts.
BARE_TEMPLATE_INDEX = 28

# Bucket lengths are rounded up to this many tokens: at most 7 padding tokens per prompt remain, few distinct buckets
# (few kernel launches), and multiples of 8 suit tensor cores.
DEFAULT_BUCKET_MULTIPLE = 8


def tokenize(tokenizer: Callable[[list[str]], torch.Tensor], texts: Sequence[str]) -> torch.Tensor:
    """Token ids ``[P, L]`` of ``texts`` (L = the tokenizer's context length, 77 for CLIP), one row per text.

    ``tokenizer`` is an open_clip tokenizer (``LoadedClip.tokenizer``). CLIP's tokenizer cuts a text longer than its
    context to the first L-1 tokens plus EOT, silently; the release did the same. Rows whose last position is not
    padding were cut or fill the context exactly: they are logged as a warning, since a cut description loses its end.
    """
    if isinstance(texts, str):
        raise FrosterError(f"tokenize expects a list of prompt strings, found one string: {texts[:60]!r}")
    texts = list(texts)
    if not texts:
        raise FrosterError("tokenize: no prompts to tokenize (the prompt list is empty)")
    tokens = tokenizer(texts)  # [P, L]
    full = (tokens[:, -1] != 0).nonzero().flatten().tolist()
    if full:
        logger.warning(
            "%d of %d prompts fill all %d tokens and may have been cut short, e.g. %r",
            len(full), len(texts), tokens.shape[1], texts[full[0]][:80],
        )
    return tokens


@dataclass(frozen=True)
class _TextTower:
    """The parts of an open_clip text tower (``CLIP`` keeps them on the model, ``CustomTextCLIP`` in ``.text``)."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor  # [L_max, W]
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: nn.Module | torch.Tensor | None
    attn_mask: torch.Tensor  # additive causal mask [L_max, L_max]
    pool_type: str  # "argmax" or "eos"
    eos_id: int | None


def _text_tower(clip_model: nn.Module) -> _TextTower | None:
    """The tower's parts, or None where trimming would change the result (then open_clip's own forward is used)."""
    text = getattr(clip_model, "text", None)
    owner = text if text is not None else clip_model
    if not hasattr(owner, "token_embedding") or not hasattr(owner, "transformer"):
        return None  # e.g. a Hugging Face text tower: nothing of ours to run
    pool_type = getattr(owner, "text_pool_type", None) or getattr(owner, "pool_type", "argmax")
    attn_mask = getattr(owner, "attn_mask", None)
    if (
        attn_mask is None  # bidirectional: padding reaches every token
        or pool_type not in ("argmax", "eos")  # not read at the EOT, whose position trimming keeps
        or getattr(owner, "cls_emb", None) is not None  # CoCa appends a class token after the padding
    ):
        return None
    return _TextTower(
        token_embedding=owner.token_embedding,
        positional_embedding=owner.positional_embedding,
        transformer=owner.transformer,
        ln_final=owner.ln_final,
        text_projection=owner.text_projection,
        attn_mask=attn_mask,
        pool_type=pool_type,
        eos_id=getattr(owner, "text_eos_id", None) if text is None else getattr(owner, "eos_id", None),
    )


def _eot_positions(tokens: torch.Tensor, pool_type: str, eos_id: int | None) -> torch.Tensor:
    # The very index open_clip's text_global_pool reads, so that trimming keeps it.
    if pool_type == "eos":
        return (tokens == eos_id).int().argmax(dim=-1)  # [P]
    return tokens.argmax(dim=-1)  # [P]; CLIP's EOT id (49407) is the largest id in its vocabulary


def token_lengths(clip_model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Tokens ``[P]`` each prompt needs: its EOT position + 1 (start token and EOT included).

    The EOT is found as the model's own pooling finds it (argmax id for CLIP, or the tokenizer's eos id).
    """
    tower = _text_tower(clip_model)
    pool_type, eos_id = (tower.pool_type, tower.eos_id) if tower is not None else ("argmax", None)
    return _eot_positions(tokens, pool_type, eos_id) + 1


def _run_blocks(
    transformer: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor, grad_checkpointing: bool
) -> torch.Tensor:
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)  # [L, P, W]
    for block in transformer.resblocks:
        run = functools.partial(block, attn_mask=attn_mask)
        if grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(run, x, use_reentrant=False)
        else:
            x = run(x)
    if not batch_first:
        x = x.transpose(0, 1)  # [P, L, W]
    return x


def _project(tower: _TextTower, pooled: torch.Tensor) -> torch.Tensor:
    if tower.text_projection is None:
        return pooled
    if isinstance(tower.text_projection, nn.Linear):
        return tower.text_projection(pooled)
    return pooled @ tower.text_projection


def encode_text_trimmed(
    clip_model: nn.Module,
    tokens: torch.Tensor,
    *,
    multiple: int = DEFAULT_BUCKET_MULTIPLE,
    max_batch: int | None = None,
    grad_checkpointing: bool = False,
) -> torch.Tensor:
    """Text embeddings ``[P, D]`` (after ``text_projection``, not normalised) equal to ``clip_model.encode_text``.

    Prompts ``tokens [P, L]`` are grouped by length (EOT position + 1) rounded up to ``multiple``; each bucket of
    length Lb runs ``token_embedding(tokens[:, :Lb]) + positional_embedding[:Lb]`` through the tower's own blocks with
    the causal mask cut to ``[:Lb, :Lb]``, then ``ln_final``, the EOT token and the projection. Results are put back in
    the input order (differentiably). Equal to open_clip's ``encode_text`` within float32 round-off (issue 5;
    tests/test_text.py). ``max_batch`` splits large buckets (e.g. 29 x 400 prompts at test time) to bound memory.
    Towers where trimming is not exact (no causal mask, CoCa's class token, pooling other than at the EOT) fall back
    to the untrimmed ``encode_text``.
    """
    if tokens.ndim != 2:
        raise FrosterError(f"encode_text_trimmed expects token ids [P, L], found shape {tuple(tokens.shape)}")
    if multiple < 1:
        raise FrosterError(f"encode_text_trimmed: multiple must be >= 1, found {multiple}")
    if max_batch is not None and max_batch < 1:
        raise FrosterError(f"encode_text_trimmed: max_batch must be >= 1 or None, found {max_batch}")
    tower = _text_tower(clip_model)
    if tower is None:
        return clip_model.encode_text(tokens)
    num_pos = tower.positional_embedding.shape[0]
    if tokens.shape[1] > num_pos:
        raise FrosterError(
            f"prompts were tokenised to {tokens.shape[1]} tokens but the text tower holds {num_pos} positions"
        )

    eot = _eot_positions(tokens, tower.pool_type, tower.eos_id)  # [P]
    bucket_len = torch.clamp((eot + multiple) // multiple * multiple, max=tokens.shape[1])  # [P], >= eot + 1
    cast_dtype = tower.token_embedding.weight.dtype
    if hasattr(tower.transformer, "get_cast_dtype"):
        cast_dtype = tower.transformer.get_cast_dtype()

    outputs, order = [], []
    for length in torch.unique(bucket_len).tolist():  # ascending
        rows = (bucket_len == length).nonzero().flatten()  # [Pb]
        for start in range(0, rows.numel(), max_batch or rows.numel()):
            part = rows[start : start + max_batch] if max_batch else rows
            x = tower.token_embedding(tokens[part, :length]).to(cast_dtype)  # [Pb, Lb, W]
            x = x + tower.positional_embedding[:length].to(cast_dtype)
            x = _run_blocks(tower.transformer, x, tower.attn_mask[:length, :length], grad_checkpointing)
            x = tower.ln_final(x)  # [Pb, Lb, W]
            pooled = x[torch.arange(x.shape[0], device=x.device), eot[part]]  # [Pb, W]
            outputs.append(_project(tower, pooled))  # [Pb, D]
            order.append(part)
    order = torch.cat(order)  # [P], input row of each output row
    return torch.cat(outputs)[torch.argsort(order)]  # [P, D] in input order


def class_embeddings(prompt_embeddings: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Class embeddings ``[C, D]``: ``normalise(mean_p normalise(e_{p,c}))`` (the release's ``achieve_csf_matrix``).

    ``prompt_embeddings`` is ``[P, C, D]`` (P prompts of each of C classes), or a list of C tensors ``[P_c, D]`` when
    classes have different numbers of prompts. In training the P = 2 prompts are the step's templated prompt and the
    bare prompt; at test all 29 (release notes section 4). The same function builds the student's class embeddings
    (from its text tower) and the teacher's targets (from the stored text features of the same prompts).
    """
    if isinstance(prompt_embeddings, torch.Tensor):
        if prompt_embeddings.ndim != 3 or prompt_embeddings.shape[0] == 0:
            raise FrosterError(
                f"class_embeddings expects [P, C, D] with P >= 1, found shape {tuple(prompt_embeddings.shape)}"
            )
        mean = F.normalize(prompt_embeddings, dim=-1).mean(dim=0)  # [C, D]
        return F.normalize(mean, dim=-1)
    if len(prompt_embeddings) == 0 or any(e.ndim != 2 or e.shape[0] == 0 for e in prompt_embeddings):
        raise FrosterError("class_embeddings expects a non-empty list of [P_c, D] tensors, one per class, P_c >= 1")
    means = [F.normalize(e, dim=-1).mean(dim=0) for e in prompt_embeddings]  # C x [D]
    return F.normalize(torch.stack(means), dim=-1)  # [C, D]


def training_prompt_rows(
    template_index: Sequence[int], description_index: Sequence[int], template: int, description: int = 0
) -> list[int]:
    """Prompt rows p (into a PromptTable / the store's ``text/features [P, C, D]``) of one training step.

    The release draws one template index in 0..27 per step for all classes and pairs it with the bare prompt
    (``[tmpl_index, '{}']``, release notes section 4); with several descriptions per class, ``description`` picks the
    one used by both prompts. Returns ``[templated row, bare row]``.
    """
    rows = []
    for wanted in (template, BARE_TEMPLATE_INDEX):
        found = [
            p for p, (t, d) in enumerate(zip(template_index, description_index, strict=True))
            if t == wanted and d == description
        ]
        if len(found) != 1:
            raise FrosterError(
                f"prompt table: expected one prompt with template_index {wanted} and description_index {description}, "
                f"found {len(found)}"
            )
        rows.append(found[0])
    return rows
