"""Stage two's memory options (issue 5): --grad-checkpointing gives the same step, --dry-run measures one step and
writes nothing. A store made by stage one from three generated videos and the tiny teacher."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from froster.pipeline import checkpoints as ck
from froster.pipeline.manifests import build_manifest, probe_manifest, write_manifest
from froster.pipeline.teacher import TeacherSpec, load_clip, save_local_dir
from froster.pipeline.videowriter import write_video
from froster.stages.extract_teacher import ExtractConfig
from froster.stages.extract_teacher import run as extract
from froster.stages.train import DryRun, TrainConfig, run

T, V = 4, 2
CLASSES = ("clap", "jump", "wave")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One 8-frame 32x32 video per class and the complete store stage one makes of them with the tiny teacher."""
    base = tmp_path_factory.mktemp("dry")
    root = base / "videos"
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        frames = rng.integers(0, 255, size=(8, 32, 32, 3), dtype=np.uint8)
        frames[..., c] = 220  # a class colour
        write_video(root / name / "v0.mp4", frames, fps=30.0)
    manifest = write_manifest(probe_manifest(build_manifest("folders", root, split="train"), workers=1),
                              base / "train.parquet")
    torch.manual_seed(0)
    tiny = load_clip(TeacherSpec("froster-test-tiny", allow_random=True))
    teacher = save_local_dir(tiny.model, tiny.model_config, base / "teacher")
    return extract(ExtractConfig(
        out=base / "train.zarr", manifest=manifest, model=f"local-dir:{teacher}", pretrained=None, frames=T,
        views=V, view_mode="train", block_rows=4, batch_size=4, decode_threads=1, progress=False,
    ))


def one_step(store, out, **kw) -> TrainConfig:
    """3 videos, batch 3, 1 epoch: exactly one optimizer step (lr 1e-3 so that the step moves the weights)."""
    return TrainConfig(cache=store, out=out, epochs=1, warmup_epochs=0.0, batch_size=3, lr=1e-3, progress=False,
                       **kw)


def step_losses(run_dir) -> dict:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["type"] == "step"][0]


def final_weights(run_dir) -> dict:
    p = ck.load_checkpoint(run_dir / "final.pt")
    return ck.flat_weights(p["model"], p["heads"])


@pytest.mark.parametrize("student", ["clip", "vclip"])
def test_grad_checkpointing_gives_the_same_step(store, tmp_path, student):
    plain = run(one_step(store, tmp_path / "plain", student=student, zero_init=False))
    ckpt = run(one_step(store, tmp_path / "ckpt", student=student, zero_init=False, grad_checkpointing=True))
    a, b = step_losses(plain), step_losses(ckpt)
    for k in ("ce", "fd_vision", "fd_text", "total"):
        assert b[k] == pytest.approx(a[k], abs=1e-6), k
    wa, wb = (final_weights(d) for d in (plain, ckpt))
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=1e-6, msg=name)


def test_dry_run_reports_one_step_and_writes_nothing(store, tmp_path):
    out = tmp_path / "never"
    report = run(one_step(store, out, student="clip", dry_run=True))
    assert isinstance(report, DryRun)
    assert (report.batch_size, report.frames, report.classes, report.device) == (3, T, len(CLASSES), "cpu")
    assert report.peak_mib > 0 and report.run_dir == out.resolve()
    assert not out.exists()


def test_cli_dry_run_prints_the_memory_line_and_writes_no_run_directory(store, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from froster.cli import app

    monkeypatch.chdir(tmp_path)  # the default run directory would be runs/train/ here
    out = tmp_path / "cli-never"
    result = CliRunner().invoke(app, ["train", "--cache", str(store), "--student", "vclip", "--epochs", "2",
                                      "--warmup-epochs", "1", "--batch-size", "3", "--out", str(out),
                                      "--grad-checkpointing", "--dry-run", "--no-progress"])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"dry run: 1 step, batch 3 x 4 frames, 3 classes, peak memory [0-9.]+ MiB on cpu "
                        r"\(process RSS\)", line), line
    assert not out.exists() and not (tmp_path / "runs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
