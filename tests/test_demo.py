"""``froster demo --quick`` end to end (issue 8): every stage's output exists, the stores are complete, the printed
table has the four rows and the base / novel / HM columns; a rerun reuses what it made; DemoConfig's validation."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from froster.cli import app
from froster.pipeline.errors import ConfigError
from froster.stages.demo import DemoConfig, DemoRecipe

ROWS = ("Frozen teacher", "Fine-tuned (distill none)", "FROSTER (rfd)", "Ensemble (FROSTER + teacher)")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One ``froster demo --quick`` in a fresh folder (the teacher lands in that folder's cache/)."""
    root = tmp_path_factory.mktemp("demo")
    out = root / "demo"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = CliRunner().invoke(app, ["demo", "--quick", "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return root, out, result.stdout  # the table; the log went to stderr


def _table_rows(text: str) -> dict[str, list[str]]:
    """The first Markdown table of ``text``: {first cell: cells}, header included under its first cell."""
    rows = {}
    for line in text.splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not set(cells[0]) <= set(":-"):  # not the rule line
            rows[cells[0]] = cells
    return rows


def test_quick_demo_writes_every_stage_output(quick_demo):
    from froster.pipeline.store import FeatureStore
    from froster.pipeline.teacher import weights_in_local_dir

    root, out, _ = quick_demo
    # the worlds
    for world in ("world-A", "world-B"):
        facts = json.loads((out / world / "world.json").read_text())
        assert facts["complete"] and (out / world / "classes.txt").is_file() and (out / world / "test.txt").is_file()
    assert (out / "world-A" / "base.txt").is_file() and (out / "world-A" / "novel.txt").is_file()
    # the teacher: an open_clip local-dir folder under cache/
    teacher = root / "cache" / "toy-teacher-quick-seed0"
    assert (teacher / "open_clip_config.json").is_file() and weights_in_local_dir(teacher) is not None
    # descriptions, manifests, protocols
    for name in ("descriptions-A.json", "descriptions-B.json"):
        assert json.loads((out / name).read_text())["fallback"] is True
    for name in ("a_train", "a_test", "a_train_base", "b_test"):
        assert (out / "manifests" / f"{name}.parquet").is_file()
    assert (out / "protocols" / "base2novel.toml").is_file() and (out / "protocols" / "cross.toml").is_file()
    # stage one: complete stores
    for name in ("a_train", "a_test", "b_test"):
        store = FeatureStore.open(out / "cache" / f"{name}.zarr")
        assert store.complete and store.num_videos > 0
    # stage two: one run per method (one seed with --quick)
    for method in ("none", "rfd"):
        run_dir = out / "runs" / method / "seed1"
        assert (run_dir / "final.pt").is_file() and (run_dir / "averaged.pt").is_file()
        assert not (run_dir / "checkpoints").exists()  # the training state of a finished run is not kept
        assert json.loads((run_dir / "config.json").read_text())["config"]["distill"] == method
    assert not (out / "runs" / "none" / "seed2").exists()
    # stage three and the demo's report
    for rdir in (out / "reports" / "none", out / "reports" / "rfd", out / "reports" / "cross" / "rfd-seed1"):
        assert (rdir / "table.md").is_file() and (rdir / "metrics.parquet").is_file()
    assert (out / "report" / "table.md").is_file() and (out / "report" / "chart.png").stat().st_size > 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["seeds"] == [1] and set(summary["seconds"]) >= {"world", "teacher", "extract", "train", "evaluate"}


def test_quick_demo_prints_the_table(quick_demo):
    _, out, output = quick_demo
    assert output.startswith("# froster demo (quick)")  # stdout holds the table, the stages' prints went to the log
    assert (out / "report" / "table.md").read_text() in output
    rows = _table_rows(output)
    header = rows.pop("Method")
    assert header[1:4] == ["base", "novel", "HM"] and "world-B (cross)" in header
    assert tuple(rows) == ROWS
    for row in rows.values():
        assert len(row) == len(header)
        for cell in row[1:]:
            assert 0.0 <= float(cell) <= 100.0  # one seed: a number, no "±"
    assert "Is the world informative?" in output


def test_quick_demo_rerun_reuses_its_outputs(quick_demo):
    root, out, _ = quick_demo
    final = out / "runs" / "rfd" / "seed1" / "final.pt"
    store_attrs = out / "cache" / "a_train.zarr" / "zarr.json"
    before = final.stat().st_mtime_ns, store_attrs.stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = CliRunner().invoke(app, ["demo", "--quick", "--no-progress", "--no-cross-dataset", "--out",
                                          str(out)])
    assert result.exit_code == 0, result.output
    assert (final.stat().st_mtime_ns, store_attrs.stat().st_mtime_ns) == before
    assert "world-B (cross)" not in _table_rows(result.stdout)["Method"]


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"device": "tpu"}, "--device"),
        ({"seeds": ()}, "--seeds"),
        ({"seeds": (1, 1)}, "--seeds"),
        ({"seed": -1}, "--seed"),
    ],
)
def test_config_validation_names_the_option(kwargs, option):
    with pytest.raises(ConfigError, match=option):
        DemoConfig(**kwargs)


def test_recipe_validation_and_quick_choices():
    with pytest.raises(ConfigError, match="DemoRecipe"):
        DemoRecipe(epochs=2, batch_size=8, lr=1e-4, warmup_epochs=2.0)
    quick = DemoConfig(quick=True)
    assert quick.run_seeds == (1,) and quick.train_recipe == quick.quick_recipe
    default = DemoConfig()
    assert default.run_seeds == (1, 2, 3) and default.train_recipe == default.recipe
    assert [m.distill for m in default.methods] == ["none", "rfd"]
    assert len(DemoConfig(ablations=True).methods) == 9


@pytest.mark.slow
def test_quick_demo_with_ablations(tmp_path, monkeypatch):
    """--ablations adds the paper's Table 4 and Tables 5-6: 7 more runs, each with its row."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo", "--quick", "--ablations", "--no-cross-dataset", "--no-progress"])
    assert result.exit_code == 0, result.output
    for key in ("fd", "fd-mlp", "rfd-vision", "rfd-text", "rfd-no-zero-init", "rfd-alpha0.05", "rfd-alpha0.2"):
        config = json.loads((tmp_path / "demo" / "runs" / key / "seed1" / "config.json").read_text())["config"]
        assert (tmp_path / "demo" / "runs" / key / "seed1" / "final.pt").is_file()
        assert config["beta"] == 2.0 and config["student"] == "vclip"
    table = result.stdout
    for label in ("fd (no head)", "fd-mlp (MLP head)", "rfd, vision only", "rfd, text only", "rfd, no zero-init",
                  "rfd, alpha 0.05", "rfd, alpha 0.2"):
        assert f"| {label} " in table
