"""Stage three on a small generated set: the numbers `evaluate` reports equal an independent computation from the
store's arrays (teacher) and from a direct forward of the tuned model (tuned, ensemble); protocol mode, aggregation,
and the errors that name the missing file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from froster.pipeline.checkpoints import load_student, make_meta, save_checkpoint, weights_payload
from froster.pipeline.errors import ConfigError, FrosterError
from froster.pipeline.manifests import build_manifest, probe_manifest, write_manifest
from froster.pipeline.protocols import build_cross_dataset, write_protocol
from froster.pipeline.store import FeatureStore
from froster.pipeline.students import create_student
from froster.pipeline.teacher import TeacherSpec, load_clip, save_local_dir, tokenizer_for
from froster.pipeline.video import read_frames
from froster.pipeline.videowriter import frame_numbered, write_video
from froster.pipeline.views import render_view
from froster.stages import evaluate
from froster.stages.extract_teacher import ExtractConfig
from froster.stages.extract_teacher import run as extract

T = 4
CLASSES = ("archery", "bowling", "cycling")


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Nine short videos of three classes (one deleted after probing), a test store made by stage one with a tiny
    random teacher, and a 'tuned' checkpoint: the teacher with perturbed weights."""
    base = tmp_path_factory.mktemp("eval")
    root = base / "videos"
    for c, name in enumerate(CLASSES):
        for k in range(3):
            write_video(root / name / f"v{k}.mp4", frame_numbered(24 + 6 * k, 32, 40, seed=10 * c + k), fps=25.0)
    m = probe_manifest(build_manifest("folders", root, split="test"), workers=2)
    (root / "cycling" / "v2.mp4").unlink()  # extraction records it as missing
    manifest = write_manifest(m, base / "manifests" / "toy_test.parquet")

    torch.manual_seed(0)
    tiny = load_clip(TeacherSpec("froster-test-tiny", allow_random=True))
    teacher_dir = save_local_dir(tiny.model, tiny.model_config, base / "teacher")
    store = extract(ExtractConfig(out=base / "cache" / "toy.zarr", manifest=manifest,
                                  model=f"local-dir:{teacher_dir}", pretrained=None, frames=T, block_rows=4,
                                  batch_size=3, decode_threads=1, progress=False))

    loaded = load_clip(TeacherSpec(f"local-dir:{teacher_dir}"))
    student = create_student("clip", loaded.model, T)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in student.parameters():
            if p.numel() > 1:  # not logit_scale
                p.add_(0.05 * torch.randn(p.shape, generator=g) * p.std())
    meta = make_meta(student="clip", num_frames=T, options={}, teacher=loaded.provenance, vocabulary=list(CLASSES),
                     prompt_names=list(CLASSES), epoch=3, kind="averaged")
    ckpt = save_checkpoint(base / "runs" / "full" / "averaged.pt", weights_payload(student.state_dict(), {}, meta))
    return {"base": base, "root": root, "manifest": manifest, "store": store, "ckpt": ckpt}


@pytest.fixture(scope="module")
def single(world):
    out = evaluate.run(evaluate.EvaluateConfig(cache=world["store"], checkpoint=world["ckpt"],
                                               out=world["base"] / "report", workers=0, progress=False))
    return out


def _teacher_scores(store: FeatureStore) -> tuple[np.ndarray, np.ndarray]:
    """Independent: normalise frames, mean over T, sum over the 3 clips, dot the normalised mean prompt embedding."""
    feats = store.video_features[:].astype(np.float64)  # [N, V, T, D]
    video = _norm(feats).mean(axis=2).sum(axis=1)  # [N, D]
    text = store.text_features[:].astype(np.float64)  # [P, C, D]
    classifier = _norm(_norm(text).mean(axis=0))  # [C, D]
    ok = np.asarray(store.done[:]) & np.array([s == "ok" for s in store.manifest.column("status")])
    return video @ classifier.T, ok


def _tuned_scores(world, store: FeatureStore, rows) -> np.ndarray:
    """Independent: the tuned model over the rebuilt pixels of each stored clip, and its text tower over the prompts."""
    student, _ = load_student(world["ckpt"])
    tok = tokenizer_for(TeacherSpec(f"local-dir:{world['base'] / 'teacher'}"))
    texts = store.prompts.texts
    P, C = len(texts), len(texts[0])
    with torch.no_grad():
        emb = student.clip.encode_text(tok([t for row in texts for t in row])).double().reshape(P, C, -1)
        classifier = torch.nn.functional.normalize(torch.nn.functional.normalize(emb, dim=-1).mean(0), dim=-1)
        a = store.attrs
        out = []
        for r in rows:
            path = store.manifest.video_root / store.manifest.column("path")[r]
            clips = []
            for v in store.views(int(r)):
                px = render_view(read_frames(path, v.frame_index), v.crop, v.flip, a["image_size"], a["mean"], a["std"])
                f = torch.nn.functional.normalize(student.encode_frames(px[None]).double(), dim=-1)  # [1, T, D]
                clips.append(f.mean(dim=1))
            out.append(torch.cat(clips).sum(0) @ classifier.T)
    return torch.stack(out).numpy()


def test_teacher_row_and_predictions_equal_the_store(world, single):
    store = FeatureStore.open(world["store"])
    scores, ok = _teacher_scores(store)
    labels = np.array(store.manifest.column("label"))
    expect_top1 = 100.0 * np.mean(scores[ok].argmax(axis=1) == labels[ok])
    expect_top5 = 100.0  # three classes: top-5 holds every class

    metrics = {r["method"]: r for r in pq.read_table(single / "metrics.parquet").to_pylist()}
    assert metrics["teacher"]["top1"] == pytest.approx(expect_top1)
    assert metrics["teacher"]["top5"] == pytest.approx(expect_top5)
    assert metrics["teacher"]["videos"] == ok.sum() == 8
    assert metrics["teacher"]["failed"] == metrics["teacher"]["failed_extraction"] == 1

    preds = pq.read_table(single / "predictions.parquet").to_pylist()
    assert [p["video_id"] for p in preds] == store.manifest.column("video_id")
    for row, p in enumerate(preds):
        assert p["label"] == labels[row] and p["evaluated"] == ok[row]
        if not ok[row]:
            assert p["teacher_top5"] is None and p["status"].startswith("missing")
            continue
        order = np.argsort(-scores[row], kind="stable")
        assert p["teacher_top5"] == order.tolist()
        np.testing.assert_allclose(p["teacher_top5_scores"], scores[row][order], atol=1e-5)
        assert p["teacher_top5_names"] == [CLASSES[i] for i in order]


def test_tuned_and_ensemble_rows_equal_a_direct_forward(world, single):
    store = FeatureStore.open(world["store"])
    teacher, ok = _teacher_scores(store)
    rows = np.flatnonzero(ok)
    tuned = _tuned_scores(world, store, rows)  # [n, C]
    preds = pq.read_table(single / "predictions.parquet").to_pylist()
    labels = np.array(store.manifest.column("label"))[rows]
    for k, r in enumerate(rows):
        p = preds[r]
        got = dict(zip(p["tuned_top5"], p["tuned_top5_scores"]))
        np.testing.assert_allclose([got[c] for c in range(3)], tuned[k], atol=1e-4)
        ens = dict(zip(p["ensemble_top5"], p["ensemble_top5_scores"]))
        np.testing.assert_allclose([ens[c] for c in range(3)], teacher[r] + tuned[k], atol=1e-4)
    metrics = {r["method"]: r for r in pq.read_table(single / "metrics.parquet").to_pylist()}
    assert metrics["tuned"]["top1"] == pytest.approx(100.0 * np.mean(tuned.argmax(1) == labels))
    assert metrics["ensemble"]["top1"] == pytest.approx(100.0 * np.mean((teacher[rows] + tuned).argmax(1) == labels))


def test_result_directory(world, single):
    assert {p.name for p in single.iterdir()} == {
        "predictions.parquet", "metrics.parquet", "summary.parquet", "table.md", "chart.png", "config.json"}
    table = (single / "table.md").read_text()
    assert "Frozen teacher" in table and "Ensemble" in table and str(world["ckpt"]) in table
    assert "averaged checkpoint, epoch 3" in table
    config = json.loads((single / "config.json").read_text())
    assert config["config"]["checkpoint"] == str(world["ckpt"])


def test_decoding_in_worker_processes_gives_the_same_predictions(world, single):
    out = evaluate.run(evaluate.EvaluateConfig(cache=world["store"], checkpoint=world["ckpt"],
                                               out=world["base"] / "report-w", workers=1, batch_size=3,
                                               progress=False))
    a = pq.read_table(single / "predictions.parquet").to_pylist()
    b = pq.read_table(out / "predictions.parquet").to_pylist()
    for x, y in zip(a, b):
        assert x["tuned_top5"] == y["tuned_top5"]
        if x["tuned_top5_scores"] is not None:
            np.testing.assert_allclose(x["tuned_top5_scores"], y["tuned_top5_scores"], atol=1e-5)


def test_protocol_mode_finds_store_and_checkpoint(world, tmp_path, monkeypatch):
    proto = build_cross_dataset(world["manifest"], [("toy", [world["manifest"]])], name="toy-cross")
    path = write_protocol(proto, tmp_path / "protocols" / "cross-dataset.toml")
    monkeypatch.chdir(tmp_path)
    # the store is found by its manifest fingerprint in --stores, the checkpoint as <runs>/<run>/averaged.pt
    out = evaluate.run(evaluate.EvaluateConfig(
        protocols=("cross-dataset",), stores_dir=world["base"] / "cache", runs_dir=world["base"] / "runs",
        workers=0, progress=False))
    assert out == Path("reports") / "cross-dataset"
    table = (out / "table.md").read_text()
    assert "Table 2" in table and "| Method" in table and str(world["ckpt"]) in table
    summary = {(r["method"], r["column"]): r for r in pq.read_table(out / "summary.parquet").to_pylist()}
    metrics = {r["method"]: r for r in pq.read_table(out / "metrics.parquet").to_pylist()}
    assert summary[("teacher", "toy")]["mean"] == pytest.approx(metrics["teacher"]["top1"])
    assert path.is_file()


def test_protocol_errors_name_the_missing_file(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FrosterError, match="no protocols/ folder"):
        evaluate.resolve_protocol_path("base2novel")
    (tmp_path / "protocols").mkdir()
    (tmp_path / "protocols" / "k400-cross.toml").write_text("")
    with pytest.raises(FrosterError, match=r"protocols/base2novel\.toml.*k400-cross\.toml"):
        evaluate.resolve_protocol_path("base2novel")

    proto = build_cross_dataset(world["manifest"], [("toy", [world["manifest"]])], name="toy-cross")
    path = write_protocol(proto, tmp_path / "protocols" / "p.toml")
    # no checkpoint in the run directory: the error names the file it looked for
    with pytest.raises(FrosterError, match=r"full/averaged\.pt"):
        evaluate.run(evaluate.EvaluateConfig(protocols=(str(path),), stores_dir=world["base"] / "cache",
                                             runs_dir=tmp_path / "runs", workers=0, progress=False))
    # a manifest the protocol names is gone: the error names it
    moved = tmp_path / "toy_test.parquet"
    text = path.read_text().replace(os.path.relpath(world["manifest"], path.parent), "gone/toy_test.parquet")
    path.write_text(text)
    with pytest.raises(FrosterError, match=r"gone/toy_test\.parquet"):
        evaluate.run(evaluate.EvaluateConfig(protocols=(str(path),), workers=0, progress=False))
    assert not moved.exists()


def test_config_validation():
    with pytest.raises(ConfigError, match="either --protocol"):
        evaluate.EvaluateConfig()
    with pytest.raises(ConfigError, match="--checkpoint"):
        evaluate.EvaluateConfig(cache=Path("x.zarr"))
    with pytest.raises(ConfigError, match="--device"):
        evaluate.EvaluateConfig(protocols=("p",), device="tpu")


def test_aggregate_base2novel_on_hand_made_records():
    def rec(run, group, method, top1):
        return {"run": run, "group": group, "method": method, "top1": top1, "column": "HMDB"}

    records = []
    for m, (b1, n1, b2, n2) in {"teacher": (60, 40, 62, 42), "tuned": (80, 40, 78, 44),
                                "ensemble": (82, 50, 84, 52)}.items():
        records += [rec("s1", "base", m, b1), rec("s1", "novel", m, n1), rec("s2", "base", m, b2),
                    rec("s2", "novel", m, n2)]
    cells, columns, rows = evaluate.aggregate(records, "base2novel", ddof=0)
    assert columns == ["HMDB base", "HMDB novel", "HMDB HM"]
    assert cells[("tuned", "HMDB base")].mean == pytest.approx(79.0)
    assert cells[("tuned", "HMDB base")].std == pytest.approx(1.0)  # population std of 80, 78
    assert cells[("tuned", "HMDB novel")].mean == pytest.approx(42.0)
    assert cells[("tuned", "HMDB HM")].mean == pytest.approx(2 * 79 * 42 / (79 + 42))  # HM of the means
    per_run = [2 * 80 * 40 / 120, 2 * 78 * 44 / 122]
    assert cells[("tuned", "HMDB HM (mean of runs)")].mean == pytest.approx(np.mean(per_run))
    assert cells[("tuned", "HMDB HM [run s2]")].mean == pytest.approx(per_run[1])
    assert cells[("ensemble", "HMDB HM")].mean == pytest.approx(2 * 83 * 51 / 134)
    assert len(rows) == len(cells)


def test_aggregate_cross_dataset_mean_std_over_splits():
    records = [{"run": "full", "group": "ucf", "column": "ucf", "method": m, "top1": v}
               for m in evaluate.METHODS for v in (70.0, 72.0, 74.0)]
    records += [{"run": "full", "group": "ucf-full", "column": "ucf-full", "method": m, "top1": 71.0}
                for m in evaluate.METHODS]
    cells, columns, _ = evaluate.aggregate(records, "cross-dataset", ddof=1)
    assert columns == ["ucf", "ucf-full"]
    assert cells[("teacher", "ucf")].mean == pytest.approx(72.0)
    assert cells[("teacher", "ucf")].std == pytest.approx(2.0)  # sample std, as the protocol's ddof says
    assert cells[("teacher", "ucf-full")].n == 1


def test_cli_prints_the_table(world, single):
    from typer.testing import CliRunner

    from froster.cli import app

    result = CliRunner().invoke(app, ["evaluate", "--cache", str(world["store"]), "--checkpoint", str(world["ckpt"]),
                                      "--out", str(world["base"] / "report-cli"), "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (single / "table.md").read_text().splitlines()[4] in result.output  # the table's first row
    bad = CliRunner().invoke(app, ["evaluate", "--protocol", "nothing-here", "--no-progress"])
    assert bad.exit_code == 1 and "nothing-here" in bad.output


@pytest.mark.slow
def test_end_to_end_train_then_evaluate(world, tmp_path):
    """extract (the fixture) -> train (stage two, 2 epochs of the vclip student) -> evaluate its final.pt."""
    from froster.stages.train import TrainConfig
    from froster.stages.train import run as train

    run_dir = train(TrainConfig(cache=world["store"], out=tmp_path / "run", student="vclip", epochs=2,
                                warmup_epochs=0.0, average_from=1, batch_size=4, lr=1e-4, progress=False))
    out = evaluate.run(evaluate.EvaluateConfig(cache=world["store"], checkpoint=run_dir / "final.pt",
                                               out=tmp_path / "report", workers=0, progress=False))
    metrics = {r["method"]: r for r in pq.read_table(out / "metrics.parquet").to_pylist()}
    assert metrics["tuned"]["checkpoint_kind"] == "last" and metrics["tuned"]["checkpoint_epoch"] == 2
    assert metrics["tuned"]["videos"] == 8 and 0.0 <= metrics["tuned"]["top1"] <= 100.0


def test_base2novel_protocol_gives_table1(world, tmp_path, monkeypatch):
    from froster.pipeline.protocols import build_base2novel

    # 3 classes: base = archery, bowling (ties broken by name), novel = cycling; two runs (seeds), one checkpoint
    proto = build_base2novel(world["manifest"], world["manifest"], seeds=(1, 2), shots=1, name="toy-b2n")
    path = write_protocol(proto, tmp_path / "protocols" / "base2novel.toml")
    monkeypatch.chdir(tmp_path)
    out = evaluate.run(evaluate.EvaluateConfig(
        protocols=("base2novel",), stores_dir=world["base"] / "cache",
        run_checkpoints=tuple((r.name, world["ckpt"]) for r in proto.runs), workers=0, progress=False))
    table = (out / "table.md").read_text()
    assert "toy-b2n base | toy-b2n novel | toy-b2n HM" in table.replace("  ", " ")
    metrics = pq.read_table(out / "metrics.parquet").to_pylist()
    teacher = {(r["run"], r["group"]): r for r in metrics if r["method"] == "teacher"}
    assert {k[0] for k in teacher} == {r.name for r in proto.runs}
    assert teacher[(proto.runs[0].name, "novel")]["classes"] == 1  # novel set: its own label space
    assert teacher[(proto.runs[0].name, "novel")]["top1"] == 100.0  # one class: always right
    b = teacher[(proto.runs[0].name, "base")]["top1"]
    summary = {(r["method"], r["column"]): r for r in pq.read_table(out / "summary.parquet").to_pylist()}
    assert summary[("teacher", "toy-b2n HM")]["mean"] == pytest.approx(2 * b * 100 / (b + 100) if b else 0.0)
    assert path.is_file()
