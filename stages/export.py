"""Export: a trained student as an open_clip ``local-dir:`` model (config + weights) for zero-shot use anywhere.

Reads a run directory of ``froster train`` (its ``averaged.pt`` if present, else ``final.pt``; or the checkpoint
named by ``--checkpoint``) or a checkpoint file, and the teacher it was built on (for the model config). Writes an
open_clip local folder: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``), ``open_clip_model.safetensors``
and ``froster_export.json`` (where the weights came from: run, checkpoint, kind, epoch, student, vocabulary).
``open_clip.create_model("local-dir:DIR")`` loads it, and so do ``froster extract-teacher --model local-dir:DIR`` and
``froster evaluate``.

    froster export runs/k400 --out exports/froster-k400

The export is frame-wise CLIP: every frame is encoded on its own and a video is the mean of its frames. The ``vclip``
student's neighbour-frame attention (Open-VCLIP) has no parameters of its own and is not representable in open_clip's
model config, so a ``vclip`` student's weights are exported into the plain CLIP architecture; zero-shot accuracy of
the export can then differ from ``froster evaluate`` on the run's checkpoint, which keeps the temporal attention.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from froster.pipeline.errors import ConfigError, FrosterError

log = logging.getLogger(__name__)

CHOICES = ("auto", "averaged", "last")
EXPORT_INFO = "froster_export.json"


@dataclass(frozen=True)
class ExportConfig:
    """What ``froster export`` reads and writes."""

    run: Path  # a froster train run directory, or a checkpoint file (.pt) of one
    out: Path  # the open_clip local folder to write
    checkpoint: str = "auto"  # auto (averaged.pt if present, else final.pt) | averaged | last (final.pt)
    overwrite: bool = False  # replace an existing, non-empty --out folder

    def __post_init__(self):
        if self.checkpoint not in CHOICES:
            raise ConfigError(f"--checkpoint: expected one of {', '.join(CHOICES)}, found {self.checkpoint!r}")


def _checkpoint_file(run: Path, choice: str) -> Path:
    if run.is_file():
        if choice != "auto":
            raise FrosterError(f"--checkpoint {choice}: only for a run directory; {run} is a checkpoint file")
        return run
    if not run.is_dir():
        raise FrosterError(f"{run}: no run directory or checkpoint file there")
    averaged, final = run / "averaged.pt", run / "final.pt"
    if choice == "averaged" or (choice == "auto" and averaged.is_file()):
        if not averaged.is_file():
            raise FrosterError(f"{run}: no averaged.pt (the run ended before --average-from, or is unfinished)")
        return averaged
    if not final.is_file():
        raise FrosterError(f"{run}: no final.pt or averaged.pt: the run has not finished (continue it with "
                           f"froster train --resume {run})")
    return final


def run(config: ExportConfig) -> Path:
    """Write the student of ``config.run`` as an open_clip local folder ``config.out``; returns the folder."""
    from froster.pipeline.checkpoints import rebuild_student
    from froster.pipeline.teacher import save_local_dir

    # validate inputs
    source = _checkpoint_file(Path(config.run), config.checkpoint)
    out = Path(config.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not config.overwrite:
            raise FrosterError(f"--out {out}: exists and is not empty (use --overwrite to replace it)")
        shutil.rmtree(out) if out.is_dir() else out.unlink()

    # set up
    student, meta, loaded = rebuild_student(source)
    name = meta["student"]["name"]
    if name != "clip":
        log.warning(
            "student %r exported as frame-wise CLIP: its temporal attention has no parameters and is not "
            "representable in open_clip, so the export encodes each frame on its own", name,
        )
    else:
        log.info("exported as frame-wise CLIP (the %r student is frame-wise CLIP)", name)

    # write outputs (each file atomically)
    tmp = out.with_name(f".{out.name}.exporting-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_local_dir(student.clip, loaded.model_config, tmp, loaded.preprocess_cfg, tokenizer=loaded.tokenizer)
    info = {
        "source": str(source.resolve()),
        "kind": meta.get("kind"),
        "epoch": meta.get("epoch"),
        "student": meta["student"],
        "frame_wise": True,
        "teacher": meta.get("teacher"),
        "vocabulary": meta.get("vocabulary"),
        "froster_version": meta.get("froster_version"),
    }
    (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        out.rmdir()  # empty (checked above)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    log.info("exported %s (%s, epoch %s) to %s: load it with open_clip as local-dir:%s", source, meta.get("kind"),
             meta.get("epoch"), out, out.resolve())
    return out
