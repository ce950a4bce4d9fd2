"""The synthetic world (determinism, class design, the time-reversal property, files that decode) and the toy teacher
(a short pretraining learns; the saved folder loads as an ordinary open_clip local-dir model; reuse)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from froster.pipeline import toyworld as tw
from froster.pipeline.errors import ConfigError, FrosterError


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread and lose much when other processes share the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- the world's design ------------------------------------------------------------------------------------------------


def test_default_world_classes():
    classes = tw.WorldSpec.default().classes()
    roles = [c.role for c in classes]
    counts = [roles.count(r) for r in (tw.ROLE_BASE, tw.ROLE_NOVEL_SEEN, tw.ROLE_NOVEL_UNSEEN)]
    assert counts == [48, 24, 24]
    names = [c.name for c in classes]
    assert len(set(names)) == len(names) == 96
    assert roles == sorted(roles, key=[tw.ROLE_BASE, tw.ROLE_NOVEL_SEEN, tw.ROLE_NOVEL_UNSEEN].index)
    for c in classes:
        assert c.name == f"{c.colour} {c.shape} {c.motion}"
        assert tw.parse_class_name(c.name) == (c.colour, c.shape, c.motion)


@pytest.mark.parametrize("spec", [tw.WorldSpec.default(), tw.WorldSpec.quick()], ids=["default", "quick"])
def test_base_and_novel_are_disjoint_and_unseen_shapes_never_in_base(spec):
    classes = spec.classes()
    base = [c for c in classes if c.role == tw.ROLE_BASE]
    novel = [c for c in classes if c.role != tw.ROLE_BASE]
    assert base and novel
    assert not {c.name for c in base} & {c.name for c in novel}
    base_shapes = {c.shape for c in base}
    base_colours = {c.colour for c in base}
    unseen = [c for c in classes if c.role == tw.ROLE_NOVEL_UNSEEN]
    assert unseen and all(c.shape not in base_shapes for c in unseen)
    # Unseen objects keep base colours, so that colour alone does not identify them.
    assert all(c.colour in base_colours for c in unseen)
    # Seen-object novel classes: a base object with a motion pair it never does in a base class.
    base_pairs = {(c.colour, c.shape): set() for c in base}
    for c in base:
        base_pairs[(c.colour, c.shape)].add(tw._MOTION_INDEX[c.motion][0])
    for c in classes:
        if c.role == tw.ROLE_NOVEL_SEEN:
            assert tw._MOTION_INDEX[c.motion][0] not in base_pairs[(c.colour, c.shape)]
    # Every motion of every pair is learnable from base videos.
    assert {c.motion for c in base} == set(tw.MOTIONS)


def test_world_b_shares_no_class_with_world_a():
    a = {c.name for c in tw.WorldSpec.default().classes()}
    b = tw.WorldSpec.default_b().classes()
    assert len(b) == 48 and not a & {c.name for c in b}
    assert not tw.WorldSpec.default_b().has_novel()


def test_spec_validation_names_the_field():
    with pytest.raises(ConfigError, match="WorldSpec.unseen_objects"):
        dataclasses.replace(tw.WorldSpec.quick(), unseen_objects=(("red", "circle"),))
    with pytest.raises(ConfigError, match="WorldSpec.size"):
        dataclasses.replace(tw.WorldSpec.quick(), size=31)
    with pytest.raises(ConfigError, match="WorldSpec.objects"):
        dataclasses.replace(tw.WorldSpec.quick(), objects=(("mauve", "circle"),))
    with pytest.raises(FrosterError, match="toy class"):
        tw.render_clip(tw.WorldSpec.quick(), "red blob moving left", _rng(0))


# -- rendering -----------------------------------------------------------------------------------------------------


def test_render_clip_is_deterministic():
    spec = tw.WorldSpec.quick()
    a = tw.render_clip(spec, "red circle moving left", _rng(5))
    b = tw.render_clip(spec, "red circle moving left", _rng(5))
    c = tw.render_clip(spec, "red circle moving left", _rng(6))
    assert a.dtype == np.uint8 and a.shape == (8, 32, 32, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # The motion is real: frames differ from one another.
    assert not np.array_equal(a[0], a[-1])


def test_sixteen_frames_by_option():
    spec = tw.WorldSpec.quick(frames=16)
    clip = tw.render_clip(spec, "blue square appearing", _rng(1))
    assert clip.shape == (16, 32, 32, 3)


@pytest.mark.parametrize("pair", tw.MOTION_PAIRS, ids=lambda p: "/".join(p))
@pytest.mark.parametrize("frames", [8, 16])
def test_time_average_of_a_pair_is_identical(pair, frames):
    spec = dataclasses.replace(tw.WorldSpec.quick(), frames=frames)
    first = tw.render_clip(spec, f"red circle {pair[0]}", _rng(11))  # [T, H, W, 3]
    second = tw.render_clip(spec, f"red circle {pair[1]}", _rng(11))
    # Exactly equal time averages (integer sums), yet different clips: only time order tells them apart.
    assert np.array_equal(first.astype(np.int64).sum(0), second.astype(np.int64).sum(0))
    assert np.array_equal(first, second[::-1])
    assert not np.array_equal(first, second)


def test_motions_move_the_object_the_named_way():
    spec = tw.WorldSpec.quick()

    def centre(frame):  # intensity-weighted centre of the red object (red minus green stands out from grey)
        w = np.clip(frame[..., 0].astype(float) - frame[..., 1] - 60, 0, None)
        yy, xx = np.mgrid[: frame.shape[0], : frame.shape[1]]
        return (xx * w).sum() / w.sum(), (yy * w).sum() / w.sum(), (w > 0).sum()

    left = tw.render_clip(spec, "red circle moving left", _rng(2))
    up = tw.render_clip(spec, "red circle moving up", _rng(2))
    grow = tw.render_clip(spec, "red circle growing", _rng(2))
    assert centre(left[-1])[0] < centre(left[0])[0] - 5
    assert centre(up[-1])[1] < centre(up[0])[1] - 5
    assert centre(grow[-1])[2] > 2 * centre(grow[0])[2]


# -- files -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "world_a"
    return tw.WorldSpec.quick(), tw.generate_world(tw.WorldSpec.quick(), root)


def _read_list(path):
    rows = []
    for line in path.read_text().splitlines():
        rel, label = line.rsplit(",", 1)
        rows.append((rel, int(label)))
    return rows


def test_generated_world_files(quick_world):
    spec, files = quick_world
    classes = files.classes.read_text().splitlines()
    assert classes == [c.name for c in spec.classes()]
    base = files.base.read_text().splitlines()
    novel = files.novel.read_text().splitlines()
    assert sorted(base + novel) == sorted(classes) and not set(base) & set(novel)
    assert novel == files.novel_seen.read_text().splitlines() + files.novel_unseen.read_text().splitlines()
    train, test = _read_list(files.train), _read_list(files.test)
    assert len(train) == files.num_train == len(base) * spec.train_clips
    assert {classes[label] for _, label in train} == set(base)
    assert len(test) == files.num_test == len(classes) * spec.test_clips
    assert not {r for r, _ in train} & {r for r, _ in test}
    facts = json.loads(files.facts.read_text())
    assert facts["fingerprint"] == spec.fingerprint() and facts["complete"]
    assert facts["counts"]["base"] == len(base) and facts["chance"]["base"] == pytest.approx(1 / len(base))
    # No base training video shows an unseen shape.
    unseen_shapes = {c.shape for c in spec.classes() if c.role == tw.ROLE_NOVEL_UNSEEN}
    for rel, label in train:
        if classes[label] in base:
            assert classes[label].split()[1] not in unseen_shapes


def test_generated_videos_decode_with_the_right_frames(quick_world):
    from froster.pipeline.video import read_frames

    spec, files = quick_world
    test = _read_list(files.test)
    for rel, label in test[:: max(1, len(test) // 6)]:
        frames = read_frames(files.root / rel, list(range(spec.frames)))
        assert frames.shape == (spec.frames, spec.size, spec.size, 3)
        # The decoded clip is the rendered one up to h264 and yuv420p losses.
        index = int(rel.rsplit("/", 1)[1].split(".")[0])
        rendered = tw.render_clip(spec, spec.classes()[label], tw._clip_rng(spec, "test", label, index))
        assert np.abs(frames.astype(float) - rendered).mean() < 12


def test_generate_world_reuses_and_refuses(quick_world, tmp_path):
    spec, files = quick_world
    again = tw.generate_world(spec, files.root)
    assert again.reused and again.test == files.test
    foreign = tmp_path / "not_a_world"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FrosterError, match="not_a_world"):
        tw.generate_world(spec, foreign)


def test_train_novel_option(tmp_path):
    spec = dataclasses.replace(tw.WorldSpec.quick(), train_clips=1, test_clips=1, train_novel=True)
    files = tw.generate_world(spec, tmp_path / "a")
    assert sorted(label for _, label in _read_list(files.train)) == list(range(files.num_classes))


def test_world_b_has_test_split_only(tmp_path):
    spec = dataclasses.replace(tw.WorldSpec.quick_b(), test_clips=1)
    files = tw.generate_world(spec, tmp_path / "b")
    assert files.train is None and files.base is None and files.novel is None
    assert len(_read_list(files.test)) == 16


# -- the toy teacher -------------------------------------------------------------------------------------------------


def test_captions_and_positives():
    rng = _rng(0)
    frames, attrs, empty = tw._teacher_frames(rng, 64, 32, empty_prob=0.1, group=4)
    assert frames.shape == (64, 32, 32, 3) and frames.dtype == np.uint8
    texts, cap, cap_empty = tw._sample_captions(rng, attrs, empty, full_prob=0.5, template_prob=0.3)
    pos = tw._satisfies(attrs, empty, cap, cap_empty)
    assert pos.diagonal().all()
    for text in texts:
        assert not any(word in text for word in ("moving", "growing", "shrinking", "appearing", "up ", "down"))
    # A hand-made case: "a red circle" fits every red circle, whatever its size and place.
    a = np.array([[0, 0, 0, 0, 0], [1, 0, 0, 2, 2], [0, 1, 0, 0, 0]])  # small red circle, large red circle, green
    c = np.array([[-1, 0, 0, -1, -1]])
    assert tw._caption(c[0], True) == "a red circle"
    assert tw._satisfies(a, np.zeros(3, bool), c, np.zeros(1, bool))[:, 0].tolist() == [True, True, False]


@pytest.fixture(scope="module")
def quick_teacher(tmp_path_factory, _one_thread):
    out = tmp_path_factory.mktemp("teacher") / "toy_teacher"
    recipe = tw.TeacherRecipe.quick()
    return recipe, tw.pretrain_toy_teacher(tw.WorldSpec.quick(), out, recipe=recipe, seed=0)


def test_short_pretraining_learns(quick_teacher):
    recipe, result = quick_teacher
    m, chance = result.metrics, result.chance
    assert not result.reused
    assert m["retrieval"] > 5 * chance["retrieval"]
    assert m["colour"] > 3 * chance["colour"]
    assert m["object"] > 3 * chance["object"]


def test_untrained_teacher_is_at_chance():
    import torch
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    cfg = tw.toy_clip_config(32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIP(**cfg)
    tokenizer = SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    m = tw.evaluate_toy_teacher(model, tokenizer, 32, frames=150)
    assert m["colour"] < 0.3 and m["retrieval"] < 0.02


def test_teacher_folder_loads_as_open_clip_local_dir(quick_teacher):
    import open_clip
    import torch

    _, result = quick_teacher
    assert result.model == f"local-dir:{result.path.resolve()}"
    model = open_clip.create_model(result.model)
    tokenizer = open_clip.get_tokenizer(result.model)
    assert tokenizer.context_length == tw.toy_clip_config()["text_cfg"]["context_length"]
    model.eval()
    m = tw.evaluate_toy_teacher(model, tokenizer, 32, frames=tw.TeacherRecipe.quick().eval_frames)
    assert m == pytest.approx(result.metrics, abs=1e-9)
    # And through froster's own loader, as extract-teacher loads it.
    from froster.pipeline.teacher import TeacherSpec, load_clip

    loaded = load_clip(TeacherSpec(model=result.model))
    assert loaded.image_size == 32 and loaded.mean == tw.TOY_MEAN and loaded.provenance["quick_gelu"] is False
    tokens = loaded.tokenizer(["a red circle"])
    assert tokens.shape == (1, tw.toy_clip_config()["text_cfg"]["context_length"])
    with torch.no_grad():
        assert torch.allclose(loaded.model.encode_text(tokens), model.encode_text(tokens))
    cfg = json.loads((result.path / "open_clip_config.json").read_text())
    assert cfg["preprocess_cfg"]["mean"] == list(tw.TOY_MEAN) and cfg["model_cfg"]["vision_cfg"]["image_size"] == 32
    # Trimmed text encoding (used in training) equals open_clip's full-length encode_text.
    tokens = tokenizer(["a red circle", "a demonstration of a person practicing a small red circle at the top left."])
    with torch.no_grad():
        assert torch.allclose(tw._encode_text_trimmed(model, tokens), model.encode_text(tokens), atol=1e-5)


def test_teacher_is_reused_and_guarded(quick_teacher):
    recipe, result = quick_teacher
    again = tw.pretrain_toy_teacher(tw.WorldSpec.quick(), result.path, recipe=recipe, seed=0)
    assert again.reused and again.metrics == result.metrics and again.fingerprint == result.fingerprint
    # The guard reads the stored accuracies: demanding more than they reach is a clear error, without retraining.
    strict = dataclasses.replace(recipe, min_shape=1.0)
    with pytest.raises(tw.ToyTeacherTooWeak, match="shape"):
        tw.pretrain_toy_teacher(tw.WorldSpec.quick(), result.path, recipe=strict, seed=0)
    # Another seed is another teacher.
    assert tw._teacher_fingerprint(recipe, 1, 32) != result.fingerprint


def test_object_probe():
    spec = tw.WorldSpec.quick()
    probe = tw.object_probe(spec, per_object=2)
    assert probe.frames.shape == (96, 32, 32, 3) and len(probe.names) == 48
    assert probe.in_base.sum() == 2 * len(spec.objects)
    assert probe.names[probe.labels[0]] == "red circle"
