"""Student video models built on an open_clip CLIP, behind a factory: ``create_student``, ``list_students``.

Every student holds the whole CLIP, both towers and ``logit_scale`` trainable (FROSTER trains them all: release notes
section 3), and gives per-frame embeddings ``[B, T, D]`` after ``ln_post`` and ``proj``, not normalised: the release
distils per frame and averages per-frame logits, so the video embedding is formed in ``losses.video_logits``.

- ``clip``: frame-wise CLIP, each frame through ``encode_image`` on its own (ViFi-CLIP's fully fine-tuned CLIP; the
  release's ``TEMPORAL_MODELING_TYPE None``).
- ``vclip``: Open-VCLIP's student (the paper's default, section 4): in every vision layer the queries of frame t attend
  to the keys and values of frames t-1, t and t+1 (3x the tokens), with no new parameters. At the clip's edges the
  release fills the missing neighbour's projected keys and values with zeros (logit 0, value 0, which dilutes
  attention: Open-VCLIP ``torch_utils/functional.py``, ``expand_temporal_view``); ``edge="zero"`` keeps that,
  ``edge="mask"`` leaves the missing neighbour out instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from froster.pipeline.errors import FrosterError
from froster.pipeline.text import encode_text_trimmed

VCLIP_EDGES = ("zero", "mask")


class Student(nn.Module):
    """A CLIP fine-tuned as a video model. Subclasses define ``encode_frames``.

    ``clip`` is the open_clip CLIP (all parameters trainable), ``num_frames`` the T it takes, ``grad_checkpointing``
    whether each transformer block recomputes its activations in the backward pass (issue 5).
    """

    def __init__(self, clip_model: nn.Module, num_frames: int, grad_checkpointing: bool = False):
        super().__init__()
        self.clip = clip_model
        self.num_frames = num_frames
        self.grad_checkpointing = grad_checkpointing
        self.clip.requires_grad_(True)

    @property
    def logit_scale(self) -> nn.Parameter:
        """CLIP's learned log temperature (0-dim, ln 100 in OpenAI's weights), trainable, unclamped (as the release)."""
        return self.clip.logit_scale

    def _check_frames(self, x: torch.Tensor) -> tuple[int, int]:
        if x.ndim != 5 or x.shape[1] != self.num_frames or x.shape[2] != 3:
            raise FrosterError(
                f"student expects frames [B, {self.num_frames}, 3, H, W], found shape {tuple(x.shape)}"
            )
        return x.shape[0], x.shape[1]

    def encode_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame embeddings ``[B, T, D]`` of frames ``x [B, T, 3, H, W]``: after ln_post and proj, unnormalised."""
        raise NotImplementedError

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings ``[P, D]`` (not normalised) of token ids ``[P, L]``: the exact trimmed text forward."""
        return encode_text_trimmed(self.clip, tokens, grad_checkpointing=self.grad_checkpointing)

    def forward(
        self, frames: torch.Tensor | None = None, tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(encode_frames(frames), encode_text(tokens))``, either None when not given: one call for DDP's wrapper."""
        video = self.encode_frames(frames) if frames is not None else None
        text = self.encode_text(tokens) if tokens is not None else None
        return video, text


class FrameStudent(Student):
    """``clip``: every frame encoded on its own by CLIP's image tower (ViFi-CLIP's recipe)."""

    def __init__(self, clip_model: nn.Module, num_frames: int, grad_checkpointing: bool = False):
        super().__init__(clip_model, num_frames, grad_checkpointing)
        if grad_checkpointing:
            # open_clip's own per-block checkpointing of the image tower; the text side is ours (encode_text).
            self.clip.visual.set_grad_checkpointing(True)

    def encode_frames(self, x: torch.Tensor) -> torch.Tensor:
        B, T = self._check_frames(x)
        emb = self.clip.encode_image(x.flatten(0, 1))  # [B*T, D]
        return emb.reshape(B, T, -1)


def neighbour_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, edge: str = "zero", dropout_p: float = 0.0
) -> torch.Tensor:
    """Attention of each frame's queries over the keys/values of frames t-1, t, t+1: ``[B*T, h, N, hd]``.

    ``q, k, v [B*T, h, N, hd]`` are projected, per head, frames of one clip consecutive. For frame t the keys are
    ``cat(k_{t-1}, k_t, k_{t+1})`` (3N tokens), likewise the values, and the output is
    ``softmax(q k^T / sqrt(hd)) v``. A neighbour outside the clip is, with ``edge="zero"``, a block of zero keys and
    zero values (each of its N keys adds exp(0) to the softmax denominator and nothing to the numerator: the release's
    zero fill), and with ``edge="mask"`` left out of the softmax. The release orders the blocks (t+1, t-1, t); the
    order does not change the result.
    """
    BT, heads, N, hd = k.shape
    B, T = BT // num_frames, num_frames
    k, v = k.reshape(B, T, heads, N, hd), v.reshape(B, T, heads, N, hd)
    pad = k.new_zeros(B, 1, heads, N, hd)

    def expand(x: torch.Tensor) -> torch.Tensor:
        before = torch.cat([pad, x[:, :-1]], dim=1)  # [B, T, h, N, hd], frame t-1 at t
        after = torch.cat([x[:, 1:], pad], dim=1)  # frame t+1 at t
        return torch.cat([before, x, after], dim=3).reshape(BT, heads, 3 * N, hd)

    mask = None
    if edge == "mask":
        present = torch.ones(T, 3, dtype=torch.bool, device=q.device)  # [T, (t-1, t, t+1)]
        present[0, 0] = False
        present[-1, 2] = False
        present = present.repeat_interleave(N, dim=1)  # [T, 3N]
        mask = present[None, :, None, None, :].expand(B, T, 1, 1, 3 * N).reshape(BT, 1, 1, 3 * N)
    return F.scaled_dot_product_attention(q, expand(k), expand(v), attn_mask=mask, dropout_p=dropout_p)


def _vclip_block(block: nn.Module, x: torch.Tensor, num_frames: int, edge: str) -> torch.Tensor:
    """One open_clip ResidualAttentionBlock with neighbour attention, its own weights: ``[B*T, N, W] -> same``.

    Pre-norm residual block as open_clip's: ``x + ls_1(attn(ln_1(x)))`` then ``x + ls_2(mlp(ln_2(x)))``; the
    attention uses the block's ``nn.MultiheadAttention`` packed in-projection and out-projection.
    """
    attn = block.attn
    BT, N, W = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)  # 3 x [B*T, N, W]
    q, k, v = (t.reshape(BT, N, heads, W // heads).transpose(1, 2) for t in (q, k, v))  # [B*T, h, N, hd]
    dropout_p = attn.dropout if attn.training else 0.0
    y = neighbour_attention(q, k, v, num_frames, edge, dropout_p)  # [B*T, h, N, hd]
    y = attn.out_proj(y.transpose(1, 2).reshape(BT, N, W))  # [B*T, N, W]
    x = x + block.ls_1(y)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class VClipStudent(Student):
    """``vclip``: Open-VCLIP's neighbour-frame attention in every layer of CLIP's ViT, no new parameters.

    The image tower's forward is written here over open_clip's modules: patch embedding (``conv1``), class token,
    positional embedding, patch dropout, ``ln_pre``, the blocks (``_vclip_block``), ``ln_post`` and pooling, ``proj``.
    With T = 1 and ``edge="mask"``, or with identical frames and ``edge="mask"``, it equals ``encode_image``
    (tests/test_students.py).
    """

    def __init__(
        self, clip_model: nn.Module, num_frames: int, grad_checkpointing: bool = False, edge: str = "zero"
    ):
        super().__init__(clip_model, num_frames, grad_checkpointing)
        if edge not in VCLIP_EDGES:
            raise FrosterError(f"student 'vclip': option edge must be one of {', '.join(VCLIP_EDGES)}, found {edge!r}")
        self.edge = edge
        _check_vclip_tower(clip_model)

    def encode_frames(self, x: torch.Tensor) -> torch.Tensor:
        B, T = self._check_frames(x)
        visual = self.clip.visual
        x = visual.conv1(x.flatten(0, 1))  # [B*T, W, gh, gw]
        x = x.flatten(2).transpose(1, 2)  # [B*T, N-1, W]
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [B*T, 1, W]
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # [B*T, N, W]
        # Patch dropout keeps the same number of tokens in every frame, so the neighbours' blocks still line up.
        x = visual.ln_pre(visual.patch_dropout(x))
        for block in visual.transformer.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(_vclip_block, block, x, T, self.edge, use_reentrant=False)
            else:
                x = _vclip_block(block, x, T, self.edge)
        if getattr(visual, "final_ln_after_pool", False):
            pooled = visual.ln_post(_pool(visual, x))  # [B*T, W]
        else:
            pooled = _pool(visual, visual.ln_post(x))
        if visual.proj is not None:
            pooled = pooled @ visual.proj  # [B*T, D]
        return pooled.reshape(B, T, -1)


def _pool(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if getattr(visual, "pool_type", "tok") == "avg":
        return x[:, 1:].mean(dim=1)  # [B*T, W]
    return x[:, 0]  # the class token


def _check_vclip_tower(clip_model: nn.Module) -> None:
    """Refuse image towers the hand-written forward does not reproduce, naming what differs."""
    visual = getattr(clip_model, "visual", None)
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")
    missing = [n for n in needed if not hasattr(visual, n)]
    if missing:
        raise FrosterError(
            f"student 'vclip' needs an open_clip VisionTransformer image tower; {type(visual).__name__} lacks "
            f"{', '.join(missing)}"
        )
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
        raise FrosterError("student 'vclip' supports class-token or average pooling only, not attentional pooling")
    for i, block in enumerate(visual.transformer.resblocks):
        attn = getattr(block, "attn", None)
        plain = (
            isinstance(attn, nn.MultiheadAttention)
            and attn._qkv_same_embed_dim
            and attn.bias_k is None
            and not attn.add_zero_attn
            and all(hasattr(block, n) for n in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2"))
        )
        if not plain:
            raise FrosterError(
                f"student 'vclip' needs open_clip's ResidualAttentionBlock with nn.MultiheadAttention; block {i} "
                f"is {type(block).__name__} with attention {type(attn).__name__}"
            )


_STUDENTS: dict[str, Callable[..., Student]] = {
    "clip": FrameStudent,
    "vclip": VClipStudent,
}
_OPTIONS: dict[str, tuple[str, ...]] = {
    "clip": ("grad_checkpointing",),
    "vclip": ("grad_checkpointing", "edge"),
}


def list_students() -> list[str]:
    """Names ``create_student`` accepts."""
    return sorted(_STUDENTS)


def create_student(name: str, clip_model: nn.Module, num_frames: int, **options) -> Student:
    """The student ``name`` around ``clip_model`` (taken over, not copied) for clips of ``num_frames`` frames.

    Options: ``grad_checkpointing`` (bool, both students), ``edge`` (``"zero"`` as the release, or ``"mask"``;
    ``vclip`` only). An unknown name or option raises FrosterError listing the known ones.
    """
    if name not in _STUDENTS:
        raise FrosterError(f"unknown student {name!r}; known students: {', '.join(list_students())}")
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        raise FrosterError(
            f"student {name!r}: unknown option(s) {', '.join(unknown)}; it accepts {', '.join(_OPTIONS[name])}"
        )
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise FrosterError(f"student {name!r}: num_frames must be an integer >= 1, found {num_frames!r}")
    return _STUDENTS[name](clip_model, num_frames, **options)
