"""Devices and numeric precision shared by every stage that runs a model (extract-teacher, train, evaluate)."""

from __future__ import annotations

import contextlib

from froster.pipeline.errors import ConfigError

DEVICES = ("cpu", "cuda")
# auto: fp32 on cpu, bf16 autocast on cuda; bf16 / fp16 autocast only on cuda (train pairs fp16 with a GradScaler).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_device_precision(device: str, precision: str) -> None:
    """ConfigError naming the option when ``device`` or ``precision`` is unknown, or autocast is asked for on cpu."""
    if device not in DEVICES:
        raise ConfigError(f"--device: expected one of {', '.join(DEVICES)}, found {device!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision: expected one of {', '.join(PRECISIONS)}, found {precision!r}")
    if device == "cpu" and precision in ("bf16", "fp16"):
        raise ConfigError(f"--precision {precision}: autocast is only used on --device cuda")


def resolve_precision(device: str, precision: str) -> str:
    """``auto`` -> bf16 on cuda, fp32 on cpu; anything else as given."""
    if precision != "auto":
        return precision
    return "bf16" if device == "cuda" else "fp32"


def autocast(device: str, precision: str):
    """torch.autocast for bf16 / fp16 on cuda; a null context otherwise (fp32, or cpu)."""
    import torch

    if device == "cuda" and precision in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()
