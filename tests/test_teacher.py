"""Teacher loading: strict weights, QuickGELU decision, local-dir folders, provenance. Tiny configs, no downloads."""

from __future__ import annotations

import copy
import json
import logging

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU

from froster.pipeline.errors import ConfigError, FrosterError
from froster.pipeline.teacher import (
    LOCAL_DIR_CONFIG,
    LOCAL_DIR_WEIGHTS,
    TeacherSpec,
    decide_quick_gelu,
    freeze,
    load_clip,
    save_local_dir,
    sha256_file,
    tokenizer_for,
    weights_in_local_dir,
)

# OpenAI's ViT-B/16 file, as in open_clip's download URL (its SHA-256).
OPENAI_VITB16_SHA = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"


def _has_quick_gelu(model) -> bool:
    return any(isinstance(m, QuickGELU) for m in model.modules())


def _outputs(loaded):
    torch.manual_seed(1)
    images = torch.randn(2, 3, loaded.image_size, loaded.image_size)  # [B, 3, H, W]
    tokens = loaded.tokenizer(["a video of a person abseiling.", "surfing"])  # [2, 77]
    with torch.no_grad():
        return loaded.model.encode_image(images), loaded.model.encode_text(tokens)


@pytest.fixture(scope="module")
def random_tiny():
    # Module-scoped: building even a tiny CLIP costs ~0.1 s; the tests only read it (test_freeze restores it).
    torch.manual_seed(0)
    return load_clip(TeacherSpec("froster-test-tiny", allow_random=True))  # registered by tests/conftest.py


@pytest.fixture
def checkpoint_file(tmp_path, random_tiny):
    path = tmp_path / "tiny.pt"
    torch.save(random_tiny.model.state_dict(), path)
    return path


# --- QuickGELU ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model,pretrained,flag,config_name,sha,expected",
    [
        ("ViT-B-16", "openai", None, "ViT-B-16", None, True),  # open_clip 3.3 would build GELU here
        ("ViT-B-16", "OpenAI", None, "ViT-B-16", None, True),
        ("ViT-B-16", "laion400m_e32", None, "ViT-B-16", None, False),
        ("RN50", "yfcc15m", None, "RN50", None, True),  # the tag's config says quick_gelu
        ("ViT-B-16-quickgelu", None, None, "ViT-B-16-quickgelu", None, True),  # the config says so
        ("ViT-B-16", None, None, "ViT-B-16", None, False),
        ("ViT-B-16", None, True, "ViT-B-16", None, True),  # --quick-gelu for a local copy of OpenAI weights
        ("ViT-B-16", "openai", False, "ViT-B-16", None, False),  # explicit wins (with a warning)
        ("ViT-B-16-quickgelu", None, False, "ViT-B-16-quickgelu", None, False),
        ("ViT-B-16", None, None, "ViT-B-16", OPENAI_VITB16_SHA, True),  # OpenAI's own file, recognised by hash
        ("ViT-B-16", None, None, "ViT-B-16", "0" * 64, False),
    ],
)
def test_decide_quick_gelu_table(model, pretrained, flag, config_name, sha, expected):
    config = open_clip.get_model_config(config_name)
    assert decide_quick_gelu(model, pretrained, flag, config, checkpoint_sha256=sha) is expected


def test_decide_quick_gelu_local_config_and_warning(caplog):
    assert decide_quick_gelu("local-dir:/x", None, None, {"quick_gelu": True}) is True
    assert decide_quick_gelu("local-dir:/x", None, None, {}) is False
    assert decide_quick_gelu("local-dir:/x", None, None, None) is False
    with caplog.at_level(logging.WARNING, logger="froster.pipeline.teacher"):
        decide_quick_gelu("ViT-B-16", "openai", False, open_clip.get_model_config("ViT-B-16"))
    assert "forced off" in caplog.text


def test_quick_gelu_flag_builds_the_activation(tiny_model_name, checkpoint_file):
    gelu = load_clip(TeacherSpec(tiny_model_name, checkpoint=str(checkpoint_file)))
    quick = load_clip(TeacherSpec(tiny_model_name, checkpoint=str(checkpoint_file), quick_gelu=True))
    assert not _has_quick_gelu(gelu.model) and _has_quick_gelu(quick.model)
    assert quick.provenance["quick_gelu"] is True and quick.model_config["quick_gelu"] is True
    # Same weights, different activation: the features differ (why the decision matters).
    assert not torch.allclose(_outputs(gelu)[0], _outputs(quick)[0])


def test_pretrained_tag_path_without_network(tmp_path, monkeypatch, tiny_model_name, random_tiny):
    # A fake tag whose URL is a local file: exercises the --pretrained path (download into the cache, the tag's
    # QuickGELU and mean/std) with no network.
    src = tmp_path / "tiny-tag.pt"
    torch.save(random_tiny.model.state_dict(), src)
    cfg = open_clip.pretrained._pcfg(url=src.as_uri(), quick_gelu=True, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, tiny_model_name, {"fake_tag": cfg})
    loaded = load_clip(TeacherSpec(tiny_model_name, pretrained="fake_tag"), cache_dir=str(tmp_path / "cache"))
    assert _has_quick_gelu(loaded.model)
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.std == (0.25, 0.25, 0.25)
    assert loaded.provenance["pretrained"] == "fake_tag"
    assert loaded.provenance["checkpoint_sha256"] == sha256_file(src)
    ref = random_tiny.model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in loaded.model.state_dict().items())
    with pytest.raises(FrosterError, match="known tags: \\['fake_tag'\\]"):
        load_clip(TeacherSpec(tiny_model_name, pretrained="nope"), cache_dir=str(tmp_path / "cache"))


# --- weights: checkpoint files --------------------------------------------------------------------------------------


def test_checkpoint_round_trip(tiny_model_name, checkpoint_file, random_tiny):
    loaded = load_clip(TeacherSpec(tiny_model_name, checkpoint=str(checkpoint_file)))
    ref = random_tiny.model.state_dict()
    got = loaded.model.state_dict()
    assert set(got) == set(ref) and all(torch.equal(ref[k], got[k]) for k in ref)
    p = loaded.provenance
    assert p["checkpoint_sha256"] == sha256_file(checkpoint_file)
    assert p["checkpoint"] == str(checkpoint_file.resolve()) and p["random_weights"] is False
    assert p["quick_gelu"] is False and p["model"] == tiny_model_name
    json.dumps(p)  # JSON-able
    # No config of its own: the model's (open_clip's OpenAI defaults here).
    assert loaded.mean == open_clip.OPENAI_DATASET_MEAN and loaded.std == open_clip.OPENAI_DATASET_STD
    assert loaded.image_size == open_clip.get_model_config(tiny_model_name)["vision_cfg"]["image_size"]


def test_checkpoint_uses_the_model_names_preprocessing(tmp_path, monkeypatch, tiny_model_name, checkpoint_file):
    # A bare state dict has no preprocess config: the one the name's pretrained tags agree on is used.
    tags = {
        "a": open_clip.pretrained._pcfg(url="unused", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        "b": open_clip.pretrained._pcfg(url="unused", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    }
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, tiny_model_name, tags)
    loaded = load_clip(TeacherSpec(tiny_model_name, checkpoint=str(checkpoint_file)))
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("wrap", ["state_dict", "module", "safetensors"])
def test_checkpoint_formats(tmp_path, tiny_model_name, random_tiny, wrap):
    sd = random_tiny.model.state_dict()
    if wrap == "state_dict":
        path = tmp_path / "w.pt"
        torch.save({"state_dict": sd, "epoch": 3}, path)
    elif wrap == "module":
        path = tmp_path / "w.pth"
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    loaded = load_clip(TeacherSpec(tiny_model_name, checkpoint=str(path)))
    assert all(torch.equal(sd[k], v) for k, v in loaded.model.state_dict().items())


def test_checkpoint_missing_and_unexpected_keys_are_errors(tmp_path, tiny_model_name, random_tiny):
    sd = dict(random_tiny.model.state_dict())
    del sd["text_projection"]
    sd["extra.weight"] = torch.zeros(2)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(FrosterError) as info:
        load_clip(TeacherSpec(tiny_model_name, checkpoint=str(path)))
    msg = str(info.value)
    assert "missing keys ['text_projection']" in msg and "unexpected keys ['extra.weight']" in msg
    assert str(path) in msg


def test_checkpoint_shape_mismatch_is_an_error(tmp_path, tiny_model_name, random_tiny):
    sd = dict(random_tiny.model.state_dict())
    sd["text_projection"] = torch.zeros(64, 16)
    torch.save(sd, tmp_path / "a.pt")
    with pytest.raises(FrosterError, match="size mismatch for text_projection"):
        load_clip(TeacherSpec(tiny_model_name, checkpoint=str(tmp_path / "a.pt")))
    # open_clip would interpolate a positional embedding of another length instead of failing.
    sd = dict(random_tiny.model.state_dict())
    sd["positional_embedding"] = torch.zeros(5, 64)
    torch.save(sd, tmp_path / "b.pt")
    with pytest.raises(FrosterError, match="size mismatch for positional_embedding.*interpolate"):
        load_clip(TeacherSpec(tiny_model_name, checkpoint=str(tmp_path / "b.pt")))


def test_missing_checkpoint_file(tmp_path, tiny_model_name):
    with pytest.raises(FrosterError, match="no such file"):
        load_clip(TeacherSpec(tiny_model_name, checkpoint=str(tmp_path / "absent.pt")))


# --- random weights, names, overrides ---------------------------------------------------------------------------------


def test_random_weights_refused_unless_allowed(tmp_path, tiny_model_name, random_tiny):
    with pytest.raises(FrosterError, match="random weights.*--allow-random-teacher"):
        load_clip(TeacherSpec(tiny_model_name))
    assert random_tiny.provenance["random_weights"] is True
    # A local folder without a weights file is the same thing.
    folder = tmp_path / "noweights"
    save_local_dir(random_tiny.model, random_tiny.model_config, folder)
    (folder / LOCAL_DIR_WEIGHTS).unlink()
    with pytest.raises(FrosterError, match="has no weights file"):
        load_clip(TeacherSpec(f"local-dir:{folder}"))
    assert load_clip(TeacherSpec(f"local-dir:{folder}", allow_random=True)).provenance["random_weights"] is True


def test_unknown_model_and_tag():
    with pytest.raises(FrosterError, match="not an open_clip model.*ViT-B-16"):
        load_clip(TeacherSpec("ViT-B-17", pretrained="openai"))
    with pytest.raises(FrosterError, match="not an open_clip tag of ViT-B-16.*openai"):
        load_clip(TeacherSpec("ViT-B-16", pretrained="no-such-tag"))


def test_mean_std_override(tiny_model_name, checkpoint_file):
    loaded = load_clip(
        TeacherSpec(tiny_model_name, checkpoint=str(checkpoint_file), image_mean=[0.1, 0.2, 0.3], image_std=(1, 2, 3))
    )
    assert loaded.mean == (0.1, 0.2, 0.3) and loaded.std == (1.0, 2.0, 3.0)
    assert loaded.preprocess_cfg["mean"] == [0.1, 0.2, 0.3]
    assert loaded.provenance["image_mean"] == [0.1, 0.2, 0.3] and loaded.provenance["std"] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(model="ViT-B-16", pretrained="openai", checkpoint="x.pt"), "not both"),
        (dict(model="local-dir:/tmp/x", pretrained="openai"), "--pretrained openai cannot be used"),
        (dict(model="local-dir:"), "folder path"),
        (dict(model=""), "--model"),
        (dict(model="hf-hub:org/repo"), "local-dir:PATH"),
        (dict(model="ViT-B-16", image_std=(1, 0, 1)), "--image-std"),
        (dict(model="ViT-B-16", image_mean=(1, 2)), "--image-mean"),
    ],
)
def test_spec_validation(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        TeacherSpec(**kwargs)


def test_freeze(random_tiny):
    model = random_tiny.model
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    model.train().requires_grad_(True)
    assert freeze(model) is model
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_tokenizer(tiny_model_name, random_tiny):
    tokens = random_tiny.tokenizer(["a photo of abseiling."])
    assert tokens.shape == (1, 77) and tokens.dtype == torch.long
    again = tokenizer_for(TeacherSpec(tiny_model_name, allow_random=True))(["a photo of abseiling."])
    assert torch.equal(again, tokens)


# --- local-dir folders and provenance ---------------------------------------------------------------------------------


def test_local_dir_round_trip_identical_outputs(tmp_path, random_tiny):
    folder = save_local_dir(random_tiny.model, random_tiny.model_config, tmp_path / "teacher")
    assert sorted(p.name for p in folder.iterdir()) == [LOCAL_DIR_CONFIG, LOCAL_DIR_WEIGHTS]
    cfg = json.loads((folder / LOCAL_DIR_CONFIG).read_text())
    assert set(cfg) == {"model_cfg", "preprocess_cfg"} and cfg["model_cfg"]["quick_gelu"] is False
    assert cfg["preprocess_cfg"]["mean"] == list(random_tiny.mean)

    loaded = load_clip(TeacherSpec(f"local-dir:{folder}"))
    ref_img, ref_txt = _outputs(random_tiny)
    img, txt = _outputs(loaded)
    assert torch.equal(img, ref_img) and torch.equal(txt, ref_txt)
    assert loaded.provenance["local_dir"] == str(folder.resolve())
    assert loaded.provenance["checkpoint_sha256"] == sha256_file(folder / LOCAL_DIR_WEIGHTS)
    # open_clip itself reads the folder the same way.
    plain = open_clip.create_model(f"local-dir:{folder}").eval()
    ones = torch.ones(1, 3, 32, 32)  # [B, 3, H, W]
    with torch.no_grad():
        assert torch.equal(plain.encode_image(ones), loaded.model.encode_image(ones))


def test_local_dir_keeps_quick_gelu_and_preprocess(tmp_path, tiny_model_name, checkpoint_file):
    quick = load_clip(TeacherSpec(tiny_model_name, checkpoint=str(checkpoint_file), quick_gelu=True,
                                  image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)))
    config = copy.deepcopy(quick.model_config)
    del config["quick_gelu"]  # taken from the network when the config leaves it out
    folder = save_local_dir(quick.model, config, tmp_path / "q")
    again = load_clip(TeacherSpec(f"local-dir:{folder}"))
    assert _has_quick_gelu(again.model) and again.provenance["quick_gelu"] is True
    assert again.mean == (0.5, 0.5, 0.5)
    assert torch.equal(_outputs(again)[1], _outputs(quick)[1])
    with pytest.raises(ValueError, match="quick_gelu"):
        save_local_dir(quick.model, {**quick.model_config, "quick_gelu": False}, tmp_path / "bad")


def test_local_dir_errors(tmp_path):
    with pytest.raises(FrosterError, match="no such folder"):
        load_clip(TeacherSpec(f"local-dir:{tmp_path / 'absent'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FrosterError, match=LOCAL_DIR_CONFIG):
        load_clip(TeacherSpec(f"local-dir:{tmp_path / 'empty'}"))
    (tmp_path / "empty" / LOCAL_DIR_CONFIG).write_text('{"vision_cfg": {}}')
    with pytest.raises(FrosterError, match="'model_cfg'"):
        load_clip(TeacherSpec(f"local-dir:{tmp_path / 'empty'}"))


@pytest.mark.parametrize(
    "names",
    [
        ["a.bin", "model.safetensors"],
        ["z.safetensors", "a.safetensors"],
        ["x.pth", "pytorch_model.bin"],
        ["b.pth", "a.bin"],
        ["open_clip_pytorch_model.bin", "open_clip_model.safetensors", "model.pth"],
        [],
    ],
)
def test_weights_choice_matches_open_clip(tmp_path, names):
    from open_clip.factory import _find_checkpoint_in_dir

    for name in names:
        (tmp_path / name).write_bytes(b"")
    ours = weights_in_local_dir(tmp_path)
    theirs = _find_checkpoint_in_dir(tmp_path)
    assert (str(ours) if ours else None) == theirs


def test_provenance_rebuilds_the_teacher(tmp_path, tiny_model_name, checkpoint_file):
    first = load_clip(TeacherSpec(tiny_model_name, checkpoint=str(checkpoint_file), quick_gelu=True))
    spec = TeacherSpec.from_provenance(json.loads(json.dumps(first.provenance)))
    assert spec.quick_gelu is True and spec.checkpoint_sha256 == first.provenance["checkpoint_sha256"]
    again = load_clip(spec)
    assert torch.equal(_outputs(again)[0], _outputs(first)[0])
    # The weights file changed since: refused, naming both hashes.
    sd = again.model.state_dict()
    sd["logit_scale"] = sd["logit_scale"] + 1
    torch.save(sd, checkpoint_file)
    with pytest.raises(FrosterError, match="SHA-256"):
        load_clip(spec)
    with pytest.raises(FrosterError, match="missing key"):
        TeacherSpec.from_provenance({"model": "x"})


def test_provenance_of_a_random_teacher(random_tiny):
    # Only the contract's six keys (what a store keeps): a teacher without weights is rebuilt without refusal.
    keys = ("model", "pretrained", "checkpoint", "checkpoint_sha256", "local_dir", "quick_gelu")
    spec = TeacherSpec.from_provenance({k: random_tiny.provenance[k] for k in keys})
    assert spec.allow_random and load_clip(spec).provenance["random_weights"] is True
