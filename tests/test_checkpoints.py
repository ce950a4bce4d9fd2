"""pipeline/checkpoints.py: atomic save, weights-only load, the running weight average, RNG states as tensors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from froster.pipeline import checkpoints as ck
from froster.pipeline.errors import FrosterError


class Evil:  # an arbitrary pickled object: weights_only=True refuses it
    pass


def test_save_is_atomic_and_load_round_trips(tmp_path):
    path = tmp_path / "sub" / "last.pt"
    payload = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "meta": {"kind": "last", "epoch": 3}, "step": 7}
    ck.save_checkpoint(path, payload)
    assert path.is_file() and not (tmp_path / "sub" / "last.pt.tmp").exists()
    back = ck.load_checkpoint(path)
    assert torch.equal(back["model"]["w"], payload["model"]["w"])
    assert back["meta"] == payload["meta"] and back["step"] == 7


def test_load_refuses_missing_garbage_and_pickled_objects(tmp_path):
    with pytest.raises(FrosterError, match="no checkpoint file"):
        ck.load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FrosterError, match="garbage.pt"):
        ck.load_checkpoint(tmp_path / "garbage.pt")

    torch.save({"model": {}, "meta": {}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(FrosterError, match="evil.pt"):
        ck.load_checkpoint(tmp_path / "evil.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(FrosterError, match="expected a froster checkpoint"):
        ck.load_checkpoint(tmp_path / "other.pt")


def test_running_average_is_the_uniform_mean():
    sds = [{"a": torch.full((2,), float(i)), "b": torch.tensor([i * 2.0], dtype=torch.float16), "n": torch.tensor(i)}
           for i in (1, 2, 6)]
    avg = None
    for sd in sds:
        avg = ck.average_add(avg, sd)
    assert avg["count"] == 3
    mean = ck.average_result(avg, like=sds[0])
    assert torch.allclose(mean["a"], torch.full((2,), 3.0))
    assert mean["b"].dtype == torch.float16 and float(mean["b"]) == 6.0
    assert int(mean["n"]) == 6  # integer buffers keep the latest value
    with pytest.raises(ValueError, match="key sets differ"):
        ck.average_add(avg, {"a": torch.zeros(2)})


def test_flat_weights_round_trip():
    model = {"x.weight": torch.ones(2)}
    heads = {"vision": {"0.weight": torch.zeros(2, 2)}, "text": {"0.weight": torch.ones(2, 2)}}
    flat = ck.flat_weights(model, heads)
    assert set(flat) == {"model.x.weight", "heads.vision.0.weight", "heads.text.0.weight"}
    m, h = ck.split_weights(flat)
    assert m.keys() == model.keys() and h.keys() == heads.keys()


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    ck.save_checkpoint(tmp_path / "r.pt", {"model": {}, "meta": {}, "rng": ck.rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    ck.set_rng_state(ck.load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_meta_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        ck.make_meta(student="clip", num_frames=8, options={}, teacher={}, vocabulary=[], prompt_names=[], epoch=0,
                     kind="best")
