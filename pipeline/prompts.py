"""Class prompts, built as the authors' release builds them (FROSTER ``text_prompt``).

28 templates: 4 prefixes x 7 suffixes in the release's order (including its "a example of"). With descriptions, each
description string is "Name: description" and prompt t of it is
``TEMPLATES[t].format(Name) + " " + "Name: description"``; the 29th prompt (template index 28, "bare") is
"Name: description" alone. Name is the text before the first ':' of the description, exactly as the release's
``desc.split(':')[0]``: the authors' GPT files sometimes rewrite a class name ("Driving a car"), and their templates use
the rewritten name. A bare description (no ':') is turned into "<prompt name>: <description>". Without descriptions,
each template is formatted with the prompt name and the 29th prompt is the prompt name alone.

Rows: prompt p = description d * 29 + template t, so P = 29 * n for n descriptions per class (29 without). The table is
``texts[p][c]``; its Arrow form (the store's ``prompts.parquet``) has one row per (p, c) at row p * C + c.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import pyarrow as pa

from froster.pipeline.errors import FrosterError

logger = logging.getLogger(__name__)

PREFIXES = ("a photo of", "a video of", "a example of", "a demonstration of")
SUFFIXES = (
    "{}.",
    "a person {}.",
    "a person using {}.",
    "a person doing {}.",
    "a person during {}.",
    "a person performing {}.",
    "a person practicing {}.",
)
# Prefix-major, as the release lists them: "a photo of {}.", "a photo of a person {}.", ..., "a demonstration of ...".
TEMPLATES: tuple[str, ...] = tuple(f"{prefix} {suffix}" for prefix in PREFIXES for suffix in SUFFIXES)
BARE_TEMPLATE_INDEX = 28  # the template index of the bare prompt ("Name: description", or the prompt name)
PROMPTS_PER_DESCRIPTION = len(TEMPLATES) + 1  # 29
NO_DESCRIPTION = -1  # description_index of every prompt when there are no descriptions

_ARROW_SCHEMA = pa.schema(
    [
        ("prompt", pa.int32()),
        ("class", pa.int32()),
        ("template_index", pa.int32()),
        ("description_index", pa.int32()),
        ("text", pa.string()),
    ]
)


@dataclass(frozen=True)
class PromptTable:
    """The P x C prompt strings and, per prompt row p, its template index (28 = bare) and description index."""

    texts: list[list[str]]  # [P][C]
    template_index: list[int]  # [P], 0..27 templates, 28 bare
    description_index: list[int]  # [P], 0..n-1, or -1 without descriptions

    def __post_init__(self):
        P = len(self.texts)
        if P == 0 or len(self.template_index) != P or len(self.description_index) != P:
            raise ValueError(
                f"PromptTable: texts, template_index and description_index must have the same length P >= 1, got "
                f"{P}, {len(self.template_index)}, {len(self.description_index)}"
            )
        C = len(self.texts[0])
        if C == 0 or any(len(row) != C for row in self.texts):
            raise ValueError("PromptTable: every prompt row must have the same number of classes C >= 1")

    @property
    def num_prompts(self) -> int:
        """P."""
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        """C."""
        return len(self.texts[0])

    @property
    def num_descriptions(self) -> int:
        """n descriptions per class; 0 without descriptions."""
        return len({d for d in self.description_index if d != NO_DESCRIPTION})

    def rows(self, template: int | None = None, description: int | None = None) -> list[int]:
        """Prompt rows p with the given template index and/or description index (None = any), in order."""
        return [
            p
            for p, (t, d) in enumerate(zip(self.template_index, self.description_index))
            if (template is None or t == template) and (description is None or d == description)
        ]

    def bare_prompt_rows(self, desc_idx: int | None = None) -> list[int]:
        """Rows of the bare prompt (template 28): of description ``desc_idx``, or of every description when None."""
        return self.rows(template=BARE_TEMPLATE_INDEX, description=desc_idx)

    def templated_rows(self, desc_idx: int | None = None) -> list[int]:
        """Rows of the 28 templates (not the bare prompt): of description ``desc_idx``, or of all when None."""
        return [p for p in self.rows(description=desc_idx) if self.template_index[p] != BARE_TEMPLATE_INDEX]

    def to_arrow(self) -> pa.Table:
        """One row per (p, c) at row p * C + c: prompt, class, template_index, description_index, text."""
        P, C = self.num_prompts, self.num_classes
        return pa.table(
            {
                "prompt": pa.array([p for p in range(P) for _ in range(C)], pa.int32()),
                "class": pa.array([c for _ in range(P) for c in range(C)], pa.int32()),
                "template_index": pa.array([self.template_index[p] for p in range(P) for _ in range(C)], pa.int32()),
                "description_index": pa.array(
                    [self.description_index[p] for p in range(P) for _ in range(C)], pa.int32()
                ),
                "text": pa.array([t for row in self.texts for t in row], pa.string()),
            },
            schema=_ARROW_SCHEMA,
        )

    @classmethod
    def from_arrow(cls, table: pa.Table) -> PromptTable:
        """The inverse of ``to_arrow``; checks the columns and that row p * C + c holds (p, c)."""
        missing = [f.name for f in _ARROW_SCHEMA if f.name not in table.column_names]
        if missing:
            raise FrosterError(
                f"prompt table: missing column(s) {missing}; expected {_ARROW_SCHEMA.names}, found {table.column_names}"
            )
        cols = {name: table.column(name).to_pylist() for name in _ARROW_SCHEMA.names}
        n = table.num_rows
        if n == 0:
            raise FrosterError("prompt table: has no rows")
        P, C = max(cols["prompt"]) + 1, max(cols["class"]) + 1
        if P * C != n:
            raise FrosterError(f"prompt table: {n} rows, expected P * C = {P} * {C} = {P * C}")
        texts: list[list[str]] = [[""] * C for _ in range(P)]
        template_index = [0] * P
        description_index = [0] * P
        for i in range(n):
            p, c = cols["prompt"][i], cols["class"][i]
            if (p, c) != divmod(i, C):
                raise FrosterError(f"prompt table: row {i} holds (prompt {p}, class {c}), expected {divmod(i, C)}")
            text = cols["text"][i]
            if text is None:
                raise FrosterError(f"prompt table: row {i} (prompt {p}, class {c}) has no text")
            texts[p][c] = text
            template_index[p] = cols["template_index"][i]
            description_index[p] = cols["description_index"][i]
        return cls(texts, template_index, description_index)


def _split_description(prompt_name: str, description: str) -> tuple[str, str]:
    """(Name, "Name: description") of one description string of class ``prompt_name``."""
    full = description.strip()
    if ":" in full:
        name = full.split(":", 1)[0]  # the release's desc.split(':')[0], unstripped
        if not name.strip():
            raise FrosterError(
                f"descriptions: class {prompt_name!r}: description {description!r} has no name before its ':'"
            )
        return name, full
    return prompt_name, f"{prompt_name}: {full}"


def build_prompts(prompt_names: Sequence[str], descriptions: Mapping[str, Sequence[str]] | None = None) -> PromptTable:
    """The P x C prompts of classes ``prompt_names`` (C), with ``descriptions`` (prompt name -> n strings) or without.

    Every class needs the same number n >= 1 of descriptions; a class missing from ``descriptions`` is an error naming
    it (a silent fall-back to the bare name would change the text features without anyone noticing).
    """
    names = list(prompt_names)
    if not names:
        raise FrosterError("prompts: no classes given (prompt_names is empty)")
    for c, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise FrosterError(f"prompts: class {c} has an empty or non-string prompt name: {name!r}")

    if descriptions is None:
        texts = [[tmpl.format(name) for name in names] for tmpl in TEMPLATES] + [list(names)]  # [29][C]
        return PromptTable(texts, list(range(PROMPTS_PER_DESCRIPTION)), [NO_DESCRIPTION] * PROMPTS_PER_DESCRIPTION)

    missing = [name for name in names if name not in descriptions]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:10])
        if len(missing) > 10:
            shown += f" and {len(missing) - 10} more"
        raise FrosterError(
            f"descriptions: no description for {len(missing)} of {len(names)} classes: {shown}; "
            "every class of the vocabulary needs its descriptions"
        )
    counts = {}
    for name in names:
        value = descriptions[name]
        if isinstance(value, str):  # a lone string would otherwise be iterated character by character
            raise FrosterError(f"descriptions: class {name!r}: expected a list of description strings, got one string")
        counts[name] = len(value)
    n_set = sorted(set(counts.values()))
    if n_set[0] == 0:
        empty = [name for name, k in counts.items() if k == 0]
        raise FrosterError(f"descriptions: class(es) {empty[:10]} have no description strings")
    if len(n_set) > 1:
        n = max(set(counts.values()), key=list(counts.values()).count)
        odd = {name: k for name, k in counts.items() if k != n}
        raise FrosterError(
            f"descriptions: every class needs the same number of descriptions; most have {n}, these differ: "
            + ", ".join(f"{name!r} has {k}" for name, k in list(odd.items())[:10])
        )
    n = n_set[0]

    split = {}  # prompt name -> [(Name, "Name: description")] * n
    renamed = []
    for name in names:
        parts = []
        for d, desc in enumerate(descriptions[name]):
            if not isinstance(desc, str) or not desc.strip():
                raise FrosterError(f"descriptions: class {name!r}: description {d} is empty or not a string: {desc!r}")
            parts.append(_split_description(name, desc))
        split[name] = parts
        renamed.extend((name, nm) for nm, _ in parts if nm.strip().casefold() != name.casefold())
    if renamed:
        # Expected with the authors' files (GPT rewrote some names); worth knowing when it is a mismatched file.
        logger.info(
            "%d description(s) name their class differently from its prompt name (templates use the description's "
            "name, as the release does), e.g. %s",
            len(renamed),
            ", ".join(f"{a!r} -> {b!r}" for a, b in renamed[:5]),
        )

    texts, template_index, description_index = [], [], []
    for d in range(n):
        for t, tmpl in enumerate(TEMPLATES):
            texts.append([tmpl.format(split[name][d][0]) + " " + split[name][d][1] for name in names])
            template_index.append(t)
            description_index.append(d)
        texts.append([split[name][d][1] for name in names])
        template_index.append(BARE_TEMPLATE_INDEX)
        description_index.append(d)
    return PromptTable(texts, template_index, description_index)
