"""Class prompts: the release's 28 templates, descriptions, the bare prompt, and the Arrow round trip."""

from __future__ import annotations

import logging

import pyarrow as pa
import pytest

from froster.pipeline.errors import FrosterError
from froster.pipeline.prompts import (
    BARE_TEMPLATE_INDEX,
    NO_DESCRIPTION,
    TEMPLATES,
    PromptTable,
    build_prompts,
)


def test_templates_in_release_order():
    assert len(TEMPLATES) == 28
    assert TEMPLATES[:7] == (
        "a photo of {}.",
        "a photo of a person {}.",
        "a photo of a person using {}.",
        "a photo of a person doing {}.",
        "a photo of a person during {}.",
        "a photo of a person performing {}.",
        "a photo of a person practicing {}.",
    )
    assert TEMPLATES[8] == "a video of a person {}."
    assert TEMPLATES[14] == "a example of {}."  # the release's article, kept
    assert TEMPLATES[27] == "a demonstration of a person practicing {}."
    assert len(set(TEMPLATES)) == 28


def test_without_descriptions():
    table = build_prompts(["abseiling", "playing guitar"])
    assert table.num_prompts == 29 and table.num_classes == 2 and table.num_descriptions == 0
    assert table.texts[0] == ["a photo of abseiling.", "a photo of playing guitar."]
    assert table.texts[8][1] == "a video of a person playing guitar."
    assert table.texts[28] == ["abseiling", "playing guitar"]
    assert table.template_index == list(range(29))
    assert table.description_index == [NO_DESCRIPTION] * 29
    assert table.bare_prompt_rows() == [28]
    assert table.templated_rows() == list(range(28))


def test_with_descriptions_the_release_strings():
    desc = {
        "abseiling": ["Abseiling: This video shows a person descending a rock face.", "Abseiling: Going down a rope."],
        # a bare description gets the prompt name
        "playing guitar": ["A person strums a guitar.", "playing guitar: Fingers on strings."],
    }
    table = build_prompts(["abseiling", "playing guitar"], desc)
    assert table.num_prompts == 58 and table.num_descriptions == 2
    # Row p = d * 29 + t.
    assert table.texts[8][0] == (
        "a video of a person Abseiling. Abseiling: This video shows a person descending a rock face."
    )
    assert table.texts[8][1] == "a video of a person playing guitar. playing guitar: A person strums a guitar."
    assert table.texts[28] == [
        "Abseiling: This video shows a person descending a rock face.",
        "playing guitar: A person strums a guitar.",
    ]
    assert table.texts[29 + 0][0] == "a photo of Abseiling. Abseiling: Going down a rope."
    assert table.texts[29 + 28][1] == "playing guitar: Fingers on strings."
    assert table.template_index == list(range(29)) * 2
    assert table.description_index == [0] * 29 + [1] * 29
    assert table.bare_prompt_rows() == [28, 57]
    assert table.bare_prompt_rows(1) == [57]
    assert table.templated_rows(1) == list(range(29, 57))
    assert table.rows(template=3, description=1) == [32]


def test_rewritten_name_in_description_is_used_by_templates(caplog):
    # The authors' files: GPT rewrote "driving car" as "Driving a car"; the release formats templates with that name.
    with caplog.at_level(logging.INFO, logger="froster.pipeline.prompts"):
        table = build_prompts(["driving car"], {"driving car": ["Driving a car: A person steers a car."]})
    assert table.texts[1][0] == "a photo of a person Driving a car. Driving a car: A person steers a car."
    assert table.texts[28][0] == "Driving a car: A person steers a car."
    assert "Driving a car" in caplog.text


def test_missing_class_is_named():
    with pytest.raises(FrosterError, match="'surfing'"):
        build_prompts(["abseiling", "surfing"], {"abseiling": ["Abseiling: down a rope."]})


def test_uneven_description_counts_are_refused():
    desc = {"a": ["a: x", "a: y"], "b": ["b: x", "b: y"], "c": ["c: x"]}
    with pytest.raises(FrosterError, match="'c' has 1"):
        build_prompts(["a", "b", "c"], desc)


@pytest.mark.parametrize(
    "desc,needle",
    [
        ({"a": []}, "no description"),
        ({"a": "a: one string"}, "got one string"),
        ({"a": ["  "]}, "empty"),
        ({"a": [": no name"]}, "no name"),
    ],
)
def test_bad_descriptions(desc, needle):
    with pytest.raises(FrosterError, match=needle):
        build_prompts(["a"], desc)


def test_bad_names():
    with pytest.raises(FrosterError, match="no classes"):
        build_prompts([])
    with pytest.raises(FrosterError, match="class 1"):
        build_prompts(["a", " "])


def test_extra_classes_in_descriptions_are_ignored():
    table = build_prompts(["a"], {"a": ["a: x"], "b": ["b: y"]})
    assert table.num_classes == 1


def test_arrow_round_trip():
    table = build_prompts(["a", "b", "c"], {"a": ["a: 1", "a: 2"], "b": ["B: 1", "B: 2"], "c": ["3", "4"]})
    arrow = table.to_arrow()
    assert arrow.column_names == ["prompt", "class", "template_index", "description_index", "text"]
    assert all(arrow.schema.field(n).type == pa.int32() for n in arrow.column_names[:4])
    assert arrow.schema.field("text").type == pa.string()
    assert arrow.num_rows == 58 * 3
    # row p * C + c
    row = 30 * 3 + 2
    assert arrow.slice(row, 1).to_pylist()[0] == {
        "prompt": 30,
        "class": 2,
        "template_index": 1,
        "description_index": 1,
        "text": "a photo of a person c. c: 4",
    }
    assert PromptTable.from_arrow(arrow) == table
    plain = build_prompts(["x", "y"])
    assert PromptTable.from_arrow(plain.to_arrow()) == plain


def test_from_arrow_checks_layout():
    arrow = build_prompts(["a", "b"]).to_arrow()
    with pytest.raises(FrosterError, match="missing column"):
        PromptTable.from_arrow(arrow.drop_columns(["text"]))
    shuffled = arrow.take(pa.array([1, 0] + list(range(2, arrow.num_rows))))
    with pytest.raises(FrosterError, match="row 0"):
        PromptTable.from_arrow(shuffled)
    with pytest.raises(FrosterError, match="rows"):
        PromptTable.from_arrow(arrow.slice(0, arrow.num_rows - 1))


def test_bare_template_index_constant():
    assert BARE_TEMPLATE_INDEX == 28
