"""Checkpoints: atomic save, safe load, the running weight average, and rebuilding a student from a checkpoint.

Two payload kinds (ARCHITECTURE.md, "Checkpoints"):
- training state (``checkpoints/epoch_XXXX.pt``, ``checkpoints/last.pt``): ``model``, ``heads``, ``optimizer``,
  ``scheduler_step``, ``scaler``, ``rng``, ``epoch``, ``step``, ``average``, ``meta``;
- weights only (``final.pt``, ``averaged.pt``): ``model``, ``heads``, ``meta``.

Every load is ``torch.load(weights_only=True)``: a checkpoint holds tensors, numbers, strings, lists and dicts only
(RNG states are stored as uint8 tensors), so nothing from a file is ever unpickled as code.

Weight averaging (Open-VCLIP's, which FROSTER's release ran as a separate script): the uniform mean of the weights at
the end of a range of epochs, kept as a running sum ``{"sum": {name: tensor}, "count": n}`` so that a resumed run
carries it on without re-reading earlier checkpoints.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from froster.pipeline.errors import FrosterError

log = logging.getLogger(__name__)

TRAINING_KEYS = ("model", "heads", "optimizer", "scheduler_step", "scaler", "rng", "epoch", "step", "average", "meta")
WEIGHTS_KEYS = ("model", "heads", "meta")
KINDS = ("last", "epoch", "averaged")


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically: to ``path.tmp``, fsync, then ``os.replace``.

    A reader (or a resumed run after a kill) sees either the previous file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(dict(payload), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable; not possible on every platform
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``; a missing or unreadable file names the path."""
    path = Path(path)
    if not path.is_file():
        raise FrosterError(f"{path}: no checkpoint file there")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or a pickle that weights_only refuses
        raise FrosterError(f"{path}: cannot read as a froster checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or "model" not in payload or "meta" not in payload:
        found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise FrosterError(f"{path}: expected a froster checkpoint with keys 'model' and 'meta', found {found}")
    return payload


# ---- weights of model + heads as one flat state dict (what averaging works on) ----


def flat_weights(
    model_state: Mapping[str, torch.Tensor], heads_state: Mapping[str, Mapping[str, torch.Tensor]]
) -> dict:
    """``{"model.<k>": t, "heads.<name>.<k>": t}``: model and heads as one flat state dict."""
    flat = {f"model.{k}": v for k, v in model_state.items()}
    for name, sd in heads_state.items():
        flat.update({f"heads.{name}.{k}": v for k, v in sd.items()})
    return flat


def split_weights(flat: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """Inverse of ``flat_weights``: ``(model_state, {"vision": sd, "text": sd, ...})``."""
    model: dict[str, torch.Tensor] = {}
    heads: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        if key.startswith("model."):
            model[key[len("model.") :]] = value
        elif key.startswith("heads."):
            name, _, rest = key[len("heads.") :].partition(".")
            heads.setdefault(name, {})[rest] = value
        else:
            raise ValueError(f"unexpected key {key!r} in a flat weight dict")
    return model, heads


def average_add(average: dict | None, weights: Mapping[str, torch.Tensor]) -> dict:
    """Add one set of weights to the running sum ``{"sum": {k: tensor}, "count": n}`` (``None`` starts one).

    Floating tensors are summed in fp32 or wider (fp16/bf16 weights would lose the small differences between epochs);
    other tensors (integer buffers) keep the latest value. Returns a new dict; ``average`` is left unchanged.
    """
    if average is None or average["count"] == 0:
        total = {k: _acc(v).clone() for k, v in weights.items()}
        return {"sum": total, "count": 1}
    if set(average["sum"]) != set(weights):
        missing = sorted(set(average["sum"]) ^ set(weights))[:5]
        raise ValueError(f"weight average: key sets differ ({missing} ...)")
    total = {}
    for k, v in weights.items():
        acc = average["sum"][k]
        total[k] = acc + _acc(v).to(acc.device) if v.is_floating_point() else v.detach().clone()
    return {"sum": total, "count": int(average["count"]) + 1}


def average_result(average: dict, like: Mapping[str, torch.Tensor] | None = None) -> dict:
    """The uniform mean ``sum / count``, cast back to the dtypes of ``like`` (or fp32 for floating sums)."""
    n = int(average["count"])
    if n <= 0:
        raise ValueError("weight average: nothing has been added")
    out = {}
    for k, acc in average["sum"].items():
        dtype = like[k].dtype if like is not None else acc.dtype
        out[k] = (acc / n).to(dtype) if acc.is_floating_point() else acc.clone()
    return out


def _acc(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.is_floating_point() and t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t


# ---- RNG states as tensors (weights_only=True cannot read numpy or Python objects) ----


def rng_state() -> dict:
    """The torch (CPU and CUDA), numpy and Python RNG states, every one as a tensor."""
    np_state = np.random.get_state()  # ("MT19937", keys uint32 [624], pos, has_gauss, cached_gaussian)
    py_state = random.getstate()  # (version, tuple of 625 ints, gauss_next)
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_rest": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor(np_state[4], dtype=torch.float64),
        "python": torch.tensor(py_state[1], dtype=torch.int64),
        "python_version": torch.tensor(py_state[0], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all()) if torch.cuda.device_count() else torch.empty(0)
    return state


def set_rng_state(state: Mapping[str, torch.Tensor]) -> None:
    """Restore what ``rng_state`` saved (the CUDA part only when CUDA is present and it was saved)."""
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    keys = state["numpy_keys"].cpu().numpy().astype(np.uint32)
    pos, has_gauss = (int(x) for x in state["numpy_rest"].tolist())
    np.random.set_state(("MT19937", keys, pos, has_gauss, float(state["numpy_gauss"])))
    random.setstate((int(state["python_version"]), tuple(int(x) for x in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available() and state["cuda"].numel():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu().to(torch.uint8), i)


# ---- meta and rebuilding a student ----


def make_meta(
    *,
    student: str,
    num_frames: int,
    options: Mapping[str, Any],
    teacher: Mapping[str, Any],
    vocabulary: list[str],
    prompt_names: list[str],
    epoch: int,
    kind: str,
) -> dict:
    """The ``meta`` dict every checkpoint carries (ARCHITECTURE.md): enough to rebuild the student without the run."""
    from froster import __version__

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return {
        "student": {"name": student, "num_frames": int(num_frames), "options": dict(options)},
        "teacher": dict(teacher),
        "vocabulary": list(vocabulary),
        "prompt_names": list(prompt_names),
        "epoch": int(epoch),
        "kind": kind,
        "froster_version": __version__,
    }


def weights_payload(model_state: Mapping, heads_state: Mapping, meta: Mapping) -> dict:
    """The weights-only payload (``final.pt``, ``averaged.pt``)."""
    return {"model": dict(model_state), "heads": {k: dict(v) for k, v in heads_state.items()}, "meta": dict(meta)}


def load_student(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild the student saved in ``path`` (any checkpoint kind). Returns ``(Student, meta)``.

    The architecture comes from ``meta``: the CLIP model from the teacher provenance (``TeacherSpec.from_provenance``),
    the student wrapper from ``meta["student"]``; the weights are the checkpoint's ``model``, loaded strictly.
    The student is returned in eval mode on ``device``.
    """
    student, meta, _ = rebuild_student(path, device)
    return student, meta


def rebuild_student(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """``load_student`` plus the ``LoadedClip`` the student was built on (its open_clip model config, preprocess
    config and tokenizer, which ``froster export`` writes beside the weights). Returns ``(Student, meta, loaded)``."""
    from froster.pipeline.students import create_student
    from froster.pipeline.teacher import TeacherSpec, load_clip

    path = Path(path)
    payload = load_checkpoint(path)
    meta = payload["meta"]
    try:
        spec = TeacherSpec.from_provenance(meta["teacher"])
        info = meta["student"]
        name, num_frames, options = info["name"], int(info["num_frames"]), dict(info.get("options") or {})
    except (KeyError, TypeError, ValueError) as e:
        raise FrosterError(f"{path}: checkpoint meta lacks the teacher provenance or the student ({e})") from e
    # The architecture only: the teacher's weights are replaced by the checkpoint's right after.
    loaded = load_clip(spec, device="cpu")
    student = create_student(name, loaded.model, num_frames, **options)
    try:
        student.load_state_dict(payload["model"], strict=True)
    except RuntimeError as e:
        raise FrosterError(f"{path}: the weights do not fit a {name!r} student built on {spec.model!r} ({e})") from e
    student.to(device).eval()
    return student, meta, loaded
