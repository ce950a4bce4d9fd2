"""Description files: the three formats read_descriptions accepts, writing, answer cleaning, the progress file."""

from __future__ import annotations

import json
import logging

import pytest

from froster.pipeline.descriptions import (
    DescriptionFile,
    _answer_text,
    _clean,
    _load_progress,
    _ProgressWriter,
    offline_descriptions,
    read_descriptions,
    write_descriptions,
)
from froster.pipeline.errors import FrosterError

CLASSES = ["abseiling", "air drumming", "ApplyEyeMakeup"]


def ours(tmp_path, descriptions, missing=(), name="d.json"):
    return write_descriptions(
        tmp_path / name,
        DescriptionFile(descriptions=descriptions, model="m", instruction="describe {class}", system=None,
                        fallback=False, n_per_class=len(next(iter(descriptions.values()))), missing=list(missing)),
    )


def test_ours_round_trip_gives_name_colon_description_in_class_order(tmp_path):
    path = ours(tmp_path, {"ApplyEyeMakeup": ["Makeup on."], "abseiling": ["Down a rope."],
                           "air drumming": ["Drums in the air."]})
    assert not list(tmp_path.glob("*.tmp"))
    doc = json.loads(path.read_text())
    assert doc["format"] == "froster-descriptions" and doc["date"] and doc["froster_version"]
    assert read_descriptions(path, CLASSES) == {
        "abseiling": ["abseiling: Down a rope."],
        "air drumming": ["air drumming: Drums in the air."],
        "ApplyEyeMakeup": ["apply eye makeup: Makeup on."],
    }
    assert list(read_descriptions(path)) == ["ApplyEyeMakeup", "abseiling", "air drumming"]  # the file's order
    assert list(read_descriptions(path, ["air drumming"])) == ["air drumming"]  # extra classes are ignored


def test_ours_absent_or_missing_class_is_named(tmp_path):
    path = ours(tmp_path, {"abseiling": ["Down a rope."]}, missing=["air drumming"])
    with pytest.raises(FrosterError, match=r"d\.json: no description for class 'air drumming'.*missing.*rerun"):
        read_descriptions(path, ["abseiling", "air drumming"])
    with pytest.raises(FrosterError, match="'ApplyEyeMakeup'"):
        read_descriptions(path, ["abseiling", "ApplyEyeMakeup"])


def test_ours_bad_entry_names_the_key(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"descriptions": {"abseiling": ["ok"], "archery": [""]}}))
    with pytest.raises(FrosterError, match=r"d\.json: key \"descriptions\"/'archery'"):
        read_descriptions(path)


def test_every_class_needs_the_same_number_of_descriptions(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("abseiling,one\nabseiling,two\narchery,one\n")
    with pytest.raises(FrosterError, match="same number.*'archery' has 1.*'abseiling' has 2"):
        read_descriptions(path)


def test_authors_json_is_mapped_by_index(tmp_path, caplog):
    path = tmp_path / "k400_rephrased_classes.json"
    path.write_text(json.dumps({"1": "Air Drumming: Drums in the air", "0": "Abseiling: Down a rope",
                                "2": "Apply Eye Makeup: Makeup on"}))
    with caplog.at_level(logging.WARNING):
        got = read_descriptions(path, CLASSES)
    assert got == {"abseiling": ["Abseiling: Down a rope"], "air drumming": ["Air Drumming: Drums in the air"],
                   "ApplyEyeMakeup": ["Apply Eye Makeup: Makeup on"]}
    assert "another class" not in caplog.text  # names agree up to case and spacing
    assert read_descriptions(path) == {"Abseiling": ["Abseiling: Down a rope"],
                                       "Air Drumming": ["Air Drumming: Drums in the air"],
                                       "Apply Eye Makeup": ["Apply Eye Makeup: Makeup on"]}


def test_authors_json_errors_name_the_key_or_class(tmp_path, caplog):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"0": "Abseiling: Down a rope", "1": "Archery: Bows"}))
    with pytest.raises(FrosterError, match="no description for class 'ApplyEyeMakeup'"):
        read_descriptions(path, ["abseiling", "archery", "ApplyEyeMakeup"])
    with pytest.raises(FrosterError, match=r'key "1": index outside the class list of 1'):
        read_descriptions(path, ["abseiling"])
    with caplog.at_level(logging.WARNING):  # the file follows another class order: said, not silently used
        read_descriptions(path, ["archery", "abseiling"])
    assert 'key "0" says \'Abseiling\'' in caplog.text
    path.write_text(json.dumps({"zero": "Abseiling: Down a rope"}))
    with pytest.raises(FrosterError, match="key 'zero'.*integer"):
        read_descriptions(path)


def test_csv_with_and_without_header(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('class,description\nabseiling,"Down a rope, slowly"\nair drumming,Air Drumming: Drums\n'
                    "ApplyEyeMakeup,Makeup on\n\nabseiling,Second one\nair drumming,Again\nApplyEyeMakeup,More\n")
    assert read_descriptions(path, CLASSES) == {
        "abseiling": ["abseiling: Down a rope, slowly", "abseiling: Second one"],
        "air drumming": ["air drumming: Drums", "air drumming: Again"],  # a leading "Name:" is not doubled
        "ApplyEyeMakeup": ["apply eye makeup: Makeup on", "apply eye makeup: More"],
    }
    path.write_text("abseiling,Down a rope\n")
    assert read_descriptions(path) == {"abseiling": ["abseiling: Down a rope"]}


def test_csv_errors_name_the_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("abseiling,Down a rope\narchery,Bows,and arrows\n")
    with pytest.raises(FrosterError, match=r"d\.csv line 2: expected 2 columns"):
        read_descriptions(path)
    path.write_text("abseiling,Down a rope\narchery,\n")
    with pytest.raises(FrosterError, match=r"d\.csv line 2: empty description"):
        read_descriptions(path)


def test_unreadable_files_name_the_file_and_line(tmp_path):
    with pytest.raises(FrosterError, match="nope.json: no description file"):
        read_descriptions(tmp_path / "nope.json")
    path = tmp_path / "bad.json"
    path.write_text('{\n  "0": "Abseiling: x",\n  oops\n}')
    with pytest.raises(FrosterError, match=r"bad\.json line 3"):
        read_descriptions(path)
    path.write_text("[1, 2]")
    with pytest.raises(FrosterError, match="found list"):
        read_descriptions(path)


def test_offline_fallback_is_a_plain_sentence(tmp_path, caplog):
    assert offline_descriptions(["brushing_teeth"]) == {"brushing_teeth": ["A video showing brushing teeth."]}
    path = write_descriptions(tmp_path / "d.json", DescriptionFile(
        descriptions=offline_descriptions(["abseiling"]), model=None, instruction=None, system=None,
        fallback=True, n_per_class=1))
    with caplog.at_level(logging.WARNING):
        assert read_descriptions(path) == {"abseiling": ["abseiling: A video showing abseiling."]}
    assert "offline fallback" in caplog.text


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  The video shows abseiling.  ", "The video shows abseiling."),
        ('"The video shows abseiling."', "The video shows abseiling."),
        ("\u201cThe video shows abseiling.\u201d", "The video shows abseiling."),
        ("Abseiling: The video shows it.", "The video shows it."),
        ('"Abseiling: \'The video shows it.\'"', "The video shows it."),
        ("Description: The video shows it.", "The video shows it."),
        ("Note: ropes are used.", "Note: ropes are used."),  # only the class name is stripped
    ],
)
def test_clean(raw, expected):
    assert _clean(raw, ("abseiling", "abseiling")) == expected


def test_answer_text_rejects_what_a_prompt_cannot_hold():
    def body(content, finish="stop"):
        return json.dumps({"choices": [{"message": {"content": content}, "finish_reason": finish}]})

    names = ("abseiling", "abseiling")
    assert _answer_text(body("Down a rope."), names, 50) == ("Down a rope.", "")
    assert _answer_text(body("a\n\nb"), names, 50)[1].startswith("multi-paragraph")
    assert _answer_text(body("a\nb"), names, 50)[1].startswith("multi-line")
    assert _answer_text(body("x" * 51), names, 50)[1].startswith("over-long")
    assert _answer_text(body('""'), names, 50)[1] == "empty answer"
    assert _answer_text(body("Down a", "length"), names, 50)[1].startswith("answer cut off")
    assert _answer_text(body(None), names, 50)[1].startswith("malformed")
    assert _answer_text("<html>", names, 50)[1].startswith("malformed")
    assert _answer_text('{"choices": "x"}', names, 50)[1].startswith("malformed")


def test_progress_file_survives_a_torn_last_line(tmp_path, caplog):
    path = tmp_path / "p.jsonl"
    rec = {"class": "abseiling", "k": 0, "text": "Down a rope.", "model": "m", "instruction": "i {class}",
           "system": None}
    path.write_text(json.dumps(rec) + "\n" + '{"class": "archery", "k": 0, "te')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        known = _load_progress(path, "m", "i {class}", None, {"abseiling", "archery"}, 1)
    assert known == {("abseiling", 0): "Down a rope."} and "line 2" in caplog.text
    writer = _ProgressWriter(path)  # closes the torn line off before appending
    writer.append({**rec, "class": "archery", "text": "Bows."})
    writer.close()
    known = _load_progress(path, "m", "i {class}", None, {"abseiling", "archery"}, 1)
    assert known == {("abseiling", 0): "Down a rope.", ("archery", 0): "Bows."}
    # answers from another model or instruction are not reused; nor classes or k outside this run
    assert _load_progress(path, "other", "i {class}", None, {"abseiling", "archery"}, 1) == {}
    assert _load_progress(path, "m", "i {class}", None, {"archery"}, 1) == {("archery", 0): "Bows."}
