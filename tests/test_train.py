"""Stage two end to end on real video files and a store made by stage one with a tiny teacher.

Step-0 distillation ~0, cached == online, resume == uninterrupted, the loss goes down, protocol runs, the refusals.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from froster.pipeline import checkpoints as ck
from froster.pipeline.errors import ConfigError, FrosterError
from froster.pipeline.manifests import build_manifest, probe_manifest, write_manifest
from froster.pipeline.teacher import TeacherSpec, load_clip, save_local_dir
from froster.pipeline.trainer_data import EpochBatchSampler, epoch_order, view_for
from froster.pipeline.videowriter import write_video
from froster.stages import train as train_stage
from froster.stages.extract_teacher import ExtractConfig
from froster.stages.extract_teacher import run as extract
from froster.stages.train import TrainConfig, run

T, V = 4, 2
CLASSES = ("clap", "jump", "wave")
PER_CLASS = 3


def _clip_frames(n: int, class_index: int, seed: int) -> np.ndarray:
    """uint8 [n, 32, 32, 3]: a class colour plus a moving bar, so the classes are learnable."""
    rng = np.random.default_rng(seed)
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]][class_index], np.float64)
    frames = np.empty((n, 32, 32, 3), np.uint8)
    for t in range(n):
        img = base + rng.normal(0, 10, size=(32, 32, 3))
        img[:, (3 * t) % 32 : (3 * t) % 32 + 4] = 255.0
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """9 videos of 3 classes (8-16 frames, 32x32), one broken video in its own class, the tiny teacher as a
    local-dir folder, and the complete training store stage one makes of them."""
    base = tmp_path_factory.mktemp("train")
    root = base / "videos"
    for c, name in enumerate(CLASSES):
        for i in range(PER_CLASS):
            write_video(root / name / f"v{i}.mp4", _clip_frames(8 + 4 * i, c, seed=10 * c + i), fps=30.0)
    (root / "zz_broken").mkdir(parents=True)
    (root / "zz_broken" / "x.mp4").write_bytes(b"not a video " * 20)
    manifest = write_manifest(probe_manifest(build_manifest("folders", root, split="train"), workers=1),
                              base / "train.parquet")
    torch.manual_seed(0)
    tiny = load_clip(TeacherSpec("froster-test-tiny", allow_random=True))
    teacher = save_local_dir(tiny.model, tiny.model_config, base / "teacher")
    store = extract(ExtractConfig(
        out=base / "train.zarr", manifest=manifest, model=f"local-dir:{teacher}", pretrained=None, frames=T,
        views=V, view_mode="train", block_rows=4, batch_size=4, decode_threads=1, progress=False,
    ))
    world = {"base": base, "root": root, "manifest": manifest, "teacher": teacher, "store": store}
    # One video per class: with --batch-size 3, one step per epoch (the tests that need a few steps only).
    world["small"] = write_protocol(world, base / "small.toml", """
[[runs]]
name = "three"
dataset = "toy"
vocabulary = ["clap", "jump", "wave"]
train_videos = ["clap/v0", "jump/v1", "wave/v2"]
""")
    return world


def cfg(world, out, **kw) -> TrainConfig:
    defaults = dict(cache=world["store"], out=out, student="clip", epochs=2, warmup_epochs=1.0, batch_size=3,
                    progress=False)
    return TrainConfig(**{**defaults, **kw})


def steps(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "step"]


def epochs(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "epoch"]


def weights(path: Path) -> dict:
    p = ck.load_checkpoint(path)
    return ck.flat_weights(p["model"], p["heads"])


# ---- data ----


def test_view_choice_changes_every_epoch_and_is_deterministic():
    for row in range(20):
        chosen = [view_for(3, e, row, 4) for e in range(4)]
        assert sorted(chosen) == [0, 1, 2, 3]  # each of V views once in V epochs
        assert chosen == [view_for(3, e, row, 4) for e in range(4)]
    assert len({view_for(3, 0, r, 4) for r in range(20)}) > 1  # rows are out of phase within an epoch
    assert epoch_order(10, 0, 1) == epoch_order(10, 0, 1) != epoch_order(10, 0, 2)
    sampler = EpochBatchSampler(10, 3, seed=0, epoch=1, skip_batches=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2 and all(k[0] == 1 for b in batches for k in b)
    assert [k[1] for b in batches for k in b] == epoch_order(10, 0, 1)[3:9]  # skipped one batch, dropped the tail


def test_config_validation_names_the_option(world, tmp_path):
    with pytest.raises(ConfigError, match="--student"):
        cfg(world, tmp_path, student="vit")
    with pytest.raises(ConfigError, match="--warmup-epochs"):
        cfg(world, tmp_path, epochs=2, warmup_epochs=2.0)
    with pytest.raises(ConfigError, match="--run"):
        cfg(world, tmp_path, run="x")
    with pytest.raises(ConfigError, match="--cache"):
        TrainConfig()


# ---- training ----


@pytest.fixture(scope="module")
def reference(world):
    """One uninterrupted run: 9 videos, batch 3 -> 3 steps per epoch, 3 epochs, a mid-epoch checkpoint every 2."""
    return run(cfg(world, world["base"] / "runs" / "ref", epochs=3, save_every=2, lr=1e-4))


def test_first_step_distillation_is_zero_from_the_teachers_weights(world, reference):
    first = steps(reference)[0]
    # The student is the teacher (same weights, same pixels), W2 = 0: only fp16 storage error remains.
    assert first["fd_vision"] < 1e-5 and first["fd_text"] < 1e-5
    assert first["total"] == pytest.approx(first["ce"] + 2.0 * (first["fd_vision"] + first["fd_text"]), rel=1e-6)
    assert first["lr"] == pytest.approx(1e-6)  # warmup starts at lr / 100


def test_run_directory_layout(world, reference):
    names = {p.relative_to(reference).as_posix() for p in reference.rglob("*")}
    assert {"config.json", "metrics.jsonl", "final.pt", "averaged.pt", "checkpoints/last.pt",
            "checkpoints/epoch_0001.pt", "checkpoints/epoch_0003.pt"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    config = json.loads((reference / "config.json").read_text())
    again = TrainConfig.from_json(config["config"])  # the resolved config rebuilds the run's config
    assert again.cache == Path(world["store"]).resolve() and again.epochs == 3
    assert config["derived"]["steps_per_epoch"] == 3 and config["derived"]["vocabulary"][:3] == list(CLASSES)
    assert [r["step"] for r in steps(reference)] == list(range(1, 10))
    assert [r["epoch"] for r in epochs(reference)] == [1, 2, 3]
    for r in steps(reference):
        assert {"ce", "fd_vision", "fd_text", "total", "lr"} <= set(r)
    last = ck.load_checkpoint(reference / "checkpoints" / "last.pt")
    assert {"model", "heads", "optimizer", "scheduler_step", "scaler", "rng", "epoch", "step", "average",
            "meta"} <= set(last)
    assert last["step"] == 9 and last["epoch"] == 3 and last["average"]["count"] == 2
    meta = ck.load_checkpoint(reference / "final.pt")["meta"]
    assert meta["kind"] == "last" and meta["student"]["name"] == "clip" and meta["vocabulary"][:3] == list(CLASSES)


def test_averaged_is_the_mean_of_the_end_of_epoch_weights(reference):
    e2, e3 = weights(reference / "checkpoints/epoch_0002.pt"), weights(reference / "checkpoints/epoch_0003.pt")
    avg = weights(reference / "averaged.pt")
    for k in avg:
        if avg[k].is_floating_point():
            torch.testing.assert_close(avg[k], (e2[k] + e3[k]) / 2, rtol=0, atol=1e-6)
    final = weights(reference / "final.pt")
    assert all(torch.equal(final[k], e3[k]) for k in final)


def test_resume_after_a_kill_equals_the_uninterrupted_run(world, reference, monkeypatch):
    out = world["base"] / "runs" / "killed"
    real = train_stage._append_metrics

    class Killed(Exception):
        pass

    def append_then_die(path, record):
        real(path, record)
        if record.get("type") == "step" and record["step"] == 5:  # mid-epoch 2; last.pt holds step 4
            raise Killed

    monkeypatch.setattr(train_stage, "_append_metrics", append_then_die)
    with pytest.raises(Killed):
        run(cfg(world, out, epochs=3, save_every=2, lr=1e-4))
    monkeypatch.setattr(train_stage, "_append_metrics", real)
    assert ck.load_checkpoint(out / "checkpoints/last.pt")["step"] == 4
    assert [r["step"] for r in steps(out)] == [1, 2, 3, 4, 5]

    run(TrainConfig(resume=out, progress=False))
    got, want = steps(out), steps(reference)
    assert [r["step"] for r in got] == list(range(1, 10))  # no duplicated or missing steps
    for a, b in zip(got, want):
        for k in ("ce", "fd_vision", "fd_text", "total", "lr"):
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), (a["step"], k)
    for a, b in zip(epochs(out), epochs(reference), strict=True):
        assert a.keys() == b.keys()  # epoch means include the steps before the kill
        assert all(a[k] == pytest.approx(b[k], rel=1e-9) for k in a if k != "type"), a["epoch"]
    for name in ("final.pt", "averaged.pt"):
        a, b = weights(out / name), weights(reference / name)
        for k in b:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)

    # the same command again: the run is finished, nothing changes
    before = (out / "metrics.jsonl").read_text()
    run(cfg(world, out, epochs=3, save_every=2, lr=1e-4))
    assert (out / "metrics.jsonl").read_text() == before


def small(world, out, **kw) -> TrainConfig:
    return cfg(world, out, protocol=world["small"], run="three", **kw)


def test_cached_and_online_teacher_give_the_same_losses(world):
    a = run(small(world, world["base"] / "runs" / "cached", student="vclip", zero_init=False))
    b = run(small(world, world["base"] / "runs" / "online", student="vclip", zero_init=False, teacher="online"))
    c = run(small(world, world["base"] / "runs" / "workers", student="vclip", zero_init=False, num_workers=2))
    assert steps(c) == steps(a)  # decoding in worker processes (each opening the store) changes nothing
    first_a, first_b = steps(a)[0], steps(b)[0]
    assert first_a["fd_vision"] > 1e-3  # vclip differs from the frame-wise teacher: a real comparison
    for k in ("ce", "fd_vision", "fd_text", "total"):
        assert first_a[k] == pytest.approx(first_b[k], rel=2e-3, abs=1e-5), k


def test_a_few_steps_lower_the_loss(world):
    out = run(cfg(world, world["base"] / "runs" / "learn", epochs=3, warmup_epochs=0.0, lr=1e-3, lr_factor=1.0,
                  average_from=1, val_cache=world["store"]))
    losses = [r["total"] for r in epochs(out)]
    assert losses[-1] < 0.7 * losses[0], losses
    top1 = [r["val_top1"] for r in epochs(out)]  # per-epoch validation (here on the training store itself)
    assert len(top1) == 3 and all(0.0 <= t <= 100.0 for t in top1) and top1[-1] >= top1[0]


def test_init_from_loads_weights_only(world, reference):
    out = run(small(world, world["base"] / "runs" / "init", init_from=reference / "final.pt", lr=1e-12))
    first = steps(out)[0]
    assert first["step"] == 1 and first["lr"] == pytest.approx(1e-14)  # a new run: schedule and optimizer anew
    got, want = weights(out / "final.pt"), weights(reference / "final.pt")
    for k in want:  # lr ~0: the new run's weights are the checkpoint's
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)


# ---- protocols ----


def write_protocol(world, path: Path, runs: str) -> Path:
    path.write_text(f"""
[protocol]
format = 1
name = "toy"
kind = "cross-dataset"
checkpoint = "averaged"

[aggregation]
kind = "cross-dataset"
groups = ["toy"]

[datasets.toy]
manifest = "{world['manifest']}"

{runs}

[[eval_sets]]
name = "toy"
dataset = "toy"
vocabulary = ["clap", "jump", "wave"]
group = "toy"
""")
    return path


def test_protocol_runs_use_their_subset_and_labels(world, tmp_path):
    proto = write_protocol(world, tmp_path / "toy.toml", """
[[runs]]
name = "pick"
dataset = "toy"
vocabulary = ["wave", "clap"]
train_videos = ["wave/v0", "wave/v1", "clap/v2"]

[[runs]]
name = "every"
dataset = "toy"
vocabulary = ["jump", "wave"]
""")
    store = train_stage._open_store(world["store"], "--cache")
    sel = train_stage._select(cfg(world, tmp_path, protocol=proto, run="pick"), store, world["store"])
    ids = store.manifest.column("video_id")
    assert sel.vocabulary == ["wave", "clap"]
    assert [(ids[it.row], it.label) for it in sel.items] == [("wave/v0", 0), ("wave/v1", 0), ("clap/v2", 1)]
    assert sel.class_index == [2, 0]
    sel = train_stage._select(cfg(world, tmp_path, protocol=proto, run="every"), store, world["store"])
    assert sorted((ids[it.row], it.label) for it in sel.items) == [
        ("jump/v0", 0), ("jump/v1", 0), ("jump/v2", 0), ("wave/v0", 1), ("wave/v1", 1), ("wave/v2", 1)]

    parent = run(cfg(world, tmp_path / "runs", protocol=proto, run="all", epochs=2))
    for name, n, vocab in (("pick", 3, ["wave", "clap"]), ("every", 6, ["jump", "wave"])):
        derived = json.loads((parent / name / "config.json").read_text())["derived"]
        assert derived["videos"] == n and derived["vocabulary"] == vocab
        assert ck.load_checkpoint(parent / name / "averaged.pt")["meta"]["vocabulary"] == vocab


# ---- refusals before any step ----


def test_refuses_an_incomplete_store(world, tmp_path):
    copy = tmp_path / "partial.zarr"
    shutil.copytree(world["store"], copy)
    meta = json.loads((copy / "zarr.json").read_text())
    meta["attributes"]["froster"]["complete"] = False
    (copy / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(FrosterError, match=r"partial\.zarr.*incomplete"):
        run(cfg(world, tmp_path / "run", cache=copy))
    assert not (tmp_path / "run").exists()


def test_refuses_changed_videos_and_follows_moved_ones(world, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(world["root"], moved)  # copy2 keeps size and mtime
    st = os.stat(moved / "jump" / "v1.mp4")
    os.utime(moved / "jump" / "v1.mp4", (st.st_atime, st.st_mtime + 100))
    with pytest.raises(FrosterError, match=r"jump/v1\.mp4.*modified time.*re-run extract-teacher"):
        run(cfg(world, tmp_path / "run", video_root=moved))
    os.utime(moved / "jump" / "v1.mp4", (st.st_atime, st.st_mtime))
    out = run(small(world, tmp_path / "run", video_root=moved))
    assert (out / "final.pt").is_file()


def test_refuses_a_vocabulary_outside_the_store(world, tmp_path):
    proto = write_protocol(world, tmp_path / "p.toml", """
[[runs]]
name = "r"
dataset = "toy"
vocabulary = ["clap", "juggle"]
""")
    with pytest.raises(FrosterError, match=r"vocabulary does not match the classes.*juggle"):
        run(cfg(world, tmp_path / "run", protocol=proto, run="r"))


def test_refuses_an_empty_training_subset(world, tmp_path):
    proto = write_protocol(world, tmp_path / "p.toml", """
[[runs]]
name = "r"
dataset = "toy"
vocabulary = ["zz_broken"]
""")
    with pytest.raises(FrosterError, match="training subset is empty"):
        run(cfg(world, tmp_path / "run", protocol=proto, run="r"))


def test_refuses_a_teacher_other_than_the_stores(world, tmp_path):
    with pytest.raises(FrosterError, match=r"teacher/student mismatch.*--model ViT-B-16"):
        run(cfg(world, tmp_path / "run", model="ViT-B-16"))
    with pytest.raises(FrosterError, match=r"--pretrained openai"):
        run(cfg(world, tmp_path / "run", pretrained="openai"))


def test_refuses_to_mix_runs_in_one_directory(world, reference):
    with pytest.raises(FrosterError, match=r"other settings.*--lr"):
        run(cfg(world, reference, epochs=3, save_every=2, lr=1e-3))
    with pytest.raises(FrosterError, match=r"--resume.*keeps its config.*--epochs 5"):
        run(TrainConfig(resume=reference, epochs=5, progress=False))


def test_cli_train_prints_the_run_directory_and_refuses_in_one_line(world, tmp_path):
    from typer.testing import CliRunner

    from froster.cli import app

    runner = CliRunner()
    out = tmp_path / "cli-run"
    result = runner.invoke(app, ["train", "--cache", str(world["store"]), "--protocol", str(world["small"]),
                                 "--run", "three", "--student", "clip", "--epochs", "2", "--warmup-epochs", "1",
                                 "--batch-size", "3", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out.resolve())
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["lr"] == 3.33e-6 and config["beta"] == 2.0 and config["student"] == "clip"  # the config defaults
    result = runner.invoke(app, ["train", "--cache", str(tmp_path / "none.zarr"), "--no-progress"])
    assert result.exit_code == 1 and "none.zarr" in result.output and "Traceback" not in result.output


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_training_matches_cpu(world, tmp_path, precision):
    """CUDA with autocast (bf16, or fp16 with the gradient scaler) gives the CPU run's first-step losses."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cpu = run(small(world, tmp_path / "cpu", student="vclip", zero_init=False))
    gpu = run(small(world, tmp_path / "gpu", student="vclip", zero_init=False, device="cuda", precision=precision,
                    num_workers=2))
    tol = 1e-4 if precision == "fp32" else 3e-2
    for k in ("ce", "fd_vision", "fd_text", "total"):
        assert steps(gpu)[0][k] == pytest.approx(steps(cpu)[0][k], rel=tol, abs=1e-4), k
    assert (gpu / "final.pt").is_file() and (gpu / "averaged.pt").is_file()
