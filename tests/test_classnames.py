"""Class-name files (txt / JSON / CSV), prompt names and the normalised names vocabularies are compared by."""

from __future__ import annotations

import json

import pytest

from froster.pipeline.classnames import normalize_name, prompt_name, read_class_names
from froster.pipeline.errors import FrosterError

NAMES = ["abseiling", "air drumming", "passing American football (in game)"]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("ApplyEyeMakeup", "apply eye makeup"),  # UCF-101 CamelCase, split and lowercased
        ("YoYo", "yo yo"),
        ("HandstandPushups", "handstand pushups"),
        ("Archery", "archery"),  # a one-word UCF class is lowercased like the others
        ("TVWatching", "TV watching"),  # acronyms keep their capitals
        ("PlayingDJ", "playing DJ"),
        ("brush_hair", "brush hair"),  # HMDB-51: underscores to spaces
        ("passing American football (in game)", "passing American football (in game)"),  # Kinetics: case kept
        ("Tai chi", "Tai chi"),  # spaces: not CamelCase, case kept
        ("  dribbling   basketball ", "dribbling basketball"),
        ("TV", "TV"),  # all capitals: not CamelCase
    ],
)
def test_prompt_name(raw, expected):
    assert prompt_name(raw) == expected


def test_normalize_name_ignores_case_punctuation_spaces():
    assert normalize_name("ApplyEyeMakeup") == normalize_name("apply_eye_makeup") == normalize_name("Apply eye-makeup")
    assert normalize_name("passing American football (in game)") == "passingamericanfootballingame"
    assert normalize_name("yoga") != normalize_name("yo yo")


def test_txt(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("\n".join(NAMES) + "\n\n")
    assert read_class_names(f) == NAMES


def test_json_index_map_any_order(tmp_path):
    f = tmp_path / "classes.json"
    f.write_text(json.dumps({"2": NAMES[2], "0": NAMES[0], "1": NAMES[1]}))
    assert read_class_names(f) == NAMES


def test_json_list_and_inverted_map(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "labels.json"
    a.write_text(json.dumps(NAMES))
    b.write_text(json.dumps({"Pushing something": "1", "Holding something": "0"}))  # Something-Something v2
    assert read_class_names(a) == NAMES
    assert read_class_names(b) == ["Holding something", "Pushing something"]


def test_csv_with_and_without_header(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("id,name\n0,abseiling\n1,air drumming\n2,passing American football (in game)\n")
    b.write_text('1,air drumming\n0,abseiling\n2,"passing American football (in game)"\n')
    assert read_class_names(a) == NAMES
    assert read_class_names(b) == NAMES


def test_csv_name_with_comma_quoted(tmp_path):
    f = tmp_path / "c.csv"
    f.write_text('id,name\n0,"cooking, frying"\n1,eating\n')
    assert read_class_names(f) == ["cooking, frying", "eating"]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("a.txt", "abseiling\n\nair drumming\n", "a.txt:2: expected a class name, found a blank line"),
        ("b.txt", "abseiling\nabseiling\n", "b.txt:2: duplicate class name 'abseiling' (first at"),
        ("c.csv", "id,name\n0,a\n0,b\n", "c.csv:3: duplicate id 0 (first at"),
        ("d.csv", "id,name\n0,a\n2,b\n", "expected ids 0..1 (one per class), missing 1; found out of range 2"),
        ("e.csv", "0,a\nx,b\n", "e.csv:2: expected an integer id in the first column, found 'x'"),
        ("f.csv", "0,a,extra\n", "f.csv:1: expected 2 columns 'id,name', found 3"),
        ("g.json", '{"0": "a", "1": }', "g.json:1: invalid JSON"),
        ("h.json", '{"0": "a", "one": "b"}', "expected integer ids as keys"),
        ("i.txt", "\n\n", "expected one class name per line, found no names"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, name, text, message):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(FrosterError) as e:
        read_class_names(f)
    assert message in str(e.value)
    assert name in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(FrosterError, match="class-name file not found"):
        read_class_names(tmp_path / "nope.txt")
