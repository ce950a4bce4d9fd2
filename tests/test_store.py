"""The feature store: layout, codecs, block writes and their resume rule, finalize, settings comparison."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import zarr

from froster.pipeline.errors import FrosterError
from froster.pipeline.manifests import SCHEMA, Manifest
from froster.pipeline.prompts import build_prompts
from froster.pipeline.store import FeatureStore, differing_settings, manifest_fingerprint
from froster.pipeline.views import View

V, T, D = 2, 3, 8


def make_manifest(n: int, root: Path) -> Manifest:
    table = pa.table(
        {
            "video_id": [f"c{i % 2}/v{i}" for i in range(n)],
            "path": [f"c{i % 2}/v{i}.mp4" for i in range(n)],
            "label": pa.array([i % 2 for i in range(n)], pa.int32()),
            "class_name": [f"class_{i % 2}" for i in range(n)],
            "prompt_name": [f"class {i % 2}" for i in range(n)],
            "split": ["train"] * n,
            "frames": pa.array([0] * n, pa.int64()),
            "fps": [0.0] * n,
            "width": pa.array([0] * n, pa.int32()),
            "height": pa.array([0] * n, pa.int32()),
            "size": pa.array([-1] * n, pa.int64()),
            "mtime": [-1.0] * n,
            "status": ["unprobed"] * n,
            "reason": [""] * n,
        },
        schema=SCHEMA,
    )
    return Manifest(table, ["class_0", "class_1"], ["class 0", "class 1"], root, "test")


def make_store(path: Path, n: int = 10, block_rows: int = 4, attrs: dict | None = None) -> FeatureStore:
    manifest = make_manifest(n, path.parent)
    prompts = build_prompts(manifest.prompt_names)
    text = np.random.default_rng(0).normal(size=(prompts.num_prompts, 2, D)).astype(np.float32)
    return FeatureStore.create(
        path, manifest=manifest, prompts=prompts, text_features=text, attrs=attrs or {"seed": 0},
        views=V, frames=T, block_rows=block_rows,
    )


def block_arrays(store: FeatureStore, block: int, failed: tuple[int, ...] = ()):
    """Deterministic contents of a block: row r's values are functions of r; rows in ``failed`` failed."""
    lo, hi = store.block_range(block)
    rows = np.arange(lo, hi)
    ok = np.array([r not in failed for r in rows])
    feats = (rows[:, None, None, None] + np.arange(V * T * D).reshape(V, T, D) / 100).astype(np.float16)
    feats[~ok] = 0
    records = [
        {"row": int(r), "status": "ok" if k else "undecodable", "reason": "" if k else f"bad {r}", "frames": int(r) + 5}
        for r, k in zip(rows, ok)
    ]
    return dict(
        features=feats,
        frame_index=np.broadcast_to(rows[:, None, None] + np.arange(T), (len(rows), V, T)).astype(np.int32),
        crop=np.broadcast_to(np.array([0, 0, 4, 4]), (len(rows), V, 4)).astype(np.int32),
        flip=np.broadcast_to(rows[:, None] % 2 == 1, (len(rows), V)).copy(),
        done=ok,
        rows=records,
    )


def test_layout_codecs_and_files(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=10, block_rows=4)
    assert store.num_videos == 10 and store.num_blocks == 3 and store.block_range(2) == (8, 10)
    shapes = {
        "video/features": ((10, V, T, D), np.float16, (4, V, T, D)),
        "video/frame_index": ((10, V, T), np.int32, (4, V, T)),
        "video/crop": ((10, V, 4), np.int32, (4, V, 4)),
        "video/flip": ((10, V), np.bool_, (4, V)),
        "video/done": ((10,), np.bool_, (4,)),
    }
    group = zarr.open_group(str(store.path), mode="r")
    for name, (shape, dtype, chunks) in shapes.items():
        meta = json.loads((store.path / name / "zarr.json").read_text())
        assert meta["zarr_format"] == 3 and meta["shape"] == list(shape)
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == list(chunks)  # same rows per block everywhere
        assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc"]  # no sharding, no default compressor
        assert {k: meta["codecs"][1]["configuration"][k] for k in ("cname", "clevel", "shuffle")} == {
            "cname": "zstd", "clevel": 3, "shuffle": "shuffle"
        }
        assert group[name].dtype == dtype
    assert store.text_features.shape == (29, 2, D) and store.text_features.dtype == np.float16
    assert store.attrs["complete"] is False and store.attrs["block_rows"] == 4 and store.attrs["seed"] == 0
    assert not store.complete and store.pending_blocks() == [0, 1, 2]
    assert store.manifest.column("video_id") == make_manifest(10, tmp_path).column("video_id")
    assert store.prompts.texts == build_prompts(["class 0", "class 1"]).texts
    assert not list(tmp_path.glob(".s.zarr.creating-*"))


def test_blocks_resume_rule_and_finalize(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=10, block_rows=4)
    store.write_block(0, **block_arrays(store, 0))
    store.write_block(2, **block_arrays(store, 2, failed=(8, 9)))  # every row failed: complete, not retried
    assert store.pending_blocks() == [1]

    # A process killed after the record but before `done` leaves block 1 pending: it is redone whole.
    arrays = block_arrays(store, 1, failed=(5,))
    store.write_block(1, **arrays)
    store.done[4:8] = False
    assert store.pending_blocks() == [1]
    with pytest.raises(RuntimeError, match="not written"):
        store.finalize()
    store.write_block(1, **arrays)
    assert store.pending_blocks() == []
    assert [s["status"] for s in store.row_status()] == ["ok"] * 5 + ["undecodable"] + ["ok"] * 2 + ["undecodable"] * 2

    counts = store.finalize()
    assert counts == {"videos": 10, "done": 7, "failed": 3, "by_status": {"ok": 7, "undecodable": 3}}
    reopened = FeatureStore.open(store.path)
    assert reopened.complete and reopened.pending_blocks() == []
    assert not (store.path / "blocks").exists()
    m = reopened.manifest
    assert m.column("status")[5] == "undecodable" and m.column("reason")[5] == "bad 5"
    assert m.column("frames") == [r + 5 for r in range(10)]  # probe fields of the records merged
    assert m.table.schema.equals(SCHEMA)
    np.testing.assert_array_equal(reopened.done[:], [True] * 5 + [False] + [True] * 2 + [False] * 2)
    np.testing.assert_array_equal(reopened.video_features[6], block_arrays(store, 1)["features"][2])
    assert reopened.views(3) == [View(np.arange(3, 3 + T), [0, 0, 4, 4], True)] * V
    with pytest.raises(RuntimeError, match="read-only"):
        reopened.write_block(0, **block_arrays(store, 0))


def test_write_block_checks_shapes_and_rows(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=10, block_rows=4)
    arrays = block_arrays(store, 0)
    with pytest.raises(ValueError, match="features must have shape"):
        store.write_block(0, **{**arrays, "features": arrays["features"][:3]})
    with pytest.raises(ValueError, match="rows must list"):
        store.write_block(0, **{**arrays, "rows": arrays["rows"][:3]})
    with pytest.raises(ValueError, match="status"):
        store.write_block(0, **{**arrays, "done": np.zeros(4, bool)})


def test_concurrent_block_writers_keep_every_row(tmp_path):
    """Writers that own whole row blocks (done included) lose nothing, however they interleave."""
    store = make_store(tmp_path / "s.zarr", n=64, block_rows=4)
    blocks = list(range(store.num_blocks))

    def write(bs):
        for b in bs:
            store.write_block(b, **block_arrays(store, b))

    threads = [threading.Thread(target=write, args=(blocks[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.pending_blocks() == []
    assert bool(np.all(store.done[:]))
    np.testing.assert_array_equal(store.video_features[:, 0, 0, 0], np.arange(64).astype(np.float16))


def test_create_refuses_and_overwrites(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path)
    with pytest.raises(FrosterError, match="already exists"):
        make_store(path)
    store = FeatureStore.create(
        path, manifest=make_manifest(6, tmp_path), prompts=build_prompts(["class 0", "class 1"]),
        text_features=np.zeros((29, 2, D)), attrs={"seed": 1}, views=V, frames=T, overwrite=True,
    )
    assert store.num_videos == 6 and store.attrs["seed"] == 1
    other = tmp_path / "not-a-store"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(FrosterError, match="not a feature store"):
        FeatureStore.create(
            other, manifest=make_manifest(6, tmp_path), prompts=build_prompts(["class 0", "class 1"]),
            text_features=np.zeros((29, 2, D)), attrs={}, views=V, frames=T, overwrite=True,
        )
    assert (other / "precious.txt").exists()
    with pytest.raises(FrosterError, match="not a feature store"):
        FeatureStore.open(other)


def test_differing_settings_names_each_difference():
    old = {"frames": 8, "teacher": {"model": "ViT-B-16", "quick_gelu": True}, "mean": [0.5, 0.5, 0.5],
           "complete": True, "froster_version": "0.1.0", "descriptions": {"file": "a.json", "sha256": "x"}}
    new = {"frames": 16, "teacher": {"model": "ViT-B-32", "quick_gelu": True}, "mean": (0.5, 0.5, 0.5),
           "complete": False, "froster_version": "0.2.0", "descriptions": {"file": "moved/a.json", "sha256": "x"},
           "seed": 3}
    assert differing_settings(old, new) == [
        ("frames", 8, 16), ("seed", None, 3), ("teacher.model", "ViT-B-16", "ViT-B-32")
    ]
    assert differing_settings(old, old) == []


def test_manifest_fingerprint_ignores_probe_columns(tmp_path):
    m = make_manifest(4, tmp_path)
    probed = Manifest(m.table.set_column(6, "frames", pa.array([9] * 4, pa.int64())), m.classes, m.prompt_names,
                      Path("/elsewhere"), "other")
    assert manifest_fingerprint(m) == manifest_fingerprint(probed)
    assert manifest_fingerprint(m) != manifest_fingerprint(make_manifest(5, tmp_path))
