"""`froster distance`: class files and stores, the teacher's text features of the bare names, the measures against an
independent computation. The measures themselves on hand-made embeddings are in test_metrics.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from froster.cli import app
from froster.pipeline.errors import ConfigError, FrosterError
from froster.pipeline.manifests import build_manifest
from froster.pipeline.prompts import build_prompts
from froster.pipeline.store import FeatureStore
from froster.pipeline.teacher import TeacherSpec, load_clip, save_local_dir
from froster.stages.distance import DistanceConfig, run

SOURCE = ["archery", "riding bike", "playing guitar", "swimming"]
TARGET = ["Archery", "riding a horse", "playing violin"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("distance")
    torch.manual_seed(0)
    tiny = load_clip(TeacherSpec("froster-test-tiny", allow_random=True))
    teacher = save_local_dir(tiny.model, tiny.model_config, base / "teacher")
    (base / "source.txt").write_text("\n".join(SOURCE) + "\n")
    (base / "target.json").write_text(json.dumps({str(i): n for i, n in enumerate(TARGET)}))
    loaded = load_clip(TeacherSpec(f"local-dir:{teacher}"))
    return {"base": base, "teacher": teacher, "loaded": loaded}


def _embed(loaded, names) -> np.ndarray:
    with torch.no_grad():
        return F.normalize(loaded.model.encode_text(loaded.tokenizer(names)).double(), dim=-1).numpy()


def _store(world, name: str, classes: list[str]):
    """A store of the classes with teacher text features and no videos' worth of work: FeatureStore.create alone."""
    root = world["base"] / f"videos_{name}"
    for c in classes:
        (root / c).mkdir(parents=True)
        (root / c / "a.mp4").write_bytes(b"")
    m = build_manifest("folders", root, split="test")
    prompts = build_prompts(list(m.prompt_names), None)
    loaded = world["loaded"]
    text = _embed(loaded, [t for row in prompts.texts for t in row]).reshape(len(prompts.texts), len(classes), -1)
    attrs = {"teacher": loaded.provenance, "descriptions": None, "view_mode": "test"}
    return FeatureStore.create(world["base"] / f"{name}.zarr", manifest=m, prompts=prompts, text_features=text,
                               attrs=attrs, views=1, frames=1).path


def test_class_files_match_an_independent_computation(world):
    out = run(DistanceConfig(source=world["base"] / "source.txt", target=world["base"] / "target.json",
                             model=f"local-dir:{world['teacher']}", out=world["base"] / "r1"))
    got = json.loads((out / "distance.json").read_text())
    # names alone, as prompt names (no template): "Archery" stays "Archery" (one CamelCase word -> lowercased)
    from froster.pipeline.classnames import prompt_name

    s = _embed(world["loaded"], [prompt_name(n) for n in SOURCE])
    t = _embed(world["loaded"], [prompt_name(n) for n in TARGET])
    sim = t @ s.T  # [Kt, Ks]
    assert got["mean_max_similarity"] == pytest.approx(sim.max(1).mean(), abs=1e-5)
    assert got["min_max_similarity"] == pytest.approx(sim.max(1).min(), abs=1e-5)
    d = 1 - sim
    assert got["hausdorff"] == pytest.approx(max(d.min(1).max(), d.min(0).max()), abs=1e-5)
    i, j = np.unravel_index(np.argmax(sim), sim.shape)
    assert got["closest_pairs"][0] == {"target": TARGET[i], "source": SOURCE[j],
                                       "similarity": pytest.approx(sim[i, j], abs=1e-5)}
    assert len(got["closest_pairs"]) == 5
    assert "Hausdorff" in (out / "distance.md").read_text()


def test_store_without_descriptions_uses_its_bare_name_features(world):
    src, tgt = _store(world, "src", SOURCE), _store(world, "tgt", TARGET)
    from_stores = json.loads((run(DistanceConfig(source=src, target=tgt, out=world["base"] / "r2"))
                              / "distance.json").read_text())
    # the same names re-encoded by the stores' teacher (no --model): equal up to the stores' float16
    from_files = json.loads((run(DistanceConfig(source=world["base"] / "source.txt", target=world["base"] / "target.json",
                                                model=f"local-dir:{world['teacher']}", out=world["base"] / "r3"))
                             / "distance.json").read_text())
    for key in ("mean_max_similarity", "hausdorff", "min_max_similarity"):
        assert from_stores[key] == pytest.approx(from_files[key], abs=2e-3)
    # one store and one class file: the class file is encoded with the store's teacher
    mixed = json.loads((run(DistanceConfig(source=src, target=world["base"] / "target.json", out=world["base"] / "r4"))
                        / "distance.json").read_text())
    assert mixed["mean_max_similarity"] == pytest.approx(from_files["mean_max_similarity"], abs=2e-3)
    assert mixed["teacher"]["model"].startswith("local-dir:")


def test_remove_overlap(world):
    out = run(DistanceConfig(source=world["base"] / "source.txt", target=world["base"] / "target.json",
                             model=f"local-dir:{world['teacher']}", remove_overlap=True, out=world["base"] / "r5"))
    got = json.loads((out / "distance.json").read_text())
    assert got["target"]["removed_overlap"] == 1  # "Archery" ~ "archery"
    assert [p["target"] for p in got["per_target"]] == TARGET[1:]


def test_errors_name_the_option(world, tmp_path):
    with pytest.raises(ConfigError, match="--target"):
        DistanceConfig(source=world["base"] / "source.txt", target=tmp_path / "nope.txt")
    with pytest.raises(FrosterError, match="--model"):
        run(DistanceConfig(source=world["base"] / "source.txt", target=world["base"] / "target.json"))
    (tmp_path / "bad.txt").write_text("a\n\nb\n")
    with pytest.raises(FrosterError, match="--target"):
        run(DistanceConfig(source=world["base"] / "source.txt", target=tmp_path / "bad.txt",
                           model=f"local-dir:{world['teacher']}"))


def test_cli_prints_the_report(world):
    result = CliRunner().invoke(app, [
        "distance", "--source", str(world["base"] / "source.txt"), "--target", str(world["base"] / "target.json"),
        "--model", f"local-dir:{world['teacher']}", "--out", str(world["base"] / "r6"), "--pairs", "2"])
    assert result.exit_code == 0, result.output
    assert "authors' measure" in result.output and "| playing violin | playing guitar |" in result.output
    bad = CliRunner().invoke(app, ["distance", "--source", str(world["base"] / "source.txt"),
                                   "--target", str(world["base"] / "target.json")])
    assert bad.exit_code == 1 and "--model" in bad.output
