"""Manifests: the five annotation formats on small files, bad inputs' messages, probing statuses, Parquet round trip."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from froster.pipeline.errors import ConfigError, FrosterError
from froster.pipeline.manifests import (
    COLUMNS,
    SCHEMA,
    build_manifest,
    manifest_from_folders,
    manifest_from_hmdb51,
    manifest_from_kinetics,
    manifest_from_lists,
    manifest_from_ucf101,
    probe_manifest,
    read_manifest,
    video_id_of,
    write_manifest,
)
from froster.pipeline.video import STATUS_EMPTY, STATUS_MISSING, STATUS_OK, STATUS_UNDECODABLE, STATUS_UNPROBED


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "videos"
    r.mkdir()
    return r


# ---- format 1: lists + class-name file -----------------------------------------------------------------------------


def test_lists_comma_and_space_separated(tmp_path, root):
    classes = _write(tmp_path / "classes.txt", "abseiling\nair drumming\npassing American football (in game)\n")
    lst = _write(
        tmp_path / "val.txt",
        "abseiling/0wR5jVB-WPk.mp4,0\n"
        "air drumming/xyz_000001_000011.mp4 1\n"  # space-separated, and a folder with a space
        "passing American football (in game)/a b.mkv,2\n\n",
    )
    m = manifest_from_lists(lst, root, classes)
    assert m.column("video_id") == [
        "abseiling/0wR5jVB-WPk",
        "air drumming/xyz_000001_000011",
        "passing American football (in game)/a b",
    ]
    assert m.column("path")[2] == "passing American football (in game)/a b.mkv"
    assert m.column("label") == [0, 1, 2]
    assert m.column("class_name")[1] == "air drumming"
    assert m.column("prompt_name")[2] == "passing American football (in game)"
    assert m.column("split") == ["val"] * 3  # default: the list file's stem
    assert m.column("status") == [STATUS_UNPROBED] * 3
    assert m.column("size") == [-1] * 3 and m.column("mtime") == [-1.0] * 3
    assert m.classes == ["abseiling", "air drumming", "passing American football (in game)"]
    assert m.video_root == root.resolve()
    assert str(lst.resolve()) in m.source and str(classes.resolve()) in m.source


def test_lists_json_and_csv_class_files_and_prompt_override(tmp_path, root):
    lst = _write(tmp_path / "train.txt", "ApplyEyeMakeup/v_1.avi 0\nYoYo/v_2.avi 1\n")
    js = _write(tmp_path / "classes.json", json.dumps({"0": "ApplyEyeMakeup", "1": "YoYo"}))
    m = manifest_from_lists(lst, root, js, split="train1")
    assert m.prompt_names == ["apply eye makeup", "yo yo"]
    assert m.column("prompt_name") == ["apply eye makeup", "yo yo"]
    assert m.column("split") == ["train1", "train1"]
    prompts = _write(tmp_path / "prompts.csv", "id,name\n0,putting on eye makeup\n1,playing with a yo-yo\n")
    m = manifest_from_lists(lst, root, js, prompt_names_file=prompts)
    assert m.classes == ["ApplyEyeMakeup", "YoYo"]  # raw names stay
    assert m.prompt_names == ["putting on eye makeup", "playing with a yo-yo"]


def test_lists_absolute_path_inside_root(tmp_path, root):
    classes = _write(tmp_path / "c.txt", "a\n")
    lst = _write(tmp_path / "l.txt", f"{root.resolve()}/a/x.mp4 0\n")
    assert manifest_from_lists(lst, root, classes).column("path") == ["a/x.mp4"]


@pytest.mark.parametrize(
    "lines, message",
    [
        ("a/x.mp4 0\na/y.mp4 5\n", "l.txt:2: unknown label 5: "),
        ("a/x.mp4 0\na/y.mp4 -1\n", "l.txt:2: unknown label -1"),
        ("a/x.mp4 0\njust-a-path.mp4\n", "l.txt:2: expected 'relative/path,label' or 'relative/path label'"),
        ("a/x.mp4,zero\n", "l.txt:1: expected 'relative/path,label'"),
        ("a/x.mp4 0\n\na/x.avi 1\n", "l.txt:3: duplicate video id 'a/x' (first at "),
        ("../outside.mp4 0\n", "l.txt:1: expected a path inside the video root"),
        ("/elsewhere/x.mp4 0\n", "l.txt:1: expected a path relative to the video root"),
    ],
)
def test_lists_bad_lines_name_file_and_line(tmp_path, root, lines, message):
    classes = _write(tmp_path / "c.txt", "a\nb\n")
    lst = _write(tmp_path / "l.txt", lines)
    with pytest.raises(FrosterError) as e:
        manifest_from_lists(lst, root, classes)
    assert message in str(e.value)
    if "unknown label" in message:
        assert "has 2 classes (labels 0..1)" in str(e.value)


def test_lists_need_a_class_file_and_an_existing_root(tmp_path, root):
    lst = _write(tmp_path / "l.txt", "a/x.mp4 0\n")
    with pytest.raises(FrosterError, match="--classes: format 'lists' needs a class-name file"):
        build_manifest("lists", root, lst)
    with pytest.raises(FrosterError, match="--video-root: expected a folder of videos"):
        build_manifest("lists", tmp_path / "nowhere", lst, classes_file=_write(tmp_path / "c.txt", "a\n"))
    with pytest.raises(FrosterError, match="--format: expected one of lists, kinetics"):
        build_manifest("csv", root, lst)


# ---- format 2: Kinetics CSV ----------------------------------------------------------------------------------------

KINETICS_CSV = (
    "label,youtube_id,time_start,time_end,split\n"
    "abseiling,0wR5jVB-WPk,417,427,train\n"
    "air drumming,--nQbRBEz2s,104,114,train\n"
    '"passing American football (in game)",abc,0,10,train\n'
    "abseiling,zzz,5,15,val\n"
    "air drumming,gone,1,11,train\n"
)


def _kinetics(tmp_path, root):
    csv_file = _write(tmp_path / "train.csv", KINETICS_CSV)
    _touch(root / "abseiling" / "0wR5jVB-WPk_000417_000427.mp4")
    _touch(root / "air_drumming" / "--nQbRBEz2s_000104_000114.webm")
    _touch(root / "--nQbRBEz2s_000104_000114.txt")  # not a video extension: ignored
    _touch(root / "train" / "abc_000000_000010.mkv")
    _touch(root / "val" / "zzz_000005_000015.mp4")
    return csv_file


def test_kinetics_split_and_files_found_on_disk(tmp_path, root):
    m = manifest_from_kinetics(_kinetics(tmp_path, root), root, split="train")
    assert m.column("path") == [
        "abseiling/0wR5jVB-WPk_000417_000427.mp4",
        "air_drumming/--nQbRBEz2s_000104_000114.webm",
        "train/abc_000000_000010.mkv",
        "gone_000001_000011.mp4",
    ]
    assert m.column("video_id")[0] == "abseiling/0wR5jVB-WPk_000417_000427"
    # the class list is the sorted labels of the whole CSV, whatever the split
    assert m.classes == ["abseiling", "air drumming", "passing American football (in game)"]
    assert m.column("label") == [0, 1, 2, 1]
    assert m.column("split") == ["train"] * 4
    # a clip not on disk stays, with status missing and a reason
    assert m.column("status") == [STATUS_UNPROBED] * 3 + [STATUS_MISSING]
    assert "no gone_000001_000011.mp4, .mkv or .webm under" in m.column("reason")[3]


def test_kinetics_val_split_and_all_rows(tmp_path, root):
    csv_file = _kinetics(tmp_path, root)
    val = manifest_from_kinetics(csv_file, root, split="val")
    assert val.column("path") == ["val/zzz_000005_000015.mp4"] and val.column("label") == [0]
    assert len(val.classes) == 3  # same labels as the train manifest
    every = manifest_from_kinetics(csv_file, root)
    assert len(every) == 5 and sorted(set(every.column("split"))) == ["train", "val"]


def test_kinetics_prefers_mp4_when_a_clip_has_several_extensions(tmp_path, root):
    csv_file = _write(tmp_path / "k.csv", "label,youtube_id,time_start,time_end,split\nx,id1,0,10,train\n")
    _touch(root / "a" / "id1_000000_000010.webm")
    _touch(root / "b" / "id1_000000_000010.mp4")
    assert manifest_from_kinetics(csv_file, root).column("path") == ["b/id1_000000_000010.mp4"]


@pytest.mark.parametrize(
    "text, split, message",
    [
        ("label,youtube_id,start,end,split\n", None, "k.csv:1: expected a header with label,youtube_id,time_start"),
        ("label,youtube_id,time_start,time_end\nx,a,0,10\n", "train", "(lacking split)"),
        ("label,youtube_id,time_start,time_end,split\nx,a,zero,10,train\n", None,
         "k.csv:2: time_start: expected whole seconds, found 'zero'"),
        ("label,youtube_id,time_start,time_end,split\nx,a,0,10,train\n,b,0,10,train\n", None,
         "k.csv:3: expected a label and a youtube_id"),
        ("label,youtube_id,time_start,time_end,split\nx,a,0,10,train\nx,a,0,10,train\n", None,
         "k.csv:3: duplicate video id 'a_000000_000010' (first at "),
        ("label,youtube_id,time_start,time_end,split\nx,a,0,10,train\n", "test",
         "--split 'test' matches no rows; the split column holds ['train']"),
        ("label,youtube_id,time_start,time_end,split\nx,a,0,10\n", None, "k.csv:2: expected 5 columns"),
    ],
)
def test_kinetics_bad_inputs(tmp_path, root, text, split, message):
    csv_file = _write(tmp_path / "k.csv", text)
    with pytest.raises(FrosterError) as e:
        manifest_from_kinetics(csv_file, root, split=split)
    assert message in str(e.value)


def test_kinetics_class_file_fixes_order_and_refuses_unknown(tmp_path, root):
    csv_file = _write(tmp_path / "k.csv", "label,youtube_id,time_start,time_end,split\nb,x,0,10,t\na,y,0,10,t\n")
    classes = _write(tmp_path / "c.txt", "b\nc\na\n")
    m = manifest_from_kinetics(csv_file, root, classes_file=classes)
    assert m.classes == ["b", "c", "a"] and m.column("label") == [0, 2]
    with pytest.raises(FrosterError, match=r"k.csv:3: unknown class 'a': not in .*c2.txt"):
        manifest_from_kinetics(csv_file, root, classes_file=_write(tmp_path / "c2.txt", "b\n"))


# ---- format 3: UCF-101 ---------------------------------------------------------------------------------------------


def _ucf(tmp_path):
    d = tmp_path / "ucfTrainTestlist"
    _write(d / "classInd.txt", "1 ApplyEyeMakeup\n2 HandstandPushups\n3 YoYo\n")
    _write(
        d / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\n"  # the real file name's case differs from the class
        "YoYo/v_YoYo_g08_c01.avi 3\r\n",
    )
    _write(d / "testlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\nYoYo/v_YoYo_g01_c01.avi\n")
    return d


def test_ucf101_train_test_all(tmp_path, root):
    d = _ucf(tmp_path)
    train = manifest_from_ucf101(d, root, "train1")
    assert train.classes == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    assert train.prompt_names == ["apply eye makeup", "handstand pushups", "yo yo"]
    assert train.column("label") == [0, 1, 2]  # 1-based in the list, 0-based in the manifest
    assert train.column("video_id")[1] == "HandstandPushups/v_HandStandPushups_g08_c01"
    assert train.column("split") == ["train1"] * 3
    test = manifest_from_ucf101(d / "classInd.txt", root, "test1")  # classInd.txt itself also works
    assert test.column("label") == [0, 2] and test.column("split") == ["test1"] * 2
    every = manifest_from_ucf101(d, root, "all")
    assert len(every) == 5 and every.column("split") == ["train1"] * 3 + ["test1"] * 2


@pytest.mark.parametrize(
    "list_name, text, message",
    [
        ("trainlist01.txt", "YoYo/v_YoYo_g08_c01.avi 4\n", "trainlist01.txt:1: unknown label '4'"),
        ("trainlist01.txt", "YoYo/v_YoYo_g08_c01.avi 1\n",
         "trainlist01.txt:1: label 1 is 'ApplyEyeMakeup' in "),
        ("trainlist01.txt", "YoYo/v_YoYo_g08_c01.avi\n",
         "trainlist01.txt:1: expected 'Class/v_Class_gXX_cYY.avi label'"),
        ("testlist01.txt", "Juggling/v_Juggling_g01_c01.avi\n",
         "testlist01.txt:1: expected the path's folder to be a class of"),
    ],
)
def test_ucf101_bad_lines(tmp_path, root, list_name, text, message):
    d = _ucf(tmp_path)
    _write(d / list_name, text)
    with pytest.raises(FrosterError) as e:
        manifest_from_ucf101(d, root, "train1" if list_name.startswith("train") else "test1")
    assert message in str(e.value)


def test_ucf101_bad_split_and_class_index(tmp_path, root):
    d = _ucf(tmp_path)
    with pytest.raises(FrosterError, match="--split: format 'ucf101' takes train1|test1"):
        manifest_from_ucf101(d, root, "val")
    with pytest.raises(FrosterError, match="trainlist02.txt: UCF-101 split file not found"):
        manifest_from_ucf101(d, root, "train2")
    _write(d / "classInd.txt", "1 ApplyEyeMakeup\n3 YoYo\n")
    with pytest.raises(FrosterError, match=r"classInd.txt:2: expected class index 2 \(1..K in order\), found 3"):
        manifest_from_ucf101(d, root, "train1")


# ---- format 4: HMDB-51 ---------------------------------------------------------------------------------------------


def _hmdb(tmp_path):
    d = tmp_path / "testTrainMulti_7030_splits"
    _write(d / "brush_hair_test_split1.txt", "a_brush_hair_0.avi 1 \nb_brush_hair_0.avi 2 \nc_brush_hair_0.avi 0 \n")
    _write(d / "cartwheel_test_split1.txt", "a_cartwheel_0.avi 2 \nb_cartwheel_0.avi 1 \n")
    _write(d / "brush_hair_test_split2.txt", "a_brush_hair_0.avi 2 \n")
    return d


def test_hmdb51_splits(tmp_path, root):
    d = _hmdb(tmp_path)
    train = manifest_from_hmdb51(d, root, "train1")
    assert train.classes == ["brush_hair", "cartwheel"]
    assert train.prompt_names == ["brush hair", "cartwheel"]
    assert train.column("path") == ["brush_hair/a_brush_hair_0.avi", "cartwheel/b_cartwheel_0.avi"]
    assert train.column("video_id") == ["brush_hair/a_brush_hair_0", "cartwheel/b_cartwheel_0"]
    assert train.column("label") == [0, 1]
    test = manifest_from_hmdb51(d, root, "test1")
    assert test.column("path") == ["brush_hair/b_brush_hair_0.avi", "cartwheel/a_cartwheel_0.avi"]
    assert test.column("split") == ["test1", "test1"]
    every = manifest_from_hmdb51(d, root, "all")
    assert len(every) == 5 and "unused1" in every.column("split")
    split2 = manifest_from_hmdb51(d, root, "test2")
    assert split2.classes == ["brush_hair"] and len(split2) == 1


def test_hmdb51_bad_inputs(tmp_path, root):
    d = _hmdb(tmp_path)
    with pytest.raises(FrosterError, match=r"expected files \{class\}_test_split3.txt, found none"):
        manifest_from_hmdb51(d, root, "test3")
    _write(d / "cartwheel_test_split1.txt", "a_cartwheel_0.avi 2\nb_cartwheel_0.avi 3\n")
    with pytest.raises(FrosterError, match=r"cartwheel_test_split1.txt:2: expected 'name.avi 0\|1\|2'"):
        manifest_from_hmdb51(d, root, "train1")


# ---- format 5: a folder per class ----------------------------------------------------------------------------------


def test_folders(tmp_path, root):
    for rel in ["ApplyEyeMakeup/a.avi", "ApplyEyeMakeup/sub/b.MP4", "brush_hair/c.mkv", "brush_hair/notes.txt",
                ".hidden/d.mp4", "empty_class/.keep"]:
        _touch(root / rel)
    m = manifest_from_folders(root)
    assert m.classes == ["ApplyEyeMakeup", "brush_hair", "empty_class"]
    assert m.prompt_names == ["apply eye makeup", "brush hair", "empty class"]
    assert m.column("path") == ["ApplyEyeMakeup/a.avi", "ApplyEyeMakeup/sub/b.MP4", "brush_hair/c.mkv"]
    assert m.column("video_id") == ["ApplyEyeMakeup/a", "ApplyEyeMakeup/sub/b", "brush_hair/c"]
    assert m.column("split") == ["all"] * 3
    ordered = manifest_from_folders(root, classes_file=_write(tmp_path / "c.txt", "brush_hair\nApplyEyeMakeup\n"))
    assert ordered.classes == ["brush_hair", "ApplyEyeMakeup"] and ordered.column("label") == [1, 1, 0]
    with pytest.raises(FrosterError, match=r"brush_hair/c.mkv: unknown class 'brush_hair': not in .*c2.txt"):
        manifest_from_folders(root, classes_file=_write(tmp_path / "c2.txt", "ApplyEyeMakeup\n"))
    with pytest.raises(FrosterError, match="p.txt: expected 3 prompt names \\(one per class, by label\\), found 2"):
        build_manifest("folders", root, prompt_names_file=_write(tmp_path / "p.txt", "a\nb\n"))


def test_video_id_of():
    assert video_id_of("abseiling/0wR5jVB-WPk.mp4") == "abseiling/0wR5jVB-WPk"
    assert video_id_of("a/b.c.avi") == "a/b.c"
    assert video_id_of("a/noext") == "a/noext"


# ---- writing, reading, probing -------------------------------------------------------------------------------------


def _probe_fixture(tmp_path, root):
    from froster.pipeline.videowriter import write_video

    frames = np.random.default_rng(0).integers(0, 255, size=(8, 32, 32, 3), dtype=np.uint8)
    write_video(root / "a" / "ok.mp4", frames, fps=25.0, codec="h264")
    _touch(root / "a" / "empty.mp4")
    (root / "b").mkdir()
    (root / "b" / "corrupt.mp4").write_bytes(np.random.default_rng(1).bytes(4000))
    classes = _write(tmp_path / "c.txt", "a\nb\n")
    lst = _write(tmp_path / "l.txt", "a/ok.mp4 0\na/empty.mp4 0\nb/corrupt.mp4 1\nb/gone.mp4 1\n")
    return manifest_from_lists(lst, root, classes)


def test_probe_statuses_keep_every_row(tmp_path, root):
    m = probe_manifest(_probe_fixture(tmp_path, root), workers=2)
    assert m.column("status") == [STATUS_OK, STATUS_EMPTY, STATUS_UNDECODABLE, STATUS_MISSING]
    assert m.column("frames")[0] == 8 and m.column("fps")[0] == pytest.approx(25.0)
    assert (m.column("width")[0], m.column("height")[0]) == (32, 32)
    assert m.column("size")[0] == (root / "a" / "ok.mp4").stat().st_size
    assert m.column("size")[1] == 0 and m.column("size")[3] == -1
    reasons = m.column("reason")
    assert reasons[0] == "" and all(reasons[1:])
    assert m.table.schema.equals(SCHEMA)


def test_probe_progress_and_kinetics_missing_reason(tmp_path, root):
    seen = []
    m = probe_manifest(manifest_from_kinetics(_kinetics(tmp_path, root), root, split="train"), 1, progress=seen.append)
    assert seen == [1, 2, 3, 4]
    assert m.column("status")[3] == STATUS_MISSING
    assert "no gone_000001_000011.mp4, .mkv or .webm" in m.column("reason")[3]  # the builder's reason is kept
    assert m.column("status")[0] == STATUS_EMPTY  # the touched 0-byte files


def test_write_read_round_trip(tmp_path, root):
    m = probe_manifest(_probe_fixture(tmp_path, root), workers=2)
    out = write_manifest(m, tmp_path / "out" / "m.parquet")
    assert [p.name for p in out.parent.iterdir()] == ["m.parquet"]  # no temporary file left
    back = read_manifest(out)
    assert back.table.equals(m.table)
    assert (back.classes, back.prompt_names, back.video_root, back.source) == (
        m.classes, m.prompt_names, m.video_root, m.source)
    meta = pq.read_schema(out).metadata
    assert json.loads(meta[b"froster.classes"]) == ["a", "b"]
    assert json.loads(meta[b"froster.video_root"]) == str(root.resolve())
    assert b"froster.version" in meta and b"froster.source" in meta
    assert tuple(pq.read_schema(out).names) == COLUMNS


def test_read_manifest_refuses_other_files(tmp_path):
    with pytest.raises(FrosterError, match="manifest not found"):
        read_manifest(tmp_path / "none.parquet")
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1]}), other)
    with pytest.raises(FrosterError, match="other.parquet: expected manifest columns"):
        read_manifest(other)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(FrosterError, match="junk.parquet: not a readable Parquet manifest"):
        read_manifest(tmp_path / "junk.parquet")


# ---- the stage -----------------------------------------------------------------------------------------------------


def test_stage_writes_and_lists_failures(tmp_path, root, capsys):
    from froster.stages.manifest import ManifestConfig, run

    _probe_fixture(tmp_path, root)
    out = run(ManifestConfig(format="lists", video_root=root, out=tmp_path / "m.parquet",
                             annotations=tmp_path / "l.txt", classes=tmp_path / "c.txt", workers=2, max_listed=2))
    text = capsys.readouterr().out
    assert read_manifest(out).column("status")[0] == STATUS_OK
    assert "videos: 4  classes: 2" in text
    assert "status: empty 1, missing 1, ok 1, undecodable 1" in text
    assert "failing videos: 3" in text and "empty\ta/empty\tfile has 0 bytes" in text
    assert "... and 1 more (--max-listed 0 lists all)" in text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(format="csv"), "--format: expected one of"),
        (dict(format="lists", annotations=None), "--annotations: format 'lists' needs"),
        (dict(format="lists", classes=None), "--classes: format 'lists' needs"),
        (dict(format="ucf101", split=None), "--split: format 'ucf101' needs"),
        (dict(workers=0), "--workers: expected an integer >= 1"),
        (dict(out="m.csv"), "--out: expected a .parquet file"),
    ],
)
def test_stage_config_validation(tmp_path, kwargs, message):
    from froster.stages.manifest import ManifestConfig

    base = dict(format="lists", video_root=tmp_path, out=tmp_path / "m.parquet", annotations=tmp_path / "l.txt",
                classes=tmp_path / "c.txt", split="train1")
    with pytest.raises(ConfigError, match=message):
        ManifestConfig(**{**base, **kwargs})
