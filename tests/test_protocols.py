"""Protocol files: base2novel derivation and shots, cross-dataset subsets, disjointness, TOML round trip and errors."""

from __future__ import annotations

import dataclasses
import tomllib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from froster.pipeline.classnames import normalize_name
from froster.pipeline.errors import ConfigError, FrosterError
from froster.pipeline.manifests import COLUMNS, manifest_from_lists, read_manifest, write_manifest
from froster.pipeline.protocols import (
    BASE_NOVEL_RULE,
    build_base2novel,
    build_cross_dataset,
    derive_base_novel,
    load_protocol,
    novel_class_subsets,
    overlapping_classes,
    vocabulary_labels,
    write_protocol,
)

# Label order deliberately not alphabetical; counts with a tie at the base/novel boundary (alpha = charlie = 17).
TRAIN_COUNTS = {"zulu": 20, "alpha": 17, "bravo": 18, "charlie": 17, "delta": 16, "echo": 16}


def _manifest(tmp_path: Path, name: str, counts: dict[str, int], missing: set[str] = frozenset()) -> Path:
    """Write a manifest of ``counts[c]`` videos per class (files need not exist: status unprobed or missing)."""
    classes = list(counts)
    (tmp_path / "annotations").mkdir(exist_ok=True)
    (tmp_path / "videos").mkdir(exist_ok=True)
    class_file = tmp_path / "annotations" / f"{name}_classes.txt"
    class_file.write_text("\n".join(classes) + "\n")
    list_file = tmp_path / "annotations" / f"{name}.txt"
    list_file.write_text("".join(f"{c}/{name}_{c}_{i:03d}.mp4 {k}\n" for k, c in enumerate(classes)
                                 for i in range(counts[c])))
    m = manifest_from_lists(list_file, tmp_path / "videos", class_file)
    if missing:
        status = ["missing" if v in missing else s for v, s in zip(m.column("video_id"), m.column("status"))]
        m = dataclasses.replace(m, table=m.table.set_column(COLUMNS.index("status"), "status", pa.array(status)))
    return write_manifest(m, tmp_path / "manifests" / f"{name}.parquet")


@pytest.fixture
def b2n(tmp_path):
    train = _manifest(tmp_path, "train", TRAIN_COUNTS)
    test = _manifest(tmp_path, "test", {c: 3 for c in TRAIN_COUNTS})
    return train, test


# ---- base2novel ----------------------------------------------------------------------------------------------------


def test_derive_base_novel_frequency_rule_and_ties(b2n):
    base, novel = derive_base_novel(read_manifest(b2n[0]))
    # most frequent first: zulu 20, bravo 18, then the tie alpha/charlie at 17 goes to alpha by name
    assert set(base) == {"zulu", "bravo", "alpha"}
    assert base == ["zulu", "alpha", "bravo"]  # the manifest's label order is kept
    assert novel == ["charlie", "delta", "echo"]


def test_derive_base_novel_odd_count_gives_base_the_extra_class(tmp_path):
    m = read_manifest(_manifest(tmp_path, "odd", {"a": 3, "b": 3, "c": 2, "d": 1, "e": 5}))
    base, novel = derive_base_novel(m)
    assert base == ["a", "b", "e"] and novel == ["c", "d"]


def test_base2novel_runs_16_shots_per_base_class_reproducible(b2n):
    p = build_base2novel(*b2n)
    assert p.kind == "base2novel" and p.checkpoint == "last"
    assert [r.name for r in p.runs] == ["seed1", "seed2", "seed3"] and [r.seed for r in p.runs] == [1, 2, 3]
    train = read_manifest(b2n[0])
    class_of = dict(zip(train.column("video_id"), train.column("class_name")))
    for r in p.runs:
        assert r.vocabulary == ["zulu", "alpha", "bravo"]
        assert Counter(class_of[v] for v in r.train_video_ids) == {"zulu": 16, "alpha": 16, "bravo": 16}
        assert len(set(r.train_video_ids)) == 48
    assert len({tuple(r.train_video_ids) for r in p.runs}) == 3  # the seeds draw different subsets
    again = build_base2novel(*b2n)
    assert [r.train_video_ids for r in again.runs] == [r.train_video_ids for r in p.runs]
    assert [r.train_video_ids for r in build_base2novel(*b2n, seeds=(2,)).runs] == [p.runs[1].train_video_ids]
    # evaluation: base test set with the base vocabulary, novel test set with the novel one, disjoint
    base_set, novel_set = p.eval_sets
    assert (base_set.name, base_set.group, base_set.disjoint, base_set.run) == ("base", "base", False, "all")
    assert (novel_set.name, novel_set.group, novel_set.disjoint) == ("novel", "novel", True)
    assert novel_set.vocabulary == ["charlie", "delta", "echo"]
    assert not overlapping_classes(base_set.vocabulary, novel_set.vocabulary)
    assert base_set.manifest == b2n[1].resolve()
    assert p.derivation["base_novel_rule"] == BASE_NOVEL_RULE and p.derivation["shots"] == 16


def test_base2novel_shots_only_from_usable_videos(tmp_path):
    missing = {f"zulu/train_zulu_{i:03d}" for i in range(4)}
    train = _manifest(tmp_path, "train", TRAIN_COUNTS, missing=missing)
    test = _manifest(tmp_path, "test", {c: 1 for c in TRAIN_COUNTS})
    p = build_base2novel(train, test, seeds=(1, 2, 3, 4, 5))
    assert not missing & {v for r in p.runs for v in r.train_video_ids}
    with pytest.raises(FrosterError, match=r"--shots 17: class 'zulu' has 16 usable training videos"):
        build_base2novel(train, test, shots=17)


def test_base2novel_classes_from_files(tmp_path, b2n):
    base = tmp_path / "base.csv"
    base.write_text("id,name\n0,Echo\n1,delta\n")  # matched after normalising case
    novel = tmp_path / "novel.txt"
    novel.write_text("zulu\n")
    p = build_base2novel(*b2n, base_file=base, novel_file=novel, seeds=(7,))
    assert p.vocabularies == {"base": ["echo", "delta"], "novel": ["zulu"]}
    assert p.derivation["base_novel"] == "files"
    novel.write_text("zulu\nDELTA\n")
    with pytest.raises(FrosterError, match=r"novel.txt: expected novel classes disjoint from .*base.csv, found 1 in "
                                           r"both: 'delta'"):
        build_base2novel(*b2n, base_file=base, novel_file=novel)
    novel.write_text("zulu\nfoxtrot\n")
    with pytest.raises(FrosterError, match=r"novel.txt: class #2 'foxtrot': expected a class of the manifest"):
        build_base2novel(*b2n, base_file=base, novel_file=novel)
    with pytest.raises(FrosterError, match="expected both class files or neither"):
        build_base2novel(*b2n, base_file=base)


def test_base2novel_given_train_lists(tmp_path, b2n):
    a, b = tmp_path / "s1.txt", tmp_path / "s2.txt"
    a.write_text("zulu/train_zulu_000.mp4 0\nalpha/train_alpha_001.mp4,1\n")  # list lines: path and label
    b.write_text("bravo/train_bravo_003\n")  # a bare video id
    p = build_base2novel(*b2n, train_lists=[a, b])
    assert [r.name for r in p.runs] == ["list1", "list2"]
    assert p.runs[0].train_video_ids == ["zulu/train_zulu_000", "alpha/train_alpha_001"]
    assert p.runs[1].train_video_ids == ["bravo/train_bravo_003"]
    b.write_text("bravo/train_bravo_003\nbravo/nope\n")
    with pytest.raises(FrosterError, match=r"s2.txt:2: expected a video of the manifest"):
        build_base2novel(*b2n, train_lists=[b])
    b.write_text("echo/train_echo_000\n")
    with pytest.raises(FrosterError, match=r"s2.txt: expected videos of base classes only, found 1 others"):
        build_base2novel(*b2n, train_lists=[b])


# ---- cross-dataset -------------------------------------------------------------------------------------------------


def _k600_counts():
    # 3 classes shared with the source (one spelt differently), 8 new ones
    names = ["Zulu", "alpha", "bravo!"] + [f"new {i}" for i in range(8)]
    return {n: 2 for n in names}


@pytest.fixture
def cross(tmp_path, b2n):
    ucf = [_manifest(tmp_path, f"ucf_test{i}", {"ApplyEyeMakeup": 2, "YoYo": 2}) for i in (1, 2, 3)]
    ucf_all = _manifest(tmp_path, "ucf_all", {"ApplyEyeMakeup": 4, "YoYo": 4})
    k600 = _manifest(tmp_path, "k600_test", _k600_counts())
    return b2n[0], ucf, ucf_all, k600


def test_novel_class_subsets_reproducible():
    classes = [f"c{i:03d}" for i in range(220)] + ["Abseiling", "air-drumming"]
    new, subsets = novel_class_subsets(classes, ["abseiling", "Air drumming"], 160, (1, 2, 3))
    assert len(new) == 220 and "Abseiling" not in new and "air-drumming" not in new
    assert [len(s) for s in subsets] == [160, 160, 160]
    assert all(s == sorted(s) for s in subsets)  # kept in the class order
    assert len({tuple(s) for s in subsets}) == 3
    assert novel_class_subsets(classes, ["ABSEILING", "air drumming"], 160, (2,))[1][0] == subsets[1]
    with pytest.raises(FrosterError, match="--novel-size 300: only 220 target classes"):
        novel_class_subsets(classes, ["abseiling", "air drumming"], 300, (1,))


def test_cross_dataset_build(cross):
    source, ucf, ucf_all, k600 = cross
    p = build_cross_dataset(source, [("ucf101", ucf), ("ucf101-full", [ucf_all])], [("k600", k600)], novel_size=5)
    assert p.kind == "cross-dataset" and p.checkpoint == "averaged"
    assert len(p.runs) == 1 and p.runs[0].train_video_ids is None and p.runs[0].vocabulary == list(TRAIN_COUNTS)
    assert p.aggregation.groups == ["ucf101", "ucf101-full", "k600"] and p.aggregation.ddof == 0
    names = [e.name for e in p.eval_sets]
    assert names == ["ucf101/ucf_test1", "ucf101/ucf_test2", "ucf101/ucf_test3", "ucf101-full",
                     "k600/seed1", "k600/seed2", "k600/seed3"]
    assert [e.disjoint for e in p.eval_sets] == [False] * 4 + [True] * 3
    assert p.eval_sets[0].vocabulary == ["ApplyEyeMakeup", "YoYo"] and p.eval_sets[0].vocabulary_name == "ucf101"
    source_norm = {normalize_name(c) for c in TRAIN_COUNTS}
    for e in p.eval_sets[4:]:
        assert len(e.vocabulary) == 5 and not {normalize_name(c) for c in e.vocabulary} & source_norm
    assert p.derivation["k600_new_classes"] == 8  # "Zulu" and "bravo!" are source classes after normalising
    again = build_cross_dataset(source, [], [("k600", k600)], novel_size=5)
    assert [e.vocabulary for e in again.eval_sets] == [e.vocabulary for e in p.eval_sets[4:]]


def test_cross_dataset_refuses_overlapping_given_lists(tmp_path, cross):
    source, _, _, k600 = cross
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("new 0\nnew 1\n")
    bad.write_text("new 0\nZulu\nbravo!\n")
    p = build_cross_dataset(source, [], [("k600", k600)], novel_lists=[good])
    assert [e.name for e in p.eval_sets] == ["k600/list1"]
    with pytest.raises(FrosterError) as e:
        build_cross_dataset(source, [], [("k600", k600)], novel_lists=[good, bad])
    msg = str(e.value)
    assert "eval_sets[k600/list2]: disjoint = true" in msg
    assert "shares 2 classes with run 'full'" in msg and "'zulu' ~ 'Zulu'" in msg and "'bravo' ~ 'bravo!'" in msg


# ---- files ---------------------------------------------------------------------------------------------------------


def test_write_load_round_trip_relative_paths(tmp_path, b2n, cross):
    for p in (build_base2novel(*b2n), build_cross_dataset(cross[0], [("ucf101", cross[1])], [("k600", cross[3])],
                                                          novel_size=4)):
        out = write_protocol(p, tmp_path / "protocols" / f"{p.kind}.toml")
        text = out.read_text()
        doc = tomllib.loads(text)
        assert doc["protocol"]["format"] == 1 and doc["protocol"]["checkpoint"] == p.checkpoint
        assert all(d["manifest"].startswith("../manifests/") for d in doc["datasets"].values())
        back = load_protocol(out)
        assert back.runs == p.runs and back.eval_sets == p.eval_sets and back.datasets == p.datasets
        assert back.vocabularies == p.vocabularies and back.aggregation == p.aggregation
        assert back.derivation == p.derivation and back.path == out.resolve()
    assert "ties by class name" in (tmp_path / "protocols" / "base2novel.toml").read_text()


def test_load_train_videos_file_and_inline_vocabulary(tmp_path, b2n):
    out = write_protocol(build_base2novel(*b2n, seeds=(1,)), tmp_path / "p.toml")
    ids_file = tmp_path / "lists" / "seed1.txt"
    ids_file.parent.mkdir()
    ids_file.write_text("zulu/train_zulu_000\nalpha/train_alpha_000\n")
    text = out.read_text()
    start = text.index("train_videos = [")
    end = text.index("]", start) + 1
    text = text[:start] + 'train_videos_file = "lists/seed1.txt"' + text[end:]
    text = text.replace('vocabulary = "base"', 'vocabulary = ["zulu", "alpha", "bravo"]', 1)
    out.write_text(text)
    p = load_protocol(out)
    assert p.runs[0].train_video_ids == ["zulu/train_zulu_000", "alpha/train_alpha_000"]
    assert p.runs[0].train_videos_file == ids_file.resolve() and p.runs[0].vocabulary_name == ""
    assert p.runs_for(p.eval_sets[0]) == p.runs and p.eval_sets_for(p.runs[0]) == p.eval_sets


def test_load_refuses_overlapping_disjoint_set(tmp_path, b2n):
    out = write_protocol(build_base2novel(*b2n, seeds=(1,)), tmp_path / "p.toml")
    doc = out.read_text().replace('novel = [\n  "charlie",', 'novel = [\n  "Alpha",\n  "charlie",')
    out.write_text(doc)
    with pytest.raises(FrosterError) as e:
        load_protocol(out, check_manifests=False)
    msg = str(e.value)
    assert str(out) in msg and "eval_sets[novel]: disjoint = true" in msg and "'alpha' ~ 'Alpha'" in msg


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("disjoint = true", "disjiont = true", "[[eval_sets]] #2: unknown key 'disjiont'"),
        ('checkpoint = "last"', 'checkpoint = "best"', "checkpoint: expected one of last, averaged, got 'best'"),
        ("format = 1", "format = 2", "[protocol] format: expected 1, found 2"),
        ("format = 1", "format = \"1\"", "[protocol] format: expected an integer"),
        ('vocabulary = "novel"', 'vocabulary = "novle"', "[[eval_sets]] #2 (novel) vocabulary: expected a name in "
                                                         "[vocabularies] (base, novel), found 'novle'"),
        ('group = "novel"', 'group = "new"', "eval_sets[novel].group: expected one of aggregation.groups"),
        ('run = "all"', 'run = "seed9"', "eval_sets[base].run: expected 'all' or a run name (seed1)"),
        ('dataset = "test"', 'dataset = "tst"', "eval_sets[base].dataset: expected a key of [datasets]"),
        ("[[runs]]", "[[runs]]\nname = 1", "not valid TOML"),
        ('views = "test"', 'views = "train"', "views: expected one of test, got 'train'"),
        ("seed = 1", "seed = true", "[[runs]] #1 (seed1) seed: expected an integer, found True"),
    ],
)
def test_load_errors_name_file_and_key(tmp_path, b2n, old, new, message):
    out = write_protocol(build_base2novel(*b2n, seeds=(1,)), tmp_path / "p.toml")
    text = out.read_text()
    assert old in text
    out.write_text(text.replace(old, new, 1))
    with pytest.raises(FrosterError) as e:
        load_protocol(out)
    assert message in str(e.value) and str(out) in str(e.value)


def test_load_checks_manifests(tmp_path, b2n):
    out = write_protocol(build_base2novel(*b2n, seeds=(1,)), tmp_path / "p.toml")
    text = out.read_text()
    out.write_text(text.replace('"zulu/train_zulu_', '"zulu/elsewhere_', 1))
    with pytest.raises(FrosterError, match=r"\[\[runs\]\] seed1 train_videos: 1 are not videos of"):
        load_protocol(out)
    out.write_text(text.replace('novel = [\n  "charlie",', 'novel = [\n  "foxtrot",'))
    with pytest.raises(FrosterError, match=r"\[\[eval_sets\]\] novel vocabulary .*'foxtrot'"):
        load_protocol(out)
    b2n[1].unlink()
    out.write_text(text)
    with pytest.raises(FrosterError, match=r"\[datasets.test\] manifest: no file at"):
        load_protocol(out)
    assert load_protocol(out, check_manifests=False).name == "train-base2novel"


def test_protocol_validation_on_construction(b2n):
    p = build_base2novel(*b2n, seeds=(1,))
    with pytest.raises(ConfigError, match="base2novel needs exactly one 'novel' set per run"):
        dataclasses.replace(p, eval_sets=p.eval_sets[:1])
    with pytest.raises(ConfigError, match="aggregation.kind: expected 'base2novel'"):
        dataclasses.replace(p, aggregation=dataclasses.replace(p.aggregation, kind="cross-dataset"))
    with pytest.raises(ConfigError, match=r"runs\[seed1\].vocabulary: duplicate class 'zulu'"):
        dataclasses.replace(p, runs=[dataclasses.replace(p.runs[0], vocabulary=["zulu", "zulu"])])


def test_vocabulary_labels():
    assert vocabulary_labels(["a", "b", "c"], ["c", "a"]) == [2, 0]
    with pytest.raises(FrosterError, match=r"1 classes are not in the manifest's class list: 'bb' \(closest: 'b'\)"):
        vocabulary_labels(["a", "b"], ["bb"])


# ---- the stage -----------------------------------------------------------------------------------------------------


def test_stage_base2novel_and_cross_dataset(tmp_path, cross, capsys):
    from froster.stages.protocol import ProtocolConfig, run

    source, ucf, ucf_all, k600 = cross
    out = run(ProtocolConfig(kind="base2novel", out=tmp_path / "b2n.toml", train=source,
                             test=tmp_path / "manifests" / "test.parquet", seeds=(1, 2)))
    text = capsys.readouterr().out
    assert load_protocol(out).runs[1].name == "seed2"
    assert "run seed1: 3 classes, 48 videos of train" in text
    assert "eval novel [novel]: 3 classes of test, disjoint" in text
    out = run(ProtocolConfig(kind="cross-dataset", out=tmp_path / "x.toml", source=source,
                             targets=(("ucf101", tuple(ucf)),), novel_targets=(("k600", k600),), novel_size=3))
    assert [e.name for e in load_protocol(out).eval_sets][-1] == "k600/seed3"
    assert "run full: 6 classes, all usable videos of train" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="b2n"), "kind: expected one of base2novel, cross-dataset"),
        (dict(out="p.yaml"), "--out: expected a .toml file"),
        (dict(test=None), "--train/--test: base2novel needs"),
        (dict(base_classes="b.txt"), "--base/--novel: expected both"),
        (dict(shots=0), "--shots: expected an integer >= 1"),
        (dict(kind="cross-dataset"), "--source: cross-dataset needs"),
        (dict(kind="cross-dataset", source="s.parquet"), "--target/--novel-target: expected at least one"),
    ],
)
def test_stage_config_validation(kwargs, message):
    from froster.stages.protocol import ProtocolConfig

    base = dict(kind="base2novel", out="p.toml", train="a.parquet", test="b.parquet")
    with pytest.raises(ConfigError, match=message):
        ProtocolConfig(**{**base, **kwargs})
