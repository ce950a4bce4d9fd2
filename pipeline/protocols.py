"""Protocol files: one TOML file says everything a reported number depends on, so that ``froster train`` and
``froster evaluate`` read the same definition and nobody re-derives splits by hand.

Format (version 1). Paths are relative to the folder of the protocol file. Unknown keys are errors (a misspelt
``disjoint`` must not be silently ignored), except inside ``[derivation]``, which is a record for people.

``[protocol]``
    ``format = 1``; ``name``; ``kind`` = ``"base2novel"`` | ``"cross-dataset"``; ``checkpoint`` = ``"last"`` (the last
    epoch: base-to-novel, the paper's A.1) | ``"averaged"`` (the running weight average: cross-dataset, A.1);
    ``froster_version`` (of the writer).
``[aggregation]``
    ``kind`` (= the protocol's kind); ``metric`` (``"top1"``); ``groups``: the eval-set groups in report order;
    ``ddof``: the delta degrees of freedom of every standard deviation (0: population std); ``rule``: the rule in words.
    base2novel: per run, base top-1 ``b`` (group "base"), novel top-1 ``n`` (group "novel"), ``HM = 2bn/(b+n)``;
    summary: mean and std over runs of b and n, HM of the two means (the paper's tables) and the mean of the per-run
    HMs. cross-dataset: per group, mean and std over the group's sets (UCF/HMDB official splits 1-3, K600 subsets);
    a group with one set (the full sets "ucf101-full" = UCF*, "hmdb51-full" = HMDB*) reports its one value.
``[derivation]``
    How the file was made (rules, seeds, shots, class files, list files), written by the builders. Not read back.
``[datasets.NAME]``
    ``manifest`` (a ``froster manifest`` Parquet file, the thing stages read); as a record of where it came from:
    ``video_root``, ``source`` (the annotation and class-name files), ``split``, ``videos``, ``classes`` (counts).
``[vocabularies]``
    ``NAME = ["class", ...]``: raw class names as in the manifests' class lists (not prompt names). A vocabulary's
    order is its label order: label i means vocabulary[i]. Stage two maps entries to manifest labels
    (``vocabulary_labels``).
``[[runs]]`` (one training run each)
    ``name``; ``dataset`` (the training manifest); ``vocabulary`` (a name in ``[vocabularies]`` or an inline list);
    ``seed`` (optional, the seed its subset was drawn with); the training subset: ``train_videos = ["video_id", ...]``
    or ``train_videos_file = "file.txt"`` (one video_id per line), or neither: every usable (status ok) video of the
    manifest whose class is in the vocabulary.
``[[eval_sets]]``
    ``name``; ``dataset``; ``vocabulary``; ``group`` (an ``[aggregation].groups`` entry); ``run`` (a run name, or
    ``"all"``: evaluated with every run's checkpoint); ``views = "test"`` (``views.test_views``: 3 clips, centre crop);
    ``disjoint``: true when the vocabulary must share no class with the run's training vocabulary (base2novel novel
    sets, K600 new-class subsets). The set's videos are the manifest rows whose class is in its vocabulary.

Disjoint sets are checked when a protocol is built and again when it is loaded: two class names are the same class
when ``classnames.normalize_name`` (case, punctuation, spaces removed) agrees, and an overlap is refused naming the
classes. A short example (the worked examples for every dataset of the paper are in docs/protocols.md)::

    [protocol]
    format = 1
    name = "hmdb51-base2novel"
    kind = "base2novel"
    checkpoint = "last"

    [aggregation]
    kind = "base2novel"
    metric = "top1"
    groups = ["base", "novel"]
    ddof = 0
    rule = "per run: b = top-1 on 'base', n = top-1 on 'novel', HM = 2bn/(b+n); summary: means over runs, ..."

    [datasets.hmdb51_train1]
    manifest = "manifests/hmdb51_train1.parquet"

    [datasets.hmdb51_test1]
    manifest = "manifests/hmdb51_test1.parquet"

    [vocabularies]
    base = ["brush_hair", "cartwheel", ...]
    novel = ["catch", "chew", ...]

    [[runs]]
    name = "seed1"
    dataset = "hmdb51_train1"
    vocabulary = "base"
    seed = 1
    train_videos = ["brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0", ...]

    [[eval_sets]]
    name = "novel"
    dataset = "hmdb51_test1"
    vocabulary = "novel"
    group = "novel"
    run = "all"
    views = "test"
    disjoint = true

Builders: ``build_base2novel`` (base/novel from class files or derived by the paper's frequency rule; 16-shot training
subsets per seed or from lists) and ``build_cross_dataset`` (one run on the full source; targets with their splits;
new-class subsets from seeds or lists). Seeded choices rank items by ``sha256("{seed}:{item}")``, which does not
change with numpy versions, and the chosen ids are written into the file anyway.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import tomli_w

from froster import __version__
from froster.pipeline.classnames import normalize_name, read_class_names
from froster.pipeline.errors import ConfigError, FrosterError
from froster.pipeline.manifests import Manifest, parse_list_line, read_manifest, video_id_of
from froster.pipeline.video import STATUS_OK, STATUS_UNPROBED

PROTOCOL_FORMAT = 1
KINDS = ("base2novel", "cross-dataset")
CHECKPOINTS = ("last", "averaged")
VIEWS = ("test",)
METRICS = ("top1",)
ALL_RUNS = "all"
USABLE_STATUSES = (STATUS_OK, STATUS_UNPROBED)  # videos a training subset may draw from

BASE_NOVEL_RULE = (
    "classes sorted by their number of training videos in the training manifest (every row, whatever its status), "
    "most first, ties by class name (Unicode order); the first ceil(K/2) are base, the other floor(K/2) novel "
    "(FROSTER A.1); both vocabularies keep the manifest's label order"
)
SHOTS_RULE = (
    "for each base class, its usable training videos (status ok, or unprobed) ranked by sha256('{seed}:{video_id}') "
    "hex digest; the first {shots} are taken"
)
NOVEL_RULE = (
    "target classes whose normalize_name (case, punctuation and spaces removed) is not that of a source class; each "
    "subset ranks them by sha256('{seed}:{class}') hex digest and takes the first {size}, kept in label order"
)
BASE2NOVEL_AGGREGATION = (
    "per run: b = top-1 on group 'base' (base vocabulary), n = top-1 on group 'novel' (novel vocabulary), "
    "HM = 2bn/(b+n); summary: mean and std (ddof) over runs of b and n, HM of the two means (the paper's tables), "
    "and the mean of the per-run HMs"
)
CROSS_DATASET_AGGREGATION = (
    "per group: mean and std (ddof) over the group's eval sets of top-1 (official splits 1-3, new-class subsets); "
    "a group of one set (the full sets, e.g. UCF*, HMDB*) reports its value"
)


@dataclass(frozen=True)
class DatasetSpec:
    """A manifest a protocol uses, with a record of where it came from."""

    name: str  # key in [datasets]
    manifest: Path  # absolute path of the Parquet manifest
    video_root: str = ""  # the manifest's video root when the protocol was written (record; the manifest rules)
    source: str = ""  # annotation and class-name files the manifest was built from (record)
    split: str = ""  # split names of the manifest's rows, comma-separated (record)
    videos: int = -1  # rows of the manifest when written (record; -1 unknown)
    classes: int = -1  # classes of the manifest when written (record; -1 unknown)


@dataclass(frozen=True)
class RunSpec:
    """One training run: which videos, with which vocabulary."""

    name: str  # unique among runs; names the run directory's checkpoints in reports
    dataset: str  # key into Protocol.datasets: the training manifest
    manifest: Path  # absolute path of that manifest
    vocabulary: list[str]  # training classes (raw manifest names); label i = vocabulary[i]
    train_video_ids: list[str] | None = None  # the subset; None: every usable video whose class is in vocabulary
    seed: int | None = None  # seed the subset was drawn with (record)
    vocabulary_name: str = ""  # key in [vocabularies]; "" when written inline
    train_videos_file: Path | None = None  # where train_video_ids were read from, when from a file


@dataclass(frozen=True)
class EvalSet:
    """One evaluation: the manifest rows whose class is in ``vocabulary``, classified among ``vocabulary``."""

    name: str  # unique among eval sets, e.g. "novel", "ucf101/test1"
    dataset: str  # key into Protocol.datasets
    manifest: Path  # absolute path of that manifest
    vocabulary: list[str]  # raw manifest class names; label i = vocabulary[i]
    group: str  # aggregation group, e.g. "base", "novel", "ucf101", "ucf101-full", "k600"
    run: str = ALL_RUNS  # the run whose checkpoint is evaluated, or "all"
    disjoint: bool = False  # vocabulary must share no (normalised) class with the run's training vocabulary
    views: str = "test"  # which views (views.test_views)
    vocabulary_name: str = ""  # key in [vocabularies]; "" when written inline


@dataclass(frozen=True)
class Aggregation:
    """How eval-set results become the reported numbers."""

    kind: str  # "base2novel" | "cross-dataset" (the protocol's kind)
    groups: list[str]  # eval-set groups in report order
    metric: str = "top1"  # the accuracy aggregated
    ddof: int = 0  # delta degrees of freedom of every std (0: population std)
    rule: str = ""  # the rule in words (BASE2NOVEL_AGGREGATION / CROSS_DATASET_AGGREGATION)


@dataclass(frozen=True)
class Protocol:
    """A whole protocol file. Validated on construction (ConfigError naming the field), so built and loaded
    protocols obey the same rules, the disjointness of vocabularies included."""

    name: str  # e.g. "k400-base2novel"
    kind: str  # "base2novel" | "cross-dataset"
    checkpoint: str  # "last" (base2novel) | "averaged" (cross-dataset), the paper's A.1
    aggregation: Aggregation  # how results are combined
    datasets: dict[str, DatasetSpec]  # manifests by key
    runs: list[RunSpec]  # training runs
    eval_sets: list[EvalSet]  # evaluations
    vocabularies: dict[str, list[str]] = field(default_factory=dict)  # named vocabularies the specs refer to
    derivation: dict[str, Any] = field(default_factory=dict)  # how the file was made (record for people)
    path: Path | None = None  # the file it was loaded from or written to

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.checkpoint not in CHECKPOINTS:
            raise ConfigError(f"checkpoint: expected one of {', '.join(CHECKPOINTS)}, got {self.checkpoint!r}")
        agg = self.aggregation
        if agg.kind != self.kind:
            raise ConfigError(f"aggregation.kind: expected {self.kind!r} (the protocol's kind), got {agg.kind!r}")
        if agg.metric not in METRICS:
            raise ConfigError(f"aggregation.metric: expected one of {', '.join(METRICS)}, got {agg.metric!r}")
        if agg.ddof not in (0, 1):
            raise ConfigError(f"aggregation.ddof: expected 0 or 1, got {agg.ddof!r}")
        if not self.runs:
            raise ConfigError("runs: expected at least one run, found none")
        if not self.eval_sets:
            raise ConfigError("eval_sets: expected at least one eval set, found none")
        _unique([r.name for r in self.runs], "runs", "run name")
        _unique([e.name for e in self.eval_sets], "eval_sets", "eval-set name")
        run_names = {r.name for r in self.runs}
        if ALL_RUNS in run_names:
            raise ConfigError(f"runs: {ALL_RUNS!r} is reserved (eval sets use it for every run)")
        for r in self.runs:
            where = f"runs[{r.name}]"
            self._check_dataset(r.dataset, where)
            _check_vocabulary(r.vocabulary, where)
            if r.train_video_ids is not None:
                if not r.train_video_ids:
                    raise ConfigError(f"{where}.train_videos: expected at least one video id, found none")
                _unique(r.train_video_ids, f"{where}.train_videos", "video id")
        for e in self.eval_sets:
            where = f"eval_sets[{e.name}]"
            self._check_dataset(e.dataset, where)
            _check_vocabulary(e.vocabulary, where)
            if e.run != ALL_RUNS and e.run not in run_names:
                raise ConfigError(f"{where}.run: expected {ALL_RUNS!r} or a run name ({', '.join(sorted(run_names))}), "
                                  f"got {e.run!r}")
            if e.group not in agg.groups:
                raise ConfigError(f"{where}.group: expected one of aggregation.groups {agg.groups}, got {e.group!r}")
            if e.views not in VIEWS:
                raise ConfigError(f"{where}.views: expected one of {', '.join(VIEWS)}, got {e.views!r}")
            if e.disjoint:
                for r in self.runs_for(e):
                    overlap = overlapping_classes(r.vocabulary, e.vocabulary)
                    if overlap:
                        pairs = ", ".join(f"{a!r} ~ {b!r}" for a, b in overlap[:10])
                        more = f" and {len(overlap) - 10} more" if len(overlap) > 10 else ""
                        raise ConfigError(
                            f"{where}: disjoint = true, but its vocabulary shares {len(overlap)} classes with run "
                            f"{r.name!r}'s training vocabulary (after normalising case, punctuation and spaces): "
                            f"{pairs}{more}"
                        )
        if self.kind == "base2novel":
            for r in self.runs:
                for group in ("base", "novel"):
                    found = [e.name for e in self.eval_sets_for(r) if e.group == group]
                    if len(found) != 1:
                        raise ConfigError(f"eval_sets: base2novel needs exactly one {group!r} set per run; run "
                                          f"{r.name!r} has {len(found)} ({', '.join(found) or 'none'})")

    def _check_dataset(self, name: str, where: str) -> None:
        if name not in self.datasets:
            raise ConfigError(f"{where}.dataset: expected a key of [datasets] ({', '.join(sorted(self.datasets))}), "
                              f"got {name!r}")

    def runs_for(self, eval_set: EvalSet) -> list[RunSpec]:
        """The runs whose checkpoints ``eval_set`` is evaluated with."""
        return [r for r in self.runs if eval_set.run in (ALL_RUNS, r.name)]

    def eval_sets_for(self, run: RunSpec) -> list[EvalSet]:
        """The eval sets evaluated with ``run``'s checkpoint."""
        return [e for e in self.eval_sets if e.run in (ALL_RUNS, run.name)]


# ---- names ---------------------------------------------------------------------------------------------------------


def overlapping_classes(train_vocabulary: Sequence[str], eval_vocabulary: Sequence[str]) -> list[tuple[str, str]]:
    """(training class, eval class) pairs that are the same class after ``normalize_name``, in eval order."""
    train = {}
    for c in train_vocabulary:
        train.setdefault(normalize_name(c), c)
    return [(train[normalize_name(c)], c) for c in eval_vocabulary if normalize_name(c) in train]


def vocabulary_labels(classes: Sequence[str], vocabulary: Sequence[str], where: str = "vocabulary") -> list[int]:
    """The manifest label of each vocabulary entry (``classes`` = the manifest's class list); FrosterError naming
    ``where`` when an entry is not a class of the manifest."""
    label_of = {c: i for i, c in enumerate(classes)}
    missing = [c for c in vocabulary if c not in label_of]
    if missing:
        hints = [f"{m!r} (closest: {', '.join(map(repr, difflib.get_close_matches(m, classes, 2))) or 'none'})"
                 for m in missing[:5]]
        raise FrosterError(f"{where}: {len(missing)} classes are not in the manifest's class list: "
                           f"{'; '.join(hints)}{' ...' if len(missing) > 5 else ''}")
    return [label_of[c] for c in vocabulary]


def match_classes(names: Sequence[str], classes: Sequence[str], where: str) -> list[str]:
    """Map user-given class names onto the manifest's raw ``classes``: exact, else the one class with the same
    ``normalize_name`` (so "apply eye makeup" finds "ApplyEyeMakeup"). FrosterError naming ``where`` and the entry."""
    exact = set(classes)
    by_norm: dict[str, list[str]] = {}
    for c in classes:
        by_norm.setdefault(normalize_name(c), []).append(c)
    out = []
    for i, name in enumerate(names):
        if name in exact:
            out.append(name)
            continue
        candidates = by_norm.get(normalize_name(name), [])
        if len(candidates) != 1:
            close = difflib.get_close_matches(name, classes, 3)
            raise FrosterError(
                f"{where}: class #{i + 1} {name!r}: expected a class of the manifest, found "
                + (f"{len(candidates)} equal after normalising: {candidates}" if candidates
                   else f"none (closest: {', '.join(map(repr, close)) or 'none'})")
            )
        out.append(candidates[0])
    _unique(out, where, "class", error=FrosterError)
    return out


def read_video_list(path: str | os.PathLike, manifest: Manifest) -> list[str]:
    """The video ids listed in ``path``: one per line, as a video id, a relative path, or a list line
    ``path,label`` / ``path label`` (the label is ignored). FrosterError naming the line of an unknown video."""
    path = Path(path)
    if not path.is_file():
        raise FrosterError(f"{path}: video list not found")
    ids = set(manifest.column("video_id"))
    out, seen = [], {}
    for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        where = f"{path}:{i}"
        token = line if line in ids else parse_list_line(line, where)[0]
        vid = token if token in ids else video_id_of(token)
        if vid not in ids:
            raise FrosterError(f"{where}: expected a video of the manifest ({manifest.source}), found {token!r}")
        if vid in seen:
            raise FrosterError(f"{where}: duplicate video {vid!r} (first at line {seen[vid]})")
        seen[vid] = i
        out.append(vid)
    if not out:
        raise FrosterError(f"{path}: expected one video per line, found none")
    return out


# ---- derivations ---------------------------------------------------------------------------------------------------


def _rank(seed: int, item: str) -> str:
    return hashlib.sha256(f"{seed}:{item}".encode()).hexdigest()


def derive_base_novel(manifest: Manifest) -> tuple[list[str], list[str]]:
    """(base, novel) by BASE_NOVEL_RULE: the more frequent half of the classes (by training videos) is base."""
    counts = Counter(manifest.column("class_name"))
    order = sorted(manifest.classes, key=lambda c: (-counts.get(c, 0), c))
    base = set(order[: math.ceil(len(order) / 2)])
    return [c for c in manifest.classes if c in base], [c for c in manifest.classes if c not in base]


def sample_shots(manifest: Manifest, classes: Sequence[str], shots: int, seed: int) -> list[str]:
    """``shots`` usable training videos per class of ``classes`` by SHOTS_RULE; ids in class order, then sorted."""
    by_class: dict[str, list[str]] = {c: [] for c in classes}
    for vid, name, status in zip(manifest.column("video_id"), manifest.column("class_name"), manifest.column("status")):
        if name in by_class and status in USABLE_STATUSES:
            by_class[name].append(vid)
    out = []
    for c in classes:
        vids = by_class[c]
        if len(vids) < shots:
            raise FrosterError(f"--shots {shots}: class {c!r} has {len(vids)} usable training videos (status ok or "
                               f"unprobed) in {manifest.source}; expected at least {shots}")
        out.extend(sorted(sorted(vids, key=lambda v: _rank(seed, v))[:shots]))
    return out


def novel_class_subsets(
    classes: Sequence[str], exclude: Sequence[str], size: int, seeds: Sequence[int]
) -> tuple[list[str], list[list[str]]]:
    """(new classes, one subset per seed) by NOVEL_RULE: ``classes`` absent from ``exclude`` after normalising,
    then ``size`` of them per seed. Kept in the order of ``classes``."""
    excluded = {normalize_name(c) for c in exclude}
    new = [c for c in classes if normalize_name(c) not in excluded]
    if len(new) < size:
        raise FrosterError(f"--novel-size {size}: only {len(new)} target classes are absent from the source "
                           f"vocabulary; expected at least {size}")
    subsets = []
    for seed in seeds:
        chosen = set(sorted(new, key=lambda c: _rank(seed, c))[:size])
        subsets.append([c for c in new if c in chosen])
    return new, subsets


# ---- builders ------------------------------------------------------------------------------------------------------


def build_base2novel(
    train_manifest: str | os.PathLike,
    test_manifest: str | os.PathLike,
    *,
    base_file: str | os.PathLike | None = None,
    novel_file: str | os.PathLike | None = None,
    seeds: Sequence[int] = (1, 2, 3),
    shots: int = 16,
    train_lists: Sequence[str | os.PathLike] = (),
    name: str | None = None,
) -> Protocol:
    """A base-to-novel protocol on one dataset (paper A.1): base/novel from class-name files or derived, one run per
    seed (``shots`` videos per base class) or per given list, eval sets "base" and "novel" (disjoint) on the test
    manifest, the last checkpoint."""
    train_path, test_path = Path(train_manifest).resolve(), Path(test_manifest).resolve()
    train, test = read_manifest(train_path), read_manifest(test_path)
    if shots < 1:
        raise FrosterError(f"--shots: expected at least 1 video per class, got {shots}")
    if (base_file is None) != (novel_file is None):
        raise FrosterError("--base/--novel: expected both class files or neither (neither: derived by frequency)")
    derivation: dict[str, Any] = {}
    if base_file is not None:
        base = match_classes(read_class_names(base_file), train.classes, str(base_file))
        novel = match_classes(read_class_names(novel_file), train.classes, str(novel_file))
        overlap = overlapping_classes(base, novel)
        if overlap:
            raise FrosterError(f"{novel_file}: expected novel classes disjoint from {base_file}, found "
                               f"{len(overlap)} in both: {', '.join(repr(b) for _, b in overlap[:10])}")
        derivation["base_novel"] = "files"
        derivation["base_file"] = str(Path(base_file).resolve())
        derivation["novel_file"] = str(Path(novel_file).resolve())
    else:
        base, novel = derive_base_novel(train)
        derivation["base_novel"] = "derived"
        derivation["base_novel_rule"] = BASE_NOVEL_RULE
    vocabulary_labels(test.classes, base + novel, where=f"{test_path}: base and novel classes")

    keys: dict[str, str] = {}
    datasets = {}
    for path, m in ((train_path, train), (test_path, test)):
        key = _dataset_key(path.stem, keys)
        keys[key] = str(path)
        datasets[key] = _dataset_spec(key, path, m)
    train_key, test_key = list(datasets)

    runs = []
    if train_lists:
        derivation["train_lists"] = [str(Path(p).resolve()) for p in train_lists]
        base_set = set(base)
        for i, list_path in enumerate(train_lists, start=1):
            ids = read_video_list(list_path, train)
            classes_of = dict(zip(train.column("video_id"), train.column("class_name")))
            outside = [v for v in ids if classes_of[v] not in base_set]
            if outside:
                raise FrosterError(f"{list_path}: expected videos of base classes only, found {len(outside)} others, "
                                   f"e.g. {outside[0]!r} ({classes_of[outside[0]]!r})")
            runs.append(RunSpec(f"list{i}", train_key, train_path, base, ids, None, "base"))
    else:
        if not seeds:
            raise FrosterError("--seeds: expected at least one seed")
        _unique(list(seeds), "--seeds", "seed", error=FrosterError)
        derivation["shots"] = shots
        derivation["seeds"] = list(seeds)
        derivation["shots_rule"] = SHOTS_RULE.replace("{shots}", str(shots))
        for seed in seeds:
            runs.append(RunSpec(f"seed{seed}", train_key, train_path, base, sample_shots(train, base, shots, seed),
                                seed, "base"))
    eval_sets = [
        EvalSet("base", test_key, test_path, base, "base", ALL_RUNS, False, "test", "base"),
        EvalSet("novel", test_key, test_path, novel, "novel", ALL_RUNS, True, "test", "novel"),
    ]
    return _make(
        name=name or f"{train_path.stem}-base2novel",
        kind="base2novel",
        checkpoint="last",
        aggregation=Aggregation("base2novel", ["base", "novel"], "top1", 0, BASE2NOVEL_AGGREGATION),
        datasets=datasets,
        runs=runs,
        eval_sets=eval_sets,
        vocabularies={"base": base, "novel": novel},
        derivation=derivation,
    )


def build_cross_dataset(
    source_manifest: str | os.PathLike,
    targets: Sequence[tuple[str, Sequence[str | os.PathLike]]],
    novel_targets: Sequence[tuple[str, str | os.PathLike]] = (),
    *,
    novel_size: int = 160,
    novel_seeds: Sequence[int] = (1, 2, 3),
    novel_lists: Sequence[str | os.PathLike] = (),
    name: str | None = None,
) -> Protocol:
    """A cross-dataset protocol: one run on every video of the source, the averaged checkpoint (paper A.1).

    ``targets``: (group, manifests) pairs, e.g. ("ucf101", [test1, test2, test3]) and ("ucf101-full", [all]); each
    manifest is one eval set with the manifest's whole class list. ``novel_targets``: (group, manifest) pairs whose
    classes absent from the source become ``novel_size``-class subsets, one per seed of ``novel_seeds`` or one per
    class-name file of ``novel_lists`` (one novel target only); those sets are disjoint from the source vocabulary.
    """
    if not targets and not novel_targets:
        raise FrosterError("--target/--novel-target: expected at least one target dataset")
    if novel_lists and len(novel_targets) != 1:
        raise FrosterError(f"--novel-lists: expected exactly one --novel-target, found {len(novel_targets)}")
    source_path = Path(source_manifest).resolve()
    source = read_manifest(source_path)
    keys: dict[str, str] = {}
    datasets: dict[str, DatasetSpec] = {}

    def add(path: Path, m: Manifest, prefix: str = "") -> str:
        # "ucf101_test1" in group "ucf101" (or "ucf101-full") says its group already; "test1" gets the prefix
        named = path.stem.lower().startswith(re.split(r"[-_.]", prefix)[0].lower()) if prefix else True
        stem = path.stem if named else f"{prefix}{path.stem}"
        key = _dataset_key(stem, keys)
        keys[key] = str(path)
        datasets[key] = _dataset_spec(key, path, m)
        return key

    source_key = add(source_path, source)
    vocabularies: dict[str, list[str]] = {"source": list(source.classes)}
    runs = [RunSpec("full", source_key, source_path, list(source.classes), None, None, "source")]
    eval_sets: list[EvalSet] = []
    groups: list[str] = []
    derivation: dict[str, Any] = {"source": str(source_path)}
    for group, paths in list(targets) + [(g, [p]) for g, p in novel_targets]:
        if group in groups or group in vocabularies or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", group):
            raise FrosterError(f"--target {group!r}: expected a new group name of letters, digits, '_', '.', '-'")
        if not paths:
            raise FrosterError(f"--target {group}: expected at least one manifest")
        groups.append(group)
    for group, paths in targets:
        manifests = [(Path(p).resolve(), read_manifest(p)) for p in paths]
        first = manifests[0][1].classes
        for i, (path, m) in enumerate(manifests):
            key = add(path, m, f"{group}_")
            vocab_name = group if m.classes == first else f"{group}_{i + 1}"
            vocabularies.setdefault(vocab_name, list(m.classes))
            set_name = group if len(manifests) == 1 else f"{group}/{path.stem}"
            eval_sets.append(EvalSet(set_name, key, path, list(m.classes), group, ALL_RUNS, False, "test", vocab_name))
    for group, p in novel_targets:
        path = Path(p).resolve()
        m = read_manifest(path)
        key = add(path, m, f"{group}_")
        if novel_lists:
            subsets = [match_classes(read_class_names(f), m.classes, str(f)) for f in novel_lists]
            labels = [f"list{i}" for i in range(1, len(subsets) + 1)]
            derivation[f"{group}_lists"] = [str(Path(f).resolve()) for f in novel_lists]
        else:
            if not novel_seeds:
                raise FrosterError("--novel-seeds: expected at least one seed")
            _unique(list(novel_seeds), "--novel-seeds", "seed", error=FrosterError)
            new, subsets = novel_class_subsets(m.classes, source.classes, novel_size, novel_seeds)
            labels = [f"seed{s}" for s in novel_seeds]
            derivation[f"{group}_new_classes"] = len(new)
            derivation[f"{group}_seeds"] = list(novel_seeds)
            derivation[f"{group}_size"] = novel_size
            derivation[f"{group}_rule"] = NOVEL_RULE.replace("{size}", str(novel_size))
        for label, subset in zip(labels, subsets):
            vocab_name = f"{group}_{label}"
            vocabularies[vocab_name] = subset
            eval_sets.append(EvalSet(f"{group}/{label}", key, path, subset, group, ALL_RUNS, True, "test", vocab_name))
    return _make(
        name=name or f"{source_path.stem}-cross-dataset",
        kind="cross-dataset",
        checkpoint="averaged",
        aggregation=Aggregation("cross-dataset", groups, "top1", 0, CROSS_DATASET_AGGREGATION),
        datasets=datasets,
        runs=runs,
        eval_sets=eval_sets,
        vocabularies=vocabularies,
        derivation=derivation,
    )


def _make(**kwargs: Any) -> Protocol:
    """Construct a Protocol, turning a validation failure into a FrosterError (a user's input caused it)."""
    try:
        return Protocol(**kwargs)
    except ConfigError as e:
        raise FrosterError(f"protocol {kwargs.get('name')!r}: {e}") from e


def _dataset_key(stem: str, taken: dict[str, str]) -> str:
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "dataset"
    base, i = key, 2
    while key in taken:
        key, i = f"{base}_{i}", i + 1
    return key


def _dataset_spec(key: str, path: Path, m: Manifest) -> DatasetSpec:
    splits = ",".join(sorted(set(m.column("split"))))
    return DatasetSpec(key, path, str(m.video_root), m.source, splits, len(m), len(m.classes))


# ---- writing -------------------------------------------------------------------------------------------------------


def write_protocol(protocol: Protocol, path: str | os.PathLike) -> Path:
    """Write ``protocol`` as TOML to ``path`` (atomically), manifest and list paths relative to its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent.resolve()

    def rel(p: Path) -> str:
        return Path(os.path.relpath(Path(p).resolve(), folder)).as_posix()

    def vocab(name: str, values: list[str]) -> Any:
        return name if name and protocol.vocabularies.get(name) == values else list(values)

    agg = protocol.aggregation
    checkpoint_why = {"last": "the last epoch (base-to-novel, paper A.1)",
                      "averaged": "the running weight average (cross-dataset, paper A.1)"}[protocol.checkpoint]
    parts = [
        f"# froster protocol file (format {PROTOCOL_FORMAT}): {protocol.name}\n"
        "# Read by `froster train` and `froster evaluate`; the format is documented in froster/pipeline/protocols.py\n"
        "# and docs/protocols.md. Paths are relative to this file's folder.\n",
        _dumps({"protocol": {"format": PROTOCOL_FORMAT, "name": protocol.name, "kind": protocol.kind,
                                    "checkpoint": protocol.checkpoint, "froster_version": __version__}}),
        f"# checkpoint: {checkpoint_why}\n",
        _dumps({"aggregation": {"kind": agg.kind, "metric": agg.metric, "groups": list(agg.groups),
                                       "ddof": agg.ddof, "rule": agg.rule}}),
    ]
    if protocol.derivation:
        parts.append(_dumps({"derivation": dict(protocol.derivation)}))
    datasets = {}
    for key, d in protocol.datasets.items():
        datasets[key] = {"manifest": rel(d.manifest), "video_root": d.video_root, "source": d.source,
                         "split": d.split, "videos": d.videos, "classes": d.classes}
    parts.append(_dumps({"datasets": datasets}))
    if protocol.vocabularies:
        parts.append(_dumps({"vocabularies": {k: list(v) for k, v in protocol.vocabularies.items()}}))
    for r in protocol.runs:
        table: dict[str, Any] = {"name": r.name, "dataset": r.dataset, "vocabulary": vocab(r.vocabulary_name,
                                                                                          r.vocabulary)}
        if r.seed is not None:
            table["seed"] = r.seed
        if r.train_videos_file is not None:
            table["train_videos_file"] = rel(r.train_videos_file)
        elif r.train_video_ids is not None:
            table["train_videos"] = list(r.train_video_ids)
        parts.append("[[runs]]\n" + _dumps(table))
    for e in protocol.eval_sets:
        table = {"name": e.name, "dataset": e.dataset, "vocabulary": vocab(e.vocabulary_name, e.vocabulary),
                 "group": e.group, "run": e.run, "views": e.views, "disjoint": e.disjoint}
        parts.append("[[eval_sets]]\n" + _dumps(table))
    text = "\n".join(p if p.endswith("\n") else p + "\n" for p in parts)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _dumps(doc: dict) -> str:
    return tomli_w.dumps(doc, indent=2)


# ---- loading -------------------------------------------------------------------------------------------------------

_MISSING = object()


def load_protocol(path: str | os.PathLike, check_manifests: bool = True) -> Protocol:
    """Read and validate the protocol file ``path``. With ``check_manifests``, also open every manifest and check
    that each vocabulary entry is one of its classes and each listed training video one of its videos.

    Raises FrosterError naming the file and the key (and line, for TOML syntax errors)."""
    path = Path(path)
    if not path.is_file():
        raise FrosterError(f"{path}: protocol file not found (write one with `froster protocol ...`)")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise FrosterError(f"{path}: not valid TOML ({e})") from e
    folder = path.parent.resolve()

    def resolve(text: str) -> Path:
        return (folder / text).resolve()

    _keys(doc, path, "the file", required={"protocol", "aggregation", "datasets", "runs", "eval_sets"},
          optional={"derivation", "vocabularies"})
    head = _table(doc, "protocol", path, "the file")
    _keys(head, path, "[protocol]", required={"format", "name", "kind", "checkpoint"}, optional={"froster_version"})
    fmt = _get(head, "format", int, path, "[protocol]", "an integer")
    if fmt != PROTOCOL_FORMAT:
        raise FrosterError(f"{path}: [protocol] format: expected {PROTOCOL_FORMAT}, found {fmt} (written by another "
                           "froster version?)")
    agg_doc = _table(doc, "aggregation", path, "the file")
    _keys(agg_doc, path, "[aggregation]", required={"kind", "groups"}, optional={"metric", "ddof", "rule"})
    aggregation = Aggregation(
        kind=_get(agg_doc, "kind", str, path, "[aggregation]", "a string"),
        groups=_strings(agg_doc, "groups", path, "[aggregation]"),
        metric=_get(agg_doc, "metric", str, path, "[aggregation]", "a string", "top1"),
        ddof=_get(agg_doc, "ddof", int, path, "[aggregation]", "an integer", 0),
        rule=_get(agg_doc, "rule", str, path, "[aggregation]", "a string", ""),
    )
    vocabularies = {}
    vocab_doc = doc.get("vocabularies", {})
    if not isinstance(vocab_doc, dict):
        raise FrosterError(f"{path}: [vocabularies]: expected a table of name = [classes], found {vocab_doc!r:.60}")
    for k in vocab_doc:
        vocabularies[k] = _strings(vocab_doc, k, path, "[vocabularies]")

    def vocabulary(table: dict, where: str) -> tuple[list[str], str]:
        value = table.get("vocabulary", _MISSING)
        if isinstance(value, str):
            if value not in vocabularies:
                raise FrosterError(f"{path}: {where} vocabulary: expected a name in [vocabularies] "
                                   f"({', '.join(vocabularies) or 'none defined'}), found {value!r}")
            return vocabularies[value], value
        return _strings(table, "vocabulary", path, where), ""

    datasets = {}
    ds_doc = _table(doc, "datasets", path, "the file")
    for key, d in ds_doc.items():
        where = f"[datasets.{key}]"
        if not isinstance(d, dict):
            raise FrosterError(f"{path}: {where}: expected a table, found {d!r:.60}")
        _keys(d, path, where, required={"manifest"}, optional={"video_root", "source", "split", "videos", "classes"})
        datasets[key] = DatasetSpec(
            name=key,
            manifest=resolve(_get(d, "manifest", str, path, where, "a path")),
            video_root=_get(d, "video_root", str, path, where, "a string", ""),
            source=_get(d, "source", str, path, where, "a string", ""),
            split=_get(d, "split", str, path, where, "a string", ""),
            videos=_get(d, "videos", int, path, where, "an integer", -1),
            classes=_get(d, "classes", int, path, where, "an integer", -1),
        )
    runs = []
    for i, r in enumerate(_array(doc, "runs", path), start=1):
        where = f"[[runs]] #{i}"
        _keys(r, path, where, required={"name", "dataset", "vocabulary"},
              optional={"seed", "train_videos", "train_videos_file"})
        name = _get(r, "name", str, path, where, "a string")
        where = f"[[runs]] #{i} ({name})"
        dataset = _get(r, "dataset", str, path, where, "a key of [datasets]")
        vocab, vocab_name = vocabulary(r, where)
        if "train_videos" in r and "train_videos_file" in r:
            raise FrosterError(f"{path}: {where}: expected train_videos or train_videos_file, found both")
        ids, ids_file = None, None
        if "train_videos" in r:
            ids = _strings(r, "train_videos", path, where)
        elif "train_videos_file" in r:
            ids_file = resolve(_get(r, "train_videos_file", str, path, where, "a path"))
            if not ids_file.is_file():
                raise FrosterError(f"{path}: {where} train_videos_file: no file at {ids_file}")
            ids = [ln.strip() for ln in ids_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        manifest = datasets[dataset].manifest if dataset in datasets else resolve(dataset)
        runs.append(RunSpec(name, dataset, manifest, vocab, ids, _get(r, "seed", int, path, where, "an integer", None),
                            vocab_name, ids_file))
    eval_sets = []
    for i, e in enumerate(_array(doc, "eval_sets", path), start=1):
        where = f"[[eval_sets]] #{i}"
        _keys(e, path, where, required={"name", "dataset", "vocabulary", "group"},
              optional={"run", "views", "disjoint"})
        name = _get(e, "name", str, path, where, "a string")
        where = f"[[eval_sets]] #{i} ({name})"
        dataset = _get(e, "dataset", str, path, where, "a key of [datasets]")
        vocab, vocab_name = vocabulary(e, where)
        manifest = datasets[dataset].manifest if dataset in datasets else resolve(dataset)
        eval_sets.append(EvalSet(
            name, dataset, manifest, vocab,
            group=_get(e, "group", str, path, where, "a string"),
            run=_get(e, "run", str, path, where, "a run name or 'all'", ALL_RUNS),
            disjoint=_get(e, "disjoint", bool, path, where, "true or false", False),
            views=_get(e, "views", str, path, where, "a string", "test"),
            vocabulary_name=vocab_name,
        ))
    try:
        protocol = Protocol(
            name=_get(head, "name", str, path, "[protocol]", "a string"),
            kind=_get(head, "kind", str, path, "[protocol]", "a string"),
            checkpoint=_get(head, "checkpoint", str, path, "[protocol]", "a string"),
            aggregation=aggregation,
            datasets=datasets,
            runs=runs,
            eval_sets=eval_sets,
            vocabularies=vocabularies,
            derivation=dict(doc.get("derivation", {})),
            path=path.resolve(),
        )
    except ConfigError as e:
        raise FrosterError(f"{path}: {e}") from e
    if check_manifests:
        _check_manifests(protocol, path)
    return protocol


def _check_manifests(protocol: Protocol, path: Path) -> None:
    manifests: dict[str, Manifest] = {}
    for key, d in protocol.datasets.items():
        if not d.manifest.is_file():
            raise FrosterError(f"{path}: [datasets.{key}] manifest: no file at {d.manifest}")
    for kind, spec in [("[[runs]]", r) for r in protocol.runs] + [("[[eval_sets]]", e) for e in protocol.eval_sets]:
        m = manifests.get(spec.dataset) or manifests.setdefault(spec.dataset, read_manifest(spec.manifest))
        vocabulary_labels(m.classes, spec.vocabulary, where=f"{path}: {kind} {spec.name} vocabulary (manifest "
                                                            f"{spec.manifest})")
        if isinstance(spec, RunSpec) and spec.train_video_ids is not None:
            classes_of = dict(zip(m.column("video_id"), m.column("class_name")))
            unknown = [v for v in spec.train_video_ids if v not in classes_of]
            if unknown:
                raise FrosterError(f"{path}: [[runs]] {spec.name} train_videos: {len(unknown)} are not videos of "
                                   f"{spec.manifest}, e.g. {unknown[0]!r}")
            vocab = set(spec.vocabulary)
            outside = [v for v in spec.train_video_ids if classes_of[v] not in vocab]
            if outside:
                raise FrosterError(f"{path}: [[runs]] {spec.name} train_videos: {len(outside)} videos are of classes "
                                   f"outside the run's vocabulary, e.g. {outside[0]!r} ({classes_of[outside[0]]!r})")


def _keys(table: dict, path: Path, where: str, required: set[str], optional: set[str]) -> None:
    missing = sorted(required - set(table))
    if missing:
        raise FrosterError(f"{path}: {where}: missing key {missing[0]!r} (required: {', '.join(sorted(required))})")
    unknown = sorted(set(table) - required - optional)
    if unknown:
        raise FrosterError(f"{path}: {where}: unknown key {unknown[0]!r} (expected: "
                           f"{', '.join(sorted(required | optional))})")


def _table(doc: dict, key: str, path: Path, where: str) -> dict:
    value = doc[key]
    if not isinstance(value, dict):
        raise FrosterError(f"{path}: {where}: [{key}] must be a table, found {type(value).__name__}")
    return value


def _array(doc: dict, key: str, path: Path) -> list[dict]:
    value = doc[key]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise FrosterError(f"{path}: [[{key}]] must be an array of tables, found {type(value).__name__}")
    return value


def _get(table: dict, key: str, types: type, path: Path, where: str, what: str, default: Any = _MISSING) -> Any:
    if key not in table:
        if default is _MISSING:
            raise FrosterError(f"{path}: {where}: missing key {key!r} (expected {what})")
        return default
    value = table[key]
    if not isinstance(value, types) or (types is int and isinstance(value, bool)):
        raise FrosterError(f"{path}: {where} {key}: expected {what}, found {value!r:.60}")
    return value


def _strings(table: dict, key: str, path: Path, where: str) -> list[str]:
    value = table.get(key, _MISSING)
    if value is _MISSING:
        raise FrosterError(f"{path}: {where}: missing key {key!r} (expected a list of strings)")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FrosterError(f"{path}: {where} {key}: expected a list of strings, found {value!r:.60}")
    return list(value)


def _unique(values: Sequence, where: str, what: str, error: type[Exception] = ConfigError) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise error(f"{where}: duplicate {what} {v!r}")
        seen.add(v)


def _check_vocabulary(vocabulary: Sequence[str], where: str) -> None:
    if not vocabulary:
        raise ConfigError(f"{where}.vocabulary: expected at least one class, found none")
    _unique(list(vocabulary), f"{where}.vocabulary", "class")
