"""The command line's basics: --version, --help listing every command with a summary and an example, one-line user
errors without a traceback, the manifest and protocol commands end to end, and the package imported once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

import froster
from froster.cli import app

REPO = Path(froster.__file__).resolve().parent
runner = CliRunner()


def _commands() -> dict:
    """Every command and sub-command, by its full name ("protocol base2novel")."""
    root = typer.main.get_command(app)
    out = {}

    def walk(group, prefix: str) -> None:  # typer >= 0.25 carries its own click: duck-type groups
        for name, cmd in group.commands.items():
            out[f"{prefix}{name}"] = cmd
            if hasattr(cmd, "commands"):
                walk(cmd, f"{prefix}{name} ")

    walk(root, "")
    return out


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"froster {froster.__version__}"


def test_help_lists_every_command_with_summary_and_example():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = _commands()
    assert {"manifest", "protocol", "protocol base2novel", "protocol cross-dataset"} <= set(commands)
    for name, cmd in commands.items():
        if " " not in name:
            assert name in result.output, name
        short = cmd.get_short_help_str(limit=1000)
        assert short and ("e.g." in short.lower() or "example" in short.lower()), f"{name}: {short!r}"
        assert "froster " in short, f"{name}: the example should be a command line: {short!r}"


def test_no_args_shows_help():
    result = runner.invoke(app, [])
    assert "Usage" in result.output and "manifest" in result.output


def test_user_error_is_one_line_exit_1_no_traceback(tmp_path):
    """A real process: the exit code and stderr the user sees."""
    cmd = [sys.executable, "-m", "froster.cli", "manifest", "--format", "lists", "--annotations",
           str(tmp_path / "missing.txt"), "--classes", str(tmp_path / "classes.txt"), "--video-root", str(tmp_path),
           "--out", str(tmp_path / "m.parquet")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "classes.txt" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_config_error_exits_1(tmp_path):
    result = runner.invoke(app, ["manifest", "--format", "csv", "--video-root", str(tmp_path), "--out",
                                 str(tmp_path / "m.parquet")])
    assert result.exit_code == 1
    assert "error: --format: expected one of lists, kinetics, ucf101, hmdb51, folders" in result.output
    assert "Traceback" not in result.output


def test_manifest_and_protocol_commands(tmp_path):
    root = tmp_path / "videos"
    d = tmp_path / "hmdb"
    d.mkdir()
    classes = ["brush_hair", "cartwheel", "catch", "chew"]
    for k, c in enumerate(classes):
        lines = [f"{c}_{i}.avi {1 if i < 4 + k else 2} \n" for i in range(6 + k)]
        (d / f"{c}_test_split1.txt").write_text("".join(lines))
        (root / c).mkdir(parents=True)
    args = ["manifest", "--format", "hmdb51", "--annotations", str(d), "--video-root", str(root)]
    for split in ("train1", "test1"):
        result = runner.invoke(app, args + ["--split", split, "--out", str(tmp_path / f"hmdb_{split}.parquet")])
        assert result.exit_code == 0, result.output
    assert "videos: 22  classes: 4" in result.output or "classes: 4" in result.output
    assert "status: missing 8" in result.output and "failing videos: 8" in result.output
    # probing found nothing on disk, so every video is missing: no subset can be drawn from missing videos
    result = runner.invoke(app, ["manifest", *args, "--split", "train1", "--no-probe", "--out",
                                 str(tmp_path / "hmdb_train1.parquet")][1:])
    assert result.exit_code == 0 and "status: unprobed 22" in result.output
    out = tmp_path / "protocols" / "hmdb_b2n.toml"
    result = runner.invoke(app, ["protocol", "base2novel", "--train", str(tmp_path / "hmdb_train1.parquet"),
                                 "--test", str(tmp_path / "hmdb_test1.parquet"), "--shots", "2", "--seeds", "1,2",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "run seed2: 2 classes, 4 videos of hmdb_train1" in result.output and out.is_file()
    result = runner.invoke(app, ["protocol", "base2novel", "--train", str(tmp_path / "hmdb_train1.parquet"),
                                 "--test", str(tmp_path / "hmdb_test1.parquet"), "--shots", "99", "--out", str(out)])
    assert result.exit_code == 1 and "error: --shots 99: class" in result.output
    result = runner.invoke(app, ["protocol", "cross-dataset", "--source", str(tmp_path / "hmdb_train1.parquet"),
                                 "--target", "nothing", "--out", str(out)])
    assert result.exit_code == 1 and "error: --target: expected GROUP=MANIFEST[,MANIFEST...], got 'nothing'" in (
        result.output)


def test_package_is_imported_once_under_one_name():
    """Installing adds only `froster`; neither pytest nor the code imports the repository's folders as top-level
    `pipeline`, `stages` or `cli` modules (which would load every module twice)."""
    import froster.cli  # noqa: F401
    import froster.pipeline.manifests  # noqa: F401
    import froster.pipeline.protocols  # noqa: F401
    import froster.stages.manifest  # noqa: F401

    for name in ("pipeline", "stages", "cli"):
        assert name not in sys.modules, f"{name} imported as a top-level module"
    package_parts = {"__init__.py", "cli.py", "pipeline", "stages"}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file or REPO not in Path(file).resolve().parents:
            continue
        rel = Path(file).resolve().relative_to(REPO)
        if rel.parts[0] in package_parts:
            # pytest collects a folder holding __init__.py as a Package and imports that file under the folder's
            # name; the repository root is such a folder, so tests/conftest.py must have pytest collect it as a
            # plain directory (pytest_collect_directory returning pytest.Dir for the root).
            assert name == "froster" or name.startswith("froster."), f"{rel} imported as {name!r}, a second copy"
    errors = [m for m in sys.modules.values() if getattr(m, "__file__", None)
              and Path(m.__file__).resolve() == REPO / "pipeline" / "errors.py"]
    assert len(errors) == 1
