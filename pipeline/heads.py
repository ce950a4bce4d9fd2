"""Distillation heads h that map a student embedding toward the teacher's (the paper's Fig. 3 and Table 4).

- ``rfd`` ``ResidualHead``: h(z) = z + alpha * W2(GELU(W1 z)) (the paper's Eq. 6), one for vision and one for text.
- ``fd-mlp`` ``MLPHead``: h(z) = W2(GELU(W1 z)), a two-layer projector without the identity path (Fig. 3b).
- ``fd`` and ``none`` ``IdentityHead``: h(z) = z (Fig. 3a; ``none`` does not distil at all, the head is unused).

The heads are used in training only; the release never calls them at test time (release notes section 1).
"""

from __future__ import annotations

import torch
from torch import nn

from froster.pipeline.errors import FrosterError

HEAD_KINDS = ("none", "fd", "fd-mlp", "rfd")


class ResidualHead(nn.Module):
    """h(z) = z + alpha * W2(GELU(W1 z)): the paper's Eq. 6, residual feature distillation.

    W1, W2 are D x D without bias (the release's ``projector_v`` / ``projector_t``), W1 Kaiming-normal, W2 zeros so
    that h(z) = z at the start and the student starts from the teacher's features (paper section 3.2, after Hu et al.
    2021). ``zero_init=False`` leaves W2 at nn.Linear's default initialisation, the paper's Table 5 ablation.
    alpha = 0.1 is the paper's A.1 and the release's literal 0.1; the output is not re-normalised (as the release).
    """

    def __init__(self, dim: int, alpha: float = 0.1, zero_init: bool = True):
        super().__init__()
        self.alpha = alpha
        self.fc1 = nn.Linear(dim, dim, bias=False)  # W1
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim, dim, bias=False)  # W2
        nn.init.kaiming_normal_(self.fc1.weight)
        if zero_init:
            nn.init.zeros_(self.fc2.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [..., D] -> [..., D]
        return z + self.alpha * self.fc2(self.act(self.fc1(z)))


class MLPHead(nn.Module):
    """h(z) = W2(GELU(W1 z)): the two-layer projector of feature distillation with a projector (paper Fig. 3b, Table 4
    ``fd-mlp``), nn.Linear's default initialisation, no identity path.

    No biases, so that it differs from ``ResidualHead`` only in the identity path, alpha and W2's zero start.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim, bias=False)  # W1
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim, dim, bias=False)  # W2

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [..., D] -> [..., D]
        return self.fc2(self.act(self.fc1(z)))


class IdentityHead(nn.Module):
    """h(z) = z: plain feature distillation (paper Fig. 3a, Table 4 ``fd``). No parameters."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z


def create_head(kind: str, dim: int, alpha: float = 0.1, zero_init: bool = True) -> nn.Module:
    """The head of Table 4's variant ``kind`` (none | fd | fd-mlp | rfd) for D = ``dim`` embeddings.

    ``alpha`` and ``zero_init`` apply to ``rfd`` only.
    """
    if kind == "rfd":
        return ResidualHead(dim, alpha=alpha, zero_init=zero_init)
    if kind == "fd-mlp":
        return MLPHead(dim)
    if kind in ("fd", "none"):
        return IdentityHead()
    raise FrosterError(f"unknown distillation head {kind!r}; known: {', '.join(HEAD_KINDS)}")
