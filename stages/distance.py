"""Stage: semantic distance between two vocabularies (the paper's Fig. 1 and 5).

Reads two vocabularies, each a class-name file (txt / JSON / CSV, see pipeline/classnames.py) or a feature store
(its manifest's class list), and embeds the class names alone, without a template, with the teacher's text tower, as
the authors' ``dataset_distance/cal_sim.py`` did. From a store built without descriptions the stored bare-prompt text
features are exactly those embeddings and are used as they are; otherwise the names are encoded with the teacher named
by ``--model/--pretrained/--checkpoint``, or by the stores' provenance.

Writes ``distance.json`` and ``distance.md`` into the result directory (default ``reports/distance/<source>__<target>``):
the authors' measure (mean over target classes of the best cosine similarity to any source class, with the largest
and smallest of those maxima), the symmetric Hausdorff distance on the cosine distance 1 - cos, and the closest
(target, source) pairs.

    froster distance --source cache/k400_train.zarr --target classes/k600_split1.txt
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from froster.pipeline.errors import ConfigError, FrosterError
from froster.pipeline.metrics import DatasetDistance, dataset_distance
from froster.pipeline.report import markdown_table, write_text

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class DistanceConfig:
    """Settings of ``froster distance``."""

    source: Path  # the training vocabulary: a class-name file or a store directory (e.g. the K400 train store)
    target: Path  # the evaluation vocabulary, compared against the source
    # The teacher whose text tower embeds the names. None: the stores' provenance (the two must agree). Needed when
    # neither side is a store. An open_clip name or "local-dir:PATH".
    model: str | None = None
    pretrained: str | None = None  # open_clip pretrained tag of --model (e.g. "openai")
    checkpoint: Path | None = None  # a weights file for --model instead of a pretrained tag
    # Drop target classes whose normalised name is also a source class (the authors' remove_overlap; the paper
    # excludes K600 classes shared with K400). False keeps every class, as cal_sim.py does by default.
    remove_overlap: bool = False
    pairs: int = 5  # closest (target, source) pairs to list, 5 as the issue asks
    out: Path | None = None  # result directory; None: reports/distance/<source stem>__<target stem>
    device: str = "cpu"  # where the text tower runs
    batch_size: int = 256  # prompts per text-tower call

    def __post_init__(self):
        for name in ("source", "target"):
            p = Path(getattr(self, name))
            if not p.exists():
                raise ConfigError(f"--{name}: {p} does not exist (expected a class-name file or a store directory)")
        if self.pairs < 0:
            raise ConfigError(f"--pairs must be >= 0, got {self.pairs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.model is None and (self.pretrained is not None or self.checkpoint is not None):
            raise ConfigError("--pretrained and --checkpoint need --model")


@dataclass
class Vocabulary:
    """One side: where it came from, its raw class names, the names put in prompts and, maybe, stored embeddings."""

    path: Path
    kind: str  # "store" or "class file"
    classes: list[str]
    prompt_names: list[str]
    stored: np.ndarray | None = None  # [K, D] bare-name teacher text features from a store without descriptions
    teacher: dict | None = None  # the store's teacher provenance
    embeddings: np.ndarray | None = field(default=None, repr=False)  # [K, D] what is compared


def _is_store(path: Path) -> bool:
    return path.is_dir() and (path / "zarr.json").is_file()


def _read_vocabulary(path: Path, option: str) -> Vocabulary:
    if _is_store(path):
        from froster.pipeline.store import FeatureStore

        store = FeatureStore.open(path)
        m = store.manifest
        attrs = store.attrs
        stored = None
        if attrs.get("descriptions") is None and store.prompts.num_descriptions == 0:
            rows = store.prompts.bare_prompt_rows()  # without descriptions, the bare prompt is the prompt name alone
            if len(rows) == 1:
                stored = np.asarray(store.text_features[rows[0]], dtype=np.float32)  # [K, D]
        return Vocabulary(path, "store", list(m.classes), list(m.prompt_names), stored, attrs.get("teacher"))
    if path.is_dir():
        raise FrosterError(f"{option}: {path} is a directory but not a feature store (no zarr.json)")
    from froster.pipeline.classnames import prompt_name, read_class_names

    try:
        classes = list(read_class_names(path))
    except FrosterError as e:
        raise FrosterError(f"{option}: {e}") from e
    if not classes:
        raise FrosterError(f"{option}: {path} holds no class names")
    return Vocabulary(path, "class file", classes, [prompt_name(c) for c in classes])


def _teacher_spec(config: DistanceConfig, sides: list[Vocabulary]):
    """The TeacherSpec to encode names with, and whether it is the stores' own teacher."""
    from froster.pipeline.teacher import TeacherSpec

    if config.model is not None:
        return TeacherSpec(
            model=config.model,
            pretrained=config.pretrained,
            checkpoint=str(config.checkpoint) if config.checkpoint is not None else None,
        ), False
    provenances = [(v.path, v.teacher) for v in sides if v.kind == "store"]
    if not provenances:
        raise FrosterError(
            "--model: neither --source nor --target is a store, so name the teacher whose text tower embeds the "
            "class names (e.g. --model ViT-B-16 --pretrained openai)"
        )
    (first_path, first), *rest = provenances
    for path, other in rest:
        if _teacher_id(other) != _teacher_id(first):
            raise FrosterError(
                f"--source and --target stores were made with different teachers ({first_path}: {_teacher_id(first)}; "
                f"{path}: {_teacher_id(other)}); pass --model to embed both vocabularies with one teacher"
            )
    if first is None:
        raise FrosterError(f"{first_path}: the store records no teacher provenance; pass --model")
    return TeacherSpec.from_provenance(first), True


def _teacher_id(provenance: dict | None) -> tuple:
    p = provenance or {}
    return (p.get("model"), p.get("pretrained"), p.get("checkpoint_sha256") or p.get("checkpoint"))


def _encode_names(loaded, names: list[str], device: str, batch_size: int) -> np.ndarray:
    """L2-normalised text embeddings [K, D] of ``names`` as prompts of their own (no template)."""
    import torch
    import torch.nn.functional as F

    from froster.pipeline.text import encode_text_trimmed, tokenize

    tokens = tokenize(loaded.tokenizer, names)  # [K, L]
    with torch.no_grad():
        emb = encode_text_trimmed(loaded.model, tokens.to(device), max_batch=batch_size)  # [K, D]
    return F.normalize(emb.float(), dim=-1).cpu().numpy()


def _overlap_mask(target: Vocabulary, source: Vocabulary) -> np.ndarray:
    from froster.pipeline.classnames import normalize_name

    src = {normalize_name(c) for c in source.classes}
    return np.array([normalize_name(c) not in src for c in target.classes], dtype=bool)


def _default_out(config: DistanceConfig) -> Path:
    def stem(p: Path) -> str:
        name = Path(p).name
        for suffix in (".zarr", ".txt", ".json", ".csv"):
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name

    return Path("reports") / "distance" / f"{stem(config.source)}__{stem(config.target)}"


def _markdown(result: DatasetDistance, source: Vocabulary, target: Vocabulary, kept: list[int], teacher: dict,
              removed: int) -> str:
    lines = [
        f"# Dataset distance: {target.path} (target, {len(kept)} classes) vs {source.path} "
        f"(source, {len(source.classes)} classes)",
        "",
        f"Teacher text features of the class names alone (no template): {teacher.get('model')} "
        f"({teacher.get('pretrained') or teacher.get('checkpoint') or 'no pretrained tag'}).",
    ]
    if removed:
        lines.append(f"{removed} target classes also in the source were removed (--remove-overlap).")
    lines += [
        "",
        markdown_table(
            ["measure", "value"],
            [
                ["mean over target classes of max cos to a source class (authors' measure; higher = closer)",
                 f"{result.mean_max_similarity:.4f}"],
                ["max of those maxima", f"{result.max_max_similarity:.4f}"],
                ["min of those maxima", f"{result.min_max_similarity:.4f}"],
                ["symmetric Hausdorff distance on 1 - cos (lower = closer)", f"{result.hausdorff:.4f}"],
                ["  directed target -> source", f"{result.hausdorff_target_to_source:.4f}"],
                ["  directed source -> target", f"{result.hausdorff_source_to_target:.4f}"],
            ],
        ),
        "",
        f"Closest pairs ({len(result.closest_pairs)}):",
        "",
        markdown_table(
            ["target class", "source class", "cos"],
            [[target.classes[kept[p.target]], source.classes[p.source], f"{p.similarity:.4f}"]
             for p in result.closest_pairs],
            left=2,
        ),
    ]
    return "\n".join(lines) + "\n"


def run(config: DistanceConfig) -> Path:
    """Compute the distances and write distance.json and distance.md; returns the result directory."""
    source = _read_vocabulary(Path(config.source), "--source")
    target = _read_vocabulary(Path(config.target), "--target")
    sides = [source, target]
    spec, own_teacher = _teacher_spec(config, sides)

    # Stored bare-name features are the teacher's own embeddings of the names: use them when the teacher is the store's.
    need = [v for v in sides if not (own_teacher and v.stored is not None)]
    teacher_provenance = dict(source.teacher or target.teacher or {}) if own_teacher else {}
    if need:
        from froster.pipeline.teacher import load_clip

        loaded = load_clip(spec, device=config.device)
        teacher_provenance = dict(loaded.provenance)
        for v in need:
            log.info("encoding %d class names of %s with %s", len(v.prompt_names), v.path, spec.model)
            v.embeddings = _encode_names(loaded, v.prompt_names, config.device, config.batch_size)
    for v in sides:
        if v.embeddings is None:
            log.info("using the stored bare-name text features of %s", v.path)
            v.embeddings = v.stored
    if source.embeddings.shape[1] != target.embeddings.shape[1]:
        raise FrosterError(
            f"--source embeddings have D={source.embeddings.shape[1]} but --target D={target.embeddings.shape[1]}"
        )

    keep = _overlap_mask(target, source) if config.remove_overlap else np.ones(len(target.classes), bool)
    kept = np.flatnonzero(keep).tolist()
    if not kept:
        raise FrosterError(f"--remove-overlap: every class of {target.path} is also in {source.path}; nothing left")
    result = dataset_distance(target.embeddings[kept], source.embeddings, num_pairs=config.pairs)

    out = Path(config.out) if config.out is not None else _default_out(config)
    out.mkdir(parents=True, exist_ok=True)
    removed = len(target.classes) - len(kept)
    record = {
        "source": {"path": str(source.path), "kind": source.kind, "classes": len(source.classes)},
        "target": {"path": str(target.path), "kind": target.kind, "classes": len(target.classes),
                   "compared": len(kept), "removed_overlap": removed},
        "teacher": teacher_provenance,
        "names": "class prompt names alone, no template",
        "mean_max_similarity": result.mean_max_similarity,
        "max_max_similarity": result.max_max_similarity,
        "min_max_similarity": result.min_max_similarity,
        "hausdorff": result.hausdorff,
        "hausdorff_target_to_source": result.hausdorff_target_to_source,
        "hausdorff_source_to_target": result.hausdorff_source_to_target,
        "closest_pairs": [
            {"target": target.classes[kept[p.target]], "source": source.classes[p.source], "similarity": p.similarity}
            for p in result.closest_pairs
        ],
        "per_target": [
            {"target": target.classes[kept[i]], "nearest_source": source.classes[j], "similarity": s}
            for i, (j, s) in enumerate(zip(result.per_target_nearest, result.per_target_max))
        ],
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
    }
    write_text(out / "distance.json", json.dumps(record, indent=2) + "\n")
    write_text(out / "distance.md", _markdown(result, source, target, kept, teacher_provenance, removed))
    log.info("mean max similarity %.4f, Hausdorff %.4f -> %s", result.mean_max_similarity, result.hausdorff, out)
    return out
