"""Stage one end to end on real video files: exact features, failures, kill -9 and resume, dask, refusals, no-op."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from froster.pipeline.errors import ConfigError, FrosterError
from froster.pipeline.manifests import COLUMNS, build_manifest, probe_manifest, write_manifest
from froster.pipeline.store import FeatureStore
from froster.pipeline.teacher import TeacherSpec, load_clip, save_local_dir
from froster.pipeline.video import read_frames
from froster.pipeline.videowriter import frame_numbered, write_video
from froster.pipeline.views import render_view, train_views
from froster.stages.extract_teacher import ExtractConfig, run

T, V = 4, 2
ATOL = 2e-3  # fp16 storage of unit vectors: a half-ulp is <= 2.5e-4; batching changes fp32 sums by far less

# (relative path, frames, fps, height, width, codec): h264 mp4 and mpeg4 avi; 25, 29.97, 30 fps; landscape, portrait.
# decord cannot read 48-pixel-wide frames (it reports a buffer size mismatch), so widths avoid 48.
GOOD = [
    ("jumping_jacks/a.mp4", 40, 25.0, 32, 64, "h264"),
    ("jumping_jacks/b.avi", 50, 29.97, 48, 32, "mpeg4"),
    ("riding_bike/c.mp4", 60, 30.0, 32, 40, "h264"),
]
EXPECTED_FAILURES = {
    "riding_bike/d": "undecodable",  # probed ok, but the manifest claims 400 frames: decoding fails mid-way
    "riding_bike/e": "undecodable",  # garbage bytes
    "riding_bike/f": "empty",  # zero bytes
    "jumping_jacks/g": "missing",  # deleted after the manifest was written
}
COPIES = 5  # each good video listed again under other ids, so there are enough rows for several blocks


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Videos, a manifest (with every kind of failure) and the tiny teacher saved as an open_clip local folder."""
    base = tmp_path_factory.mktemp("world")
    root = base / "videos"
    for i, (rel, n, fps, h, w, codec) in enumerate(GOOD):
        write_video(root / rel, frame_numbered(n, h, w, seed=i), fps=fps, codec=codec)
    write_video(root / "riding_bike/d.avi", frame_numbered(30, 40, 32, seed=7), fps=30.0, codec="mpeg4")
    (root / "riding_bike/e.mp4").write_bytes(b"not a video " * 50)
    (root / "riding_bike/f.mp4").write_bytes(b"")
    write_video(root / "jumping_jacks/g.mp4", frame_numbered(10, 32, 40), fps=30.0)

    m = probe_manifest(build_manifest("folders", root, split="train"), workers=2)
    (root / "jumping_jacks/g.mp4").unlink()
    table = m.table
    frames = table.column("frames").to_pylist()
    frames[table.column("video_id").to_pylist().index("riding_bike/d")] = 400
    table = table.set_column(COLUMNS.index("frames"), "frames", pa.array(frames, pa.int64()))
    good_ids = {rel.rsplit(".", 1)[0] for rel, *_ in GOOD}
    good = table.filter(pa.array([v in good_ids for v in table.column("video_id").to_pylist()]))
    copies = []
    for k in range(COPIES):
        ids = pa.array([f"copy{k}/{v}" for v in good.column("video_id").to_pylist()], pa.string())
        copies.append(good.set_column(0, "video_id", ids))
    m = dataclasses.replace(m, table=pa.concat_tables([table, *copies]))
    manifest = write_manifest(m, base / "train.parquet")

    torch.manual_seed(0)
    tiny = load_clip(TeacherSpec("froster-test-tiny", allow_random=True))
    teacher = save_local_dir(tiny.model, tiny.model_config, base / "teacher")
    return {"base": base, "root": root, "manifest": manifest, "teacher": teacher, "rows": len(m.table)}


def config(world, out, **kw) -> ExtractConfig:
    defaults = dict(
        out=out, manifest=world["manifest"], model=f"local-dir:{world['teacher']}", frames=T, views=V,
        block_rows=4, batch_size=3, decode_threads=2, progress=False,
    )
    return ExtractConfig(**{**defaults, **kw})


@pytest.fixture(scope="module")
def reference(world):
    """One uninterrupted single-process run."""
    return FeatureStore.open(run(config(world, world["base"] / "ref.zarr")))


def assert_same_store(a: FeatureStore, b: FeatureStore) -> None:
    np.testing.assert_array_equal(a.done[:], b.done[:])
    for name in ("frame_index", "crop", "flip"):
        np.testing.assert_array_equal(getattr(a, name)[:], getattr(b, name)[:], err_msg=name)
    np.testing.assert_allclose(a.video_features[:].astype(np.float32), b.video_features[:].astype(np.float32),
                               atol=ATOL)
    np.testing.assert_array_equal(a.text_features[:], b.text_features[:])
    assert a.manifest.column("status") == b.manifest.column("status")
    assert a.complete and b.complete


def test_features_are_the_teachers_on_rebuilt_pixels(world, reference):
    store = reference
    loaded = load_clip(TeacherSpec(f"local-dir:{world['teacher']}"))
    m = store.manifest
    ids, status = m.column("video_id"), m.column("status")
    assert store.num_videos == world["rows"] and store.complete
    assert {i: s for i, s in zip(ids, status) if s != "ok"} == EXPECTED_FAILURES
    assert all(r for r, s in zip(m.column("reason"), status) if s != "ok")  # every failure says why
    done = np.asarray(store.done[:])
    np.testing.assert_array_equal(done, [s == "ok" for s in status])
    assert not np.any(store.video_features[:][~done])  # failed rows keep their row, zero and not done

    for row in np.flatnonzero(done):
        views = store.views(int(row))
        frames, fps, w, h = (m.column(c)[row] for c in ("frames", "fps", "width", "height"))
        assert views == train_views(0, ids[row], frames, fps, w, h, T, V)  # the stored views are the sampled ones
        st = os.stat(m.file(int(row)))
        assert (m.column("size")[row], m.column("mtime")[row]) == (st.st_size, st.st_mtime)
        pixels = torch.cat([
            render_view(read_frames(m.file(int(row)), v.frame_index), v.crop, v.flip, loaded.image_size,
                        loaded.mean, loaded.std)
            for v in views
        ])  # [V * T, 3, S, S]
        with torch.no_grad():
            expected = F.normalize(loaded.model.encode_image(pixels), dim=-1).reshape(V, T, -1)  # [V, T, D]
        np.testing.assert_allclose(store.video_features[row].astype(np.float32), expected.numpy(), atol=ATOL)

    texts = store.prompts.texts  # [P][C]
    assert len(texts) == 29 and texts[28] == m.prompt_names
    with torch.no_grad():
        tokens = loaded.tokenizer([t for row in texts for t in row])
        expected = F.normalize(loaded.model.encode_text(tokens), dim=-1).reshape(29, len(m.prompt_names), -1)
    np.testing.assert_allclose(store.text_features[:].astype(np.float32), expected.numpy(), atol=ATOL)

    a = store.attrs
    assert a["teacher"]["checkpoint_sha256"] and a["teacher"]["quick_gelu"] is False
    assert (a["frames"], a["views"], a["view_mode"], a["image_size"]) == (T, V, "train", loaded.image_size)
    assert a["counts"]["failed"] == 4 and a["counts"]["by_status"] == {"ok": int(done.sum()), "undecodable": 2,
                                                                      "empty": 1, "missing": 1}


def test_info_prints_counts_and_failures(reference, capsys):
    from froster.stages.info import InfoConfig
    from froster.stages.info import run as info

    info(InfoConfig(reference.path))
    text = capsys.readouterr().out
    assert f"videos: {reference.num_videos}  done: {reference.num_videos - 4}  failed: 4" in text
    assert "empty 1, missing 1, undecodable 2" in text
    assert "riding_bike/d  undecodable: " in text and "state: complete" in text


def test_test_split_gets_three_centre_clips(world, tmp_path):
    m = probe_manifest(build_manifest("folders", world["root"], split="test1"), workers=2)
    path = write_manifest(dataclasses.replace(m, table=m.table.filter(pa.array(
        [s == "ok" for s in m.column("status")]))), tmp_path / "test.parquet")
    store = FeatureStore.open(run(config(world, tmp_path / "test.zarr", manifest=path, views=None)))
    assert store.attrs["view_mode"] == "test" and store.num_views == 3
    assert not np.any(store.flip[:]) and bool(np.all(store.done[:]))
    for row, (w, h) in enumerate(zip(store.manifest.column("width"), store.manifest.column("height"))):
        side = min(w, h)
        x0, y0 = (w - side) // 2, (h - side) // 2
        np.testing.assert_array_equal(store.crop[row], [[x0, y0, x0 + side, y0 + side]] * 3)
        fi = np.asarray(store.frame_index[row])  # [3, T]
        assert fi[0, 0] == 0 and fi[2, -1] == store.manifest.column("frames")[row] - 1  # start to end


def test_kill_9_then_rerun_equals_uninterrupted(world, reference, tmp_path):
    from typer.testing import CliRunner

    from froster.cli import app

    out = tmp_path / "killed.zarr"
    args = [
        "extract-teacher", "--manifest", str(world["manifest"]), "--model", f"local-dir:{world['teacher']}",
        "--frames", str(T), "--views", str(V), "--block-rows", "1", "--batch-size", "1", "--decode-threads", "1",
        "--no-progress", "--out", str(out),
    ]
    with open(tmp_path / "log.txt", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "froster.cli", *args], stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        while True:
            written = len(list((out / "blocks").glob("*.json"))) if out.exists() else 0
            if written >= 3:
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert proc.poll() is None, (tmp_path / "log.txt").read_text()
            assert time.monotonic() < deadline, "extraction did not start"
            time.sleep(0.005)
        proc.wait()
    killed = FeatureStore.open(out)
    assert not killed.complete and 0 < len(killed.pending_blocks()) < killed.num_blocks
    from froster.stages.info import report

    assert report(killed)[1].startswith("state: incomplete")

    result = CliRunner().invoke(app, args)  # the same command, again
    assert result.exit_code == 0, result.output
    assert_same_store(FeatureStore.open(out), reference)


def test_dask_workers_and_scheduler_equal_one_process(world, reference, tmp_path):
    from distributed import LocalCluster

    # --workers 2: the stage's own LocalCluster of two worker processes, one task per row block.
    via_workers = run(config(world, tmp_path / "workers.zarr", workers=2))
    # --scheduler: a cluster the test starts on 127.0.0.1 (TCP). Its two workers are threads of this process, which
    # spares two more interpreter start-ups (torch and open_clip imports) and still writes blocks concurrently.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=":0") as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        via_scheduler = run(config(world, tmp_path / "scheduler.zarr", scheduler=cluster.scheduler_address))
    for path in (via_workers, via_scheduler):
        assert_same_store(FeatureStore.open(path), reference)  # every row present, same values


def test_changed_settings_are_refused_by_name(world, reference, tmp_path):
    with pytest.raises(FrosterError) as e:
        run(config(world, reference.path, frames=T + 1, seed=3))
    msg = str(e.value)
    assert "frames: store has 4, this run 5" in msg and "seed: store has 0, this run 3" in msg
    assert "views" not in msg and "--overwrite" in msg

    torch.manual_seed(1)
    other = load_clip(TeacherSpec("froster-test-tiny", allow_random=True))
    folder = save_local_dir(other.model, other.model_config, tmp_path / "other-teacher")
    with pytest.raises(FrosterError, match="teacher.checkpoint_sha256"):
        run(config(world, reference.path, model=f"local-dir:{folder}"))


def test_complete_store_is_a_quick_no_op(world, reference, monkeypatch):
    import froster.stages.extract_teacher as stage

    def no_teacher(*a, **k):
        raise AssertionError("a complete store must not load the teacher")

    monkeypatch.setattr(stage, "_load_teacher", no_teacher)
    before = (reference.path / "zarr.json").stat().st_mtime_ns
    start = time.monotonic()
    assert run(config(world, reference.path)) == reference.path
    assert time.monotonic() - start < 2.0
    assert (reference.path / "zarr.json").stat().st_mtime_ns == before


def test_user_errors(world, tmp_path):
    with pytest.raises(FrosterError, match="random weights"):
        run(config(world, tmp_path / "r.zarr", model="froster-test-tiny"))
    with pytest.raises(FrosterError, match=r"--split 'val': no row .* found \['train'\]"):
        run(config(world, tmp_path / "r.zarr", split="val"))
    with pytest.raises(ConfigError, match="--batch-size"):
        config(world, tmp_path / "r.zarr", batch_size=0)
    with pytest.raises(ConfigError, match="--view-mode"):
        config(world, tmp_path / "r.zarr", view_mode="both")
    with pytest.raises(ConfigError, match="--workers N or --scheduler"):
        config(world, tmp_path / "r.zarr", workers=2, scheduler="tcp://127.0.0.1:1")
    assert not (tmp_path / "r.zarr").exists()


def test_cli_from_annotations_with_descriptions_then_overwrite(world, tmp_path):
    from typer.testing import CliRunner

    from froster.cli import app

    (tmp_path / "desc.csv").write_text(
        "class,description\n"
        "jumping_jacks,jumping with arms and legs spread\njumping_jacks,a warm-up exercise\n"
        "riding_bike,pedalling a bicycle\nriding_bike,cycling on a road\n"
    )
    out = tmp_path / "cli.zarr"
    args = [
        "extract-teacher", "--format", "folders", "--video-root", str(world["root"]), "--split", "val",
        "--model", f"local-dir:{world['teacher']}", "--frames", "2", "--descriptions", str(tmp_path / "desc.csv"),
        "--no-progress", "--out", str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    store = FeatureStore.open(out)
    assert store.attrs["view_mode"] == "test" and store.num_views == 3  # "val" is a test split
    assert store.text_features.shape[:2] == (58, 2)  # P = 29 x 2 descriptions
    texts = store.prompts.texts
    assert texts[28] == ["jumping jacks: jumping with arms and legs spread", "riding bike: pedalling a bicycle"]
    assert texts[29 + 28][1] == "riding bike: cycling on a road"
    loaded = load_clip(TeacherSpec(f"local-dir:{world['teacher']}"))
    with torch.no_grad():
        expected = F.normalize(loaded.model.encode_text(loaded.tokenizer([texts[30][0]])), dim=-1)[0]
    np.testing.assert_allclose(store.text_features[30, 0].astype(np.float32), expected.numpy(), atol=ATOL)
    assert store.attrs["descriptions"]["sha256"]

    info = CliRunner().invoke(app, ["info", str(out)])
    assert info.exit_code == 0
    assert "videos: 6  done: 4  failed: 2 (empty 1, undecodable 1)" in info.stdout

    refused = CliRunner().invoke(app, [*args[:-2], "--frames", "3", "--out", str(out)])
    assert refused.exit_code == 1 and "frames: store has 2, this run 3" in refused.output
    assert "Traceback" not in refused.output
    result = CliRunner().invoke(app, [*args, "--frames", "3", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert FeatureStore.open(out).attrs["frames"] == 3 and FeatureStore.open(out).complete
