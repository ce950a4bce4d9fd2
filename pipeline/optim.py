"""AdamW parameter groups and the learning-rate schedule of stage two (the paper's A.1 and the release's scripts).

The schedule is a pure function of the step, so a resumed run needs no scheduler state: set every group's lr to
``lr_at(step, ...)`` before each optimizer step (the release sets it every iteration).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn

from froster.pipeline.errors import FrosterError

# Release scripts: SOLVER.BASE_LR 3.33e-6 (also the paper's A.1), WARMUP_START_LR = COSINE_END_LR = 3.33e-8.
BASE_LR = 3.33e-6
WARMUP_EPOCHS = 2.0  # paper A.1 and the release: 2 warmup epochs in every recipe
LR_FACTOR = 0.01  # 3.33e-8 / 3.33e-6: warmup start and cosine end as fractions of the base lr


def param_groups(modules: nn.Module | Iterable[nn.Module], weight_decay: float = 0.01) -> list[dict]:
    """Two AdamW groups over the trainable parameters of ``modules`` (the student and its heads).

    Weight decay ``weight_decay`` (0.01, the release's) for matrices and other parameters of 2 or more dims; none for
    biases, 1-D parameters (LayerNorm, class embedding) and ``logit_scale``. The release exempts 1-D parameters
    (``ZERO_WD_1D_PARAM``) but decays the 0-dim ``logit_scale``, which its 1-D test misses (release notes section 3);
    we exempt it, as issue 4 asks: decay shrinks the log scale toward 0, i.e. the logit scale toward exp(0) = 1, a
    target with no meaning. 2-D positional embeddings are decayed, as in the release. A parameter shared between
    modules is listed once.
    """
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for name, param in module.named_parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            exempt = param.ndim <= 1 or name.endswith("bias") or name.split(".")[-1] == "logit_scale"
            (no_decay if exempt else decay).append(param)
    if not decay and not no_decay:
        raise FrosterError("param_groups: the model has no trainable parameters")
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_at(
    step: int,
    steps_per_epoch: int,
    epochs: float,
    base_lr: float = BASE_LR,
    warmup_epochs: float = WARMUP_EPOCHS,
    start_factor: float = LR_FACTOR,
    end_factor: float = LR_FACTOR,
) -> float:
    """Learning rate of optimizer step ``step`` (0-based), set per iteration as the release (PySlowFast's
    ``get_lr_at_epoch`` with ``COSINE_AFTER_WARMUP``), with e = step / steps_per_epoch in epochs:

        e <  W:  lr = s + (base - s) * e / W                                  linear warmup, s = start_factor * base
        e >= W:  lr = z + (base - z) * (1 + cos(pi * (e - W) / (E - W))) / 2  cosine, z = end_factor * base

    W = ``warmup_epochs``, E = ``epochs``; lr is ``end_factor * base`` from e = E on. Defaults: base 3.33e-6,
    2 warmup epochs from base/100, cosine to base/100 (paper A.1; release scripts' WARMUP_START_LR = COSINE_END_LR
    = 3.33e-8).
    """
    if steps_per_epoch < 1:
        raise FrosterError(f"lr schedule: steps_per_epoch must be >= 1, found {steps_per_epoch}")
    if warmup_epochs < 0 or epochs <= warmup_epochs:
        raise FrosterError(
            f"lr schedule: need 0 <= warmup_epochs < epochs, found warmup_epochs={warmup_epochs}, epochs={epochs}"
        )
    if step < 0:
        raise FrosterError(f"lr schedule: step must be >= 0, found {step}")
    epoch = step / steps_per_epoch
    if epoch < warmup_epochs:
        start = start_factor * base_lr
        return start + (base_lr - start) * epoch / warmup_epochs
    end = end_factor * base_lr
    progress = min((epoch - warmup_epochs) / (epochs - warmup_epochs), 1.0)
    return end + (base_lr - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
