"""Stage two: train the student with residual feature distillation from the teacher targets stored by stage one.

Reads a complete feature store (``--cache``: the stored views, the teacher's per-frame features of every view, the
teacher's text features of every prompt and the prompt strings), the videos it was made from (checked by size and
mtime), optionally a protocol file (``--protocol FILE --run NAME|all``: the run's vocabulary and training subset).
Writes a run directory::

    config.json            the fully resolved config (a run can be repeated from it) and derived values
    metrics.jsonl          one JSON line per optimizer step (ce, fd_vision, fd_text, total, lr) and one per epoch
    checkpoints/epoch_XXXX.pt, checkpoints/last.pt   training state, atomically, each epoch and every --save-every
    final.pt               the last epoch's weights (weights only; a protocol's checkpoint = "last")
    averaged.pt            uniform mean of the end-of-epoch weights from --average-from to the last ("averaged")

    froster train --cache cache/k400.zarr --epochs 22 --batch-size 8 --grad-accum 8
    froster train --cache cache/hmdb51.zarr --protocol protocols/hmdb51-b2n.toml --run all
    froster train --cache cache/k400.zarr --batch-size 8 --device cuda --dry-run   # one step's peak memory

``--dry-run`` validates everything, builds the student, heads and optimizer, runs exactly one full optimizer step on
the first batch and reports that step's peak memory (CUDA: the device's peak allocated memory; CPU: the process's peak
RSS), writing nothing.

The loss (paper Eq. 7, 8; release ``train_net.py``), per optimizer step, with one template index t drawn for all
classes (seeded by (seed, step)):

    class embedding   c_k = n(n(E(templated_t(k))) + n(E(bare(k))))          n = L2 normalisation, E = text tower
    teacher target    c'_k = the same from the stored teacher text features of the same two prompts
    L = CE(exp(s) * mean_t n(f_bt) . c_k, y) + beta * (mean_{b,t} d(h_v(n(f_bt)), g_bt) + mean_k d(h_t(c_k), c'_k))

f_bt the student's frame embeddings of the rebuilt pixels of one stored view, g_bt the stored teacher features of
that view, h_v / h_t the residual heads, d = 1 - cos (or ||.||_2 with --distance l2).

A run killed at any point continues with ``--resume RUN_DIR`` (or by rerunning the same command): from the last
checkpoint, with the same data order, views and templates (all pure functions of (seed, epoch, step)), so on CPU the
final weights equal an uninterrupted run's; metrics lines after the checkpoint are dropped first.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from froster.pipeline.errors import ConfigError, FrosterError
from froster.pipeline.precision import DEVICES, PRECISIONS, check_device_precision, resolve_precision
from froster.pipeline.precision import autocast as _autocast

log = logging.getLogger(__name__)

STUDENTS = ("clip", "vclip")
VCLIP_EDGES = ("zero", "mask")
TEACHER_MODES = ("cached", "online")
DISTANCES = ("cosine", "l2")
DISTILL_KINDS = ("none", "fd", "fd-mlp", "rfd")
DISTILL_ON = ("vision", "text", "both")
ALL_RUNS = "all"
NUM_TEMPLATES = 28  # the release draws index = random.randint(0, 27) per step (release notes section 4)
ADAM_BETAS = (0.9, 0.999)  # release SOLVER (AdamW), issue 4
ADAM_EPS = 1e-8  # release SOLVER, issue 4
# Fields that do not change what a run computes: they may differ when a run is resumed.
RUNTIME_FIELDS = frozenset({"out", "resume", "num_workers", "progress", "video_root", "val_cache",
                            "grad_checkpointing", "dry_run"})


@dataclass(frozen=True)
class TrainConfig:
    """Everything stage two depends on (``froster train``). Paths are resolved to absolute ones by ``run``."""

    cache: Optional[Path] = None  # the feature store of stage one (--cache); required unless --resume
    out: Optional[Path] = None  # run directory; default runs/<store name>/, or runs/<protocol stem>/<run>/
    protocol: Optional[Path] = None  # protocol TOML (froster protocol): vocabulary and training subset of a run
    run: Optional[str] = None  # the protocol's run name, or "all" (every run in turn); needs --protocol
    student: str = "vclip"  # clip | vclip; the paper's default student is VCLIP (section 4)
    vclip_edge: str = "zero"  # zero | mask; the release zero-fills the missing neighbour (release notes section 3)
    model: Optional[str] = None  # if given, must equal the store's teacher model (the student starts from it)
    pretrained: Optional[str] = None  # if given, must equal the store's teacher pretrained tag
    checkpoint: Optional[Path] = None  # if given, must be the store's teacher weights file (compared by SHA-256)
    teacher: str = "cached"  # cached: stored targets | online: recomputed live with the teacher (for comparison)
    video_root: Optional[Path] = None  # where the store's videos are now (moved since extraction); None = as stored
    distance: str = "cosine"  # cosine (1 - cos, the release's code) | l2 (the paper's Eq. 7, Euclidean norm)
    distill: str = "rfd"  # none | fd | fd-mlp | rfd: Table 4's variants; rfd is FROSTER's residual head
    distill_on: str = "both"  # vision | text | both: Table 4; the release distils both
    alpha: float = 0.1  # residual head's alpha: paper A.1, the release's literal 0.1
    beta: float = 2.0  # distillation weight: paper A.1, release scripts' DISTILLATION_RATIO 2.0
    zero_init: bool = True  # W2 of the residual heads starts at zero (release; False = paper Table 5's ablation)
    epochs: int = 12  # paper A.1: 12 for base-to-novel (22 for cross-dataset)
    warmup_epochs: float = 2.0  # paper A.1 and release: 2 linear warmup epochs
    batch_size: int = 8  # clips per micro-batch; release: 64 global over 8 GPUs = 8 per GPU
    grad_accum: int = 1  # micro-batches per optimizer step (global batch = batch_size x grad_accum x devices)
    lr: float = 3.33e-6  # base learning rate: paper A.1, release BASE_LR
    lr_factor: float = 0.01  # warmup start and cosine end = lr x this: release WARMUP_START_LR = COSINE_END_LR 3.33e-8
    weight_decay: float = 0.01  # AdamW weight decay (none for biases, 1-D params, logit_scale): release
    grad_clip: float = 1.0  # max L2 norm of all gradients: release CLIP_GRAD_L2NORM 1.0
    seed: int = 0  # data order, view and template choice, heads' init (froster's; the release was unseeded)
    save_every: int = 0  # also write checkpoints/last.pt every this many steps (0: at the end of each epoch only)
    average_from: int = 2  # weight average over end-of-epoch weights of epochs >= this: release weight_average_tool
    resume: Optional[Path] = None  # continue the run in this directory from its checkpoints/last.pt
    init_from: Optional[Path] = None  # start from this checkpoint's weights (model and heads), not its state
    val_cache: Optional[Path] = None  # a store to evaluate top-1 on at the end of each epoch (its own vocabulary)
    num_workers: int = 0  # DataLoader processes decoding videos; 0 = in the training process (deterministic on CPU)
    device: str = "cpu"  # cpu | cuda
    precision: str = "auto"  # auto (fp32 on cpu, bf16 autocast on cuda) | fp32 | bf16 | fp16 (with a GradScaler)
    progress: bool = True  # progress bar on stderr
    grad_checkpointing: bool = False  # recompute each block's activations in backward: trades compute for activation
    #                                   memory, same results (issue 5)
    dry_run: bool = False  # one optimizer step on the first batch, report its peak memory, write nothing (issue 5)

    def __post_init__(self):
        def choice(name: str, allowed: Sequence[str]):
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"--{_opt(name)}: expected one of {', '.join(allowed)}, found {value!r}")

        def integer(name: str, minimum: int):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"--{_opt(name)}: expected an integer >= {minimum}, found {value!r}")

        def number(name: str, minimum: float, strict: bool):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < minimum or (strict and value == minimum):
                raise ConfigError(f"--{_opt(name)}: expected a number {'>' if strict else '>='} {minimum}, "
                                  f"found {value!r}")

        choice("student", STUDENTS)
        choice("vclip_edge", VCLIP_EDGES)
        choice("teacher", TEACHER_MODES)
        choice("distance", DISTANCES)
        choice("distill", DISTILL_KINDS)
        choice("distill_on", DISTILL_ON)
        choice("device", DEVICES)
        choice("precision", PRECISIONS)
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("grad_accum", 1), ("save_every", 0),
                              ("average_from", 1), ("num_workers", 0)):
            integer(name, minimum)
        integer("seed", -(2**63))
        for name, minimum, strict in (("alpha", 0.0, False), ("beta", 0.0, False), ("warmup_epochs", 0.0, False),
                                      ("lr", 0.0, True), ("lr_factor", 0.0, False), ("weight_decay", 0.0, False),
                                      ("grad_clip", 0.0, True)):
            number(name, minimum, strict)
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(f"--warmup-epochs {self.warmup_epochs} must be below --epochs {self.epochs}")
        if self.cache is None and self.resume is None:
            raise ConfigError("--cache: give the feature store to train from (or --resume RUN_DIR)")
        if self.run is not None and self.protocol is None:
            raise ConfigError(f"--run {self.run}: needs --protocol FILE")
        if self.protocol is not None and not self.run:
            raise ConfigError(f"--protocol {self.protocol}: give --run NAME (one of its runs) or --run all")
        if self.resume is not None and self.init_from is not None:
            raise ConfigError("--resume continues a run with its own weights; --init-from starts a new one: not both")
        check_device_precision(self.device, self.precision)

    @property
    def resolved_precision(self) -> str:
        return resolve_precision(self.device, self.precision)

    def to_json(self) -> dict:
        return {f.name: (str(v) if isinstance(v, Path) else v) for f in fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise FrosterError(f"config.json: unknown field(s) {unknown} (written by another froster version?)")
        values = {}
        for name, value in d.items():
            is_path = "Path" in str(known[name].type)
            values[name] = Path(value) if is_path and value is not None else value
        return cls(**values)


def _opt(name: str) -> str:
    return name.replace("_", "-")


def _abs(p: Optional[Path]) -> Optional[Path]:
    return None if p is None else Path(p).expanduser().resolve()


def _resolved_paths(config: TrainConfig) -> TrainConfig:
    names = [f.name for f in fields(config) if "Path" in str(f.type)]
    return replace(config, **{n: _abs(getattr(config, n)) for n in names})


def _differences(saved: TrainConfig, new: TrainConfig, explicit_only: bool) -> list[str]:
    """Options of ``new`` that differ from the run's ``saved`` config (runtime fields aside). With ``explicit_only``,
    a value equal to the field's default counts as not given (``--resume RUN_DIR`` alone keeps the run's config)."""
    out = []
    for f in fields(TrainConfig):
        if f.name in RUNTIME_FIELDS:
            continue
        old, value = getattr(saved, f.name), getattr(new, f.name)
        if old != value and not (explicit_only and value == f.default):
            out.append(f"--{_opt(f.name)} {value} (the run has {old})")
    return out


# ---- run directories ----------------------------------------------------------------------------------------------

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
LAST_FILE = "last.pt"
FINAL_FILE = "final.pt"
AVERAGED_FILE = "averaged.pt"


def _epoch_file(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


def _default_out(config: TrainConfig) -> Path:
    if config.protocol is not None:
        parent = Path("runs") / Path(config.protocol).stem
        return parent if config.run == ALL_RUNS else parent / str(config.run)
    name = Path(config.cache).name
    return Path("runs") / (name[: -len(".zarr")] if name.endswith(".zarr") else Path(name).stem)


def _append_metrics(path: Path, record: dict) -> None:
    """One JSON line, flushed and fsynced: a killed run loses at most the line being written."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _truncate_metrics(path: Path, step: int, epoch: int) -> int:
    """Keep the step lines up to ``step`` and the epoch lines up to ``epoch`` (what the checkpoint includes); drop the
    rest and any torn last line. Rewrites the file atomically; returns the number of lines dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        keep = rec.get("step", 0) <= step if rec.get("type") == "step" else rec.get("epoch", 0) <= epoch
        if keep:
            kept.append(line)
        else:
            dropped += 1
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
    os.replace(tmp, path)
    return dropped


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---- inputs: store, teacher, vocabulary, training items -------------------------------------------------------------


def _open_store(path: Path, option: str):
    from froster.pipeline.store import FeatureStore

    store = FeatureStore.open(path)
    if not store.complete:
        done = int(np.count_nonzero(np.asarray(store.done[:])))
        raise FrosterError(
            f"{option} {path}: the store is incomplete ({done} of {store.num_videos} videos done; extract-teacher "
            "did not finish): rerun the same extract-teacher command to complete it"
        )
    classes = store.manifest.classes
    if store.text_features.shape[1] != len(classes) or store.prompts.num_classes != len(classes):
        raise FrosterError(
            f"{option} {path}: text features cover {store.text_features.shape[1]} classes and the prompts "
            f"{store.prompts.num_classes}, but the store's manifest has {len(classes)} classes"
        )
    return store


def _check_teacher_options(config: TrainConfig, provenance: dict, store_path: Path) -> None:
    """--model/--pretrained/--checkpoint, when given, must name the store's teacher (the student starts from it)."""
    from froster.pipeline.teacher import LOCAL_DIR_PREFIX, sha256_file

    diffs = []
    if config.model is not None:
        stored = str(provenance.get("model"))
        given = config.model.replace("/", "-")
        if given.startswith(LOCAL_DIR_PREFIX):
            given = LOCAL_DIR_PREFIX + str(Path(given[len(LOCAL_DIR_PREFIX):]).expanduser().resolve())
        if given != stored:
            diffs.append(f"--model {config.model} (the store's teacher is {stored})")
    if config.pretrained is not None and config.pretrained != provenance.get("pretrained"):
        diffs.append(f"--pretrained {config.pretrained} (the store's teacher has {provenance.get('pretrained')})")
    if config.checkpoint is not None:
        if not Path(config.checkpoint).is_file():
            raise FrosterError(f"--checkpoint {config.checkpoint}: no such file")
        sha = sha256_file(config.checkpoint)
        if sha != provenance.get("checkpoint_sha256"):
            diffs.append(f"--checkpoint {config.checkpoint} (SHA-256 {sha[:12]}..., the store's teacher weights "
                         f"{provenance.get('checkpoint') or provenance.get('weights_file')} have "
                         f"{str(provenance.get('checkpoint_sha256'))[:12]}...)")
    if diffs:
        raise FrosterError(
            f"teacher/student mismatch: the student starts from the teacher of {store_path}, but "
            + "; ".join(diffs) + ". Leave these options out, or extract a store with that teacher"
        )


def _load_store_teacher(store, store_path: Path, device: str):
    """The store's teacher rebuilt from its provenance, checked against the stored text features.

    A teacher extracted with random weights (tests) is rebuilt with the same seed as stage one's. The check encodes a
    few stored prompts and compares them with the stored features (fp16 storage error only): a different network,
    activation (QuickGELU) or weights file is refused before any step.
    """
    from froster.pipeline.teacher import TeacherSpec, freeze, load_clip
    from froster.pipeline.text import encode_text_trimmed, tokenize

    provenance = store.attrs.get("teacher")
    if not isinstance(provenance, dict):
        raise FrosterError(f"--cache {store_path}: the store records no teacher provenance (attrs['teacher'])")
    spec = TeacherSpec.from_provenance(provenance)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(store.attrs.get("seed", 0)))  # stage one seeds a random teacher with its --seed
        loaded = load_clip(spec, device="cpu")
    freeze(loaded.model)
    prompts = store.prompts
    rows = sorted({0, prompts.num_prompts - 1})
    classes = list(range(min(4, prompts.num_classes)))
    texts = [prompts.texts[p][c] for p in rows for c in classes]
    with torch.no_grad():
        got = F.normalize(encode_text_trimmed(loaded.model, tokenize(loaded.tokenizer, texts)).float(), dim=-1)
    stored = torch.from_numpy(np.asarray(store.text_features[:], dtype=np.float32)[rows][:, classes])  # [2, c, D]
    err = float((got - stored.reshape(got.shape)).abs().max())
    if err > 1e-2:
        raise FrosterError(
            f"teacher/student mismatch: the teacher rebuilt from {store_path}'s provenance ({provenance.get('model')}, "
            f"QuickGELU {provenance.get('quick_gelu')}) gives text features that differ from the stored ones by "
            f"{err:.3g} (expected < 1e-2, fp16 storage): its weights or settings have changed since extraction"
        )
    if loaded.image_size != int(store.attrs.get("image_size", loaded.image_size)):
        raise FrosterError(f"teacher/student mismatch: the rebuilt teacher takes {loaded.image_size} px inputs, the "
                           f"store's views were rendered at {store.attrs.get('image_size')}")
    return loaded


@dataclass(frozen=True)
class _Selection:
    """What one run trains on: its vocabulary (raw names, label order), their store class indices, the items."""

    vocabulary: list[str]
    class_index: list[int]  # [K] store class of vocabulary entry k
    prompt_names: list[str]  # [K]
    items: list  # trainer_data.TrainItem
    source: str  # for messages: "protocol FILE run NAME" or "store PATH"


def _select(config: TrainConfig, store, store_path: Path) -> _Selection:
    """The run's vocabulary and training items (store rows with labels in the vocabulary's order).

    Refuses a vocabulary entry that is not a class of the store, a listed video that is not in the store, a video of
    a class outside the vocabulary, and an empty subset. Listed videos whose extraction failed are skipped (logged).
    """
    from froster.pipeline.trainer_data import TrainItem, video_paths

    m = store.manifest
    classes = list(m.classes)
    ids = m.column("video_id")
    labels = m.column("label")
    done = np.asarray(store.done[:])  # [N]
    root = config.video_root or m.video_root
    paths = video_paths(m.column("path"), root)
    if config.protocol is None:
        vocabulary = classes
        rows = list(range(len(ids)))
        source = f"store {store_path}"
    else:
        from froster.pipeline.protocols import load_protocol

        protocol = load_protocol(config.protocol, check_manifests=False)
        runs = {r.name: r for r in protocol.runs}
        if config.run not in runs:
            raise FrosterError(f"--run {config.run}: not a run of {config.protocol}; its runs are "
                               f"{', '.join(runs)} (or 'all')")
        spec = runs[config.run]
        source = f"protocol {config.protocol} run {spec.name!r}"
        vocabulary = list(spec.vocabulary)
        missing = [c for c in vocabulary if c not in set(classes)]
        if missing:
            raise FrosterError(
                f"{source}: vocabulary does not match the classes of the store {store_path}: {len(missing)} of its "
                f"{len(vocabulary)} classes are not store classes, e.g. {missing[:3]} (the store has "
                f"{len(classes)} classes, e.g. {classes[:3]}); extract a store from the run's manifest {spec.manifest}"
            )
        in_vocab = set(vocabulary)
        if spec.train_video_ids is None:
            rows = [i for i, lab in enumerate(labels) if classes[lab] in in_vocab]
        else:
            row_of = {v: i for i, v in enumerate(ids)}
            unknown = [v for v in spec.train_video_ids if v not in row_of]
            if unknown:
                raise FrosterError(f"{source}: {len(unknown)} training videos are not in the store {store_path}, "
                                   f"e.g. {unknown[0]!r}; extract a store from the run's manifest {spec.manifest}")
            rows = [row_of[v] for v in spec.train_video_ids]
            outside = [ids[r] for r in rows if classes[labels[r]] not in in_vocab]
            if outside:
                raise FrosterError(f"{source}: {len(outside)} training videos have classes outside the run's "
                                   f"vocabulary, e.g. {outside[0]!r} ({classes[labels[row_of[outside[0]]]]!r})")
    failed = [r for r in rows if not done[r]]
    if failed:
        log.warning("%s: %d of %d training videos have no stored features (extraction failed; see froster info %s) "
                    "and are skipped, e.g. %s", source, len(failed), len(rows), store_path, ids[failed[0]])
    rows = [r for r in rows if done[r]]
    if not rows:
        raise FrosterError(f"{source}: the training subset is empty (no video with stored features in "
                           f"{store_path} has a class of the run's {len(vocabulary)}-class vocabulary)")
    position = {c: k for k, c in enumerate(vocabulary)}
    items = [TrainItem(row=r, label=position[classes[labels[r]]], path=paths[r]) for r in rows]
    class_index = [classes.index(c) for c in vocabulary]
    prompt_names = [m.prompt_names[i] for i in class_index]
    return _Selection(vocabulary, class_index, prompt_names, items, source)


def _check_video_files(store, store_path: Path, items: Sequence, option_root: Optional[Path]) -> None:
    from froster.pipeline.trainer_data import check_videos

    m = store.manifest
    sizes, mtimes = m.column("size"), m.column("mtime")
    rows = [it.row for it in items]
    try:
        check_videos([it.path for it in items], [sizes[r] for r in rows], [mtimes[r] for r in rows], store_path)
    except FrosterError as e:
        hint = "" if option_root is None else f" (--video-root {option_root})"
        raise FrosterError(f"{e}{hint}") from None


# ---- the step's prompts -------------------------------------------------------------------------------------------


def _mix(*values: int) -> int:
    from froster.pipeline.trainer_data import _mix as mix

    return mix(*values)


def step_prompt_choice(seed: int, step: int, num_descriptions: int) -> tuple[int, int]:
    """(template index in 0..27, description index) of optimizer step ``step``: one template for all classes, as the
    release, but a pure function of (seed, step), so resumed and distributed runs agree."""
    template = _mix(seed, step, 0x74656D70) % NUM_TEMPLATES
    description = _mix(seed, step, 0x64657363) % num_descriptions if num_descriptions > 0 else -1
    return int(template), int(description)


@dataclass(frozen=True)
class DryRun:
    """What ``--dry-run`` measured: one optimizer step of one process. ``str()`` is the line the CLI prints."""

    batch_size: int  # B clips per micro-batch
    grad_accum: int  # micro-batches in the step
    frames: int  # T
    classes: int  # K
    peak_mib: float  # CUDA: peak allocated on this process's device; CPU: the process's peak RSS
    device: str  # cpu | cuda:N
    rank: int
    world_size: int
    run_dir: Path  # the run directory a real run would write (not created)

    def __str__(self) -> str:
        accum = f" x {self.grad_accum} micro-batches" if self.grad_accum > 1 else ""
        what = "process RSS" if self.device == "cpu" else "max allocated"
        rank = f"rank {self.rank}/{self.world_size}: " if self.world_size > 1 else ""
        return (f"{rank}dry run: 1 step, batch {self.batch_size} x {self.frames} frames{accum}, {self.classes} "
                f"classes, peak memory {self.peak_mib:.1f} MiB on {self.device} ({what})")


def _peak_rss_mib() -> float:
    """The process's peak resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


# ---- run -----------------------------------------------------------------------------------------------------------


def run(config: TrainConfig) -> Path | DryRun:
    """Train (or continue) the run(s) of ``config``; returns the run directory (the parent of every run's directory
    for ``--run all``). Under torchrun (``torchrun --nproc-per-node N -m froster.cli train ...``) every process runs
    this; rank 0 alone writes the run directory. With ``dry_run`` nothing is written and each process returns its
    own ``DryRun`` (for ``--run all``, the run with the highest peak; every run's is logged)."""
    from froster.pipeline.distributed import DistEnv

    with DistEnv.from_env(config.device) as env:
        return _run(config, env)


def _run(config: TrainConfig, env) -> Path | DryRun:
    config = _resolved_paths(config)
    if config.resume is not None:
        config = _resumed_config(config)
    if config.out is None:
        config = replace(config, out=_abs(_default_out(config)))
    if config.protocol is not None and config.run == ALL_RUNS:
        from froster.pipeline.protocols import load_protocol

        protocol = load_protocol(config.protocol, check_manifests=False)
        reports = []
        for spec in protocol.runs:
            log.info("protocol %s: run %s", Path(config.protocol).name, spec.name)
            reports.append(_train_one(replace(config, run=spec.name, out=config.out / spec.name), env))
        if config.dry_run:
            return max(reports, key=lambda r: r.peak_mib)
        return config.out
    return _train_one(config, env)


def _resumed_config(config: TrainConfig) -> TrainConfig:
    """The config of the run in ``config.resume``, with this call's runtime fields; explicit conflicts refused."""
    run_dir = config.resume
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FrosterError(f"--resume {run_dir}: no {CONFIG_FILE} there (not a froster train run directory)")
    if not (run_dir / CHECKPOINT_DIR / LAST_FILE).is_file():
        raise FrosterError(f"--resume {run_dir}: no {CHECKPOINT_DIR}/{LAST_FILE} yet; start the run again instead")
    try:
        saved = TrainConfig.from_json(json.loads(path.read_text(encoding="utf-8"))["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise FrosterError(f"{path}: not a froster train config ({e})") from e
    conflicts = _differences(saved, replace(config, cache=config.cache or saved.cache), explicit_only=True)
    if conflicts:
        raise FrosterError(f"--resume {run_dir}: a resumed run keeps its config, but " + "; ".join(conflicts))
    runtime = {n: getattr(config, n) for n in RUNTIME_FIELDS if n not in ("out", "resume")}
    runtime = {n: v for n, v in runtime.items() if v is not None or n not in ("video_root", "val_cache")}
    return replace(saved, out=run_dir, resume=run_dir, **runtime)


def _train_one(config: TrainConfig, env) -> Path | DryRun:
    """Validate inputs -> set up -> the loop -> final outputs, for one run directory (or, with ``dry_run``, one step
    and its ``DryRun`` report, nothing written)."""
    from froster import __version__
    from froster.pipeline import checkpoints as ck
    from froster.pipeline.distributed import barrier, run_on_main

    run_dir = Path(config.out)
    # ---- validate inputs (everything is refused before any step) ----
    store_path = Path(config.cache)
    store = _open_store(store_path, "--cache")
    provenance = store.attrs["teacher"]
    _check_teacher_options(config, provenance, store_path)
    selection = _select(config, store, store_path)
    _check_video_files(store, store_path, selection.items, config.video_root)
    # The global step: batch_size clips x grad_accum micro-batches on each of W processes.
    steps_per_epoch = len(selection.items) // (config.batch_size * config.grad_accum * env.world_size)
    if steps_per_epoch == 0:
        raise FrosterError(
            f"{selection.source}: {len(selection.items)} training videos, fewer than one optimizer step's "
            f"--batch-size {config.batch_size} x --grad-accum {config.grad_accum} x {env.world_size} process(es); "
            f"lower them"
        )
    val_store = None
    if config.val_cache is not None:
        from froster.pipeline.trainer_data import TrainItem, video_paths

        val_store = _open_store(config.val_cache, "--val-cache")
        vm = val_store.manifest
        done, vpaths = np.asarray(val_store.done[:]), video_paths(vm.column("path"), vm.video_root)
        _check_video_files(val_store, config.val_cache,
                           [TrainItem(r, 0, vpaths[r]) for r in range(len(vm)) if done[r]], None)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise FrosterError("--device cuda: torch finds no CUDA device here")

    # Rank 0 alone inspects (and below, writes) the run directory; the others get its verdict, or its error, and read
    # the checkpoint themselves (a checkpoint is too big to broadcast as a pickle).
    inspected: dict = {}

    def inspect() -> str:
        inspected["state"], inspected["payload"] = _run_dir_state(config, run_dir, env.world_size)
        return inspected["state"]

    state = run_on_main(inspect, env)
    if env.is_main:
        resume_payload = inspected["payload"]
    else:
        resume_payload = ck.load_checkpoint(run_dir / CHECKPOINT_DIR / LAST_FILE) if state == "resume" else None
    if config.dry_run:
        resume_payload = None  # a dry run measures a first step from the starting weights, whatever is on disk
    elif state == "finished":
        log.info("%s: the run is finished (%s exists); nothing to do", run_dir, FINAL_FILE)
        return run_dir
    init_payload = ck.load_checkpoint(config.init_from) if config.init_from is not None and state == "fresh" else None

    # ---- set up ----
    loaded = _load_store_teacher(store, store_path, config.device)
    teacher = copy.deepcopy(loaded.model).to(config.device) if config.teacher == "online" else None
    from froster.pipeline.heads import create_head
    from froster.pipeline.students import create_student

    options = {"edge": config.vclip_edge} if config.student == "vclip" else {}
    # Not part of meta_args' options: checkpointing changes memory, not the weights a checkpoint holds.
    student = create_student(config.student, loaded.model, store.num_frames, **options,
                             grad_checkpointing=config.grad_checkpointing)
    dim = store.dim
    torch.manual_seed(config.seed)  # the heads' Kaiming init
    heads = torch.nn.ModuleDict({
        "vision": create_head(config.distill, dim, config.alpha, config.zero_init),
        "text": create_head(config.distill, dim, config.alpha, config.zero_init),
    })
    meta_args = dict(student=config.student, num_frames=store.num_frames, options=options, teacher=provenance,
                     vocabulary=selection.vocabulary, prompt_names=selection.prompt_names)
    if init_payload is not None:
        _load_init(student, heads, init_payload, config.init_from)

    derived = {
        "steps_per_epoch": steps_per_epoch,
        "total_steps": steps_per_epoch * config.epochs,
        "global_batch": config.batch_size * config.grad_accum * env.world_size,
        "world_size": env.world_size,
        "videos": len(selection.items),
        "classes": len(selection.vocabulary),
        "vocabulary": selection.vocabulary,
        "source": selection.source,
        "teacher": provenance,
        "store": {k: store.attrs.get(k) for k in ("frames", "views", "view_mode", "image_size", "seed", "templates")},
        "precision": config.resolved_precision,
        "froster_version": __version__,
    }
    if config.dry_run:
        return _fit(
            config, run_dir, store, store_path, selection, loaded, student, heads, teacher,
            steps_per_epoch, None, None, meta_args, env,
        )
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CHECKPOINT_DIR).mkdir(exist_ok=True)
        if state == "fresh":
            (run_dir / METRICS_FILE).unlink(missing_ok=True)
        _write_json_atomic(run_dir / CONFIG_FILE, {"config": replace(config, resume=None).to_json(),
                                                   "derived": derived})

    _fit(
        config, run_dir, store, store_path, selection, loaded, student, heads, teacher,
        steps_per_epoch, resume_payload, val_store, meta_args, env,
    )
    barrier(env)  # no process returns before rank 0 has written the outputs
    return run_dir


def _run_dir_state(config: TrainConfig, run_dir: Path, world_size: int = 1) -> tuple[str, Optional[dict]]:
    """(fresh | resume | finished, the checkpoint to resume from). An existing run with another config is refused,
    naming what differs."""
    cfg = run_dir / CONFIG_FILE
    last = run_dir / CHECKPOINT_DIR / LAST_FILE
    if not cfg.is_file():
        if run_dir.exists() and any(run_dir.iterdir()):
            raise FrosterError(f"--out {run_dir}: the folder exists and is not a froster train run; choose another")
        return "fresh", None
    try:
        saved = TrainConfig.from_json(json.loads(cfg.read_text(encoding="utf-8"))["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise FrosterError(f"{cfg}: not a froster train config ({e})") from e
    diffs = _differences(saved, config, explicit_only=False)
    if diffs:
        raise FrosterError(f"{run_dir} holds a run with other settings: " + "; ".join(diffs)
                           + ". Choose another --out, or delete the folder to start over")
    saved_world = json.loads(cfg.read_text(encoding="utf-8")).get("derived", {}).get("world_size", 1)
    if saved_world != world_size and last.is_file():
        # steps per epoch and the clips each step sees depend on the number of processes
        raise FrosterError(f"{run_dir} was trained with {saved_world} process(es); continue it with {saved_world} "
                           f"(torchrun --nproc-per-node {saved_world}), not {world_size}")
    if (run_dir / FINAL_FILE).is_file() and not last.is_file():
        return "finished", None
    if last.is_file():
        from froster.pipeline.checkpoints import load_checkpoint

        payload = load_checkpoint(last)
        if int(payload["epoch"]) >= config.epochs and (run_dir / FINAL_FILE).is_file():
            return "finished", None
        log.info("%s: continuing from %s (step %d)", run_dir, last, int(payload["step"]))
        return "resume", payload
    return "fresh", None


def _load_init(student, heads, payload: dict, path: Path) -> None:
    try:
        student.load_state_dict(payload["model"], strict=True)
    except RuntimeError as e:
        raise FrosterError(f"--init-from {path}: its model weights do not fit this student ({e})") from e
    for name, head in heads.items():
        sd = payload.get("heads", {}).get(name)
        try:
            head.load_state_dict(sd, strict=True)
        except (RuntimeError, AttributeError, TypeError):
            log.warning("--init-from %s: its %s head does not fit --distill's head (keys %s); that head starts "
                        "fresh", path, name, sorted(sd or {})[:4])
    log.info("initialised the student's weights from %s", path)


# ---- the loop ------------------------------------------------------------------------------------------------------


def _fit(
    config: TrainConfig,
    run_dir: Path,
    store,
    store_path: Path,
    selection: _Selection,
    loaded,
    student,
    heads,
    teacher,
    steps_per_epoch: int,
    resume_payload: Optional[dict],
    val_store,
    meta_args: dict,
    env,
) -> Optional[DryRun]:
    """The training loop, written out: epochs of optimizer steps of ``grad_accum`` micro-batches. With
    ``config.dry_run`` it returns after the first optimizer step, before writing anything, with that step's peak
    memory.

    With W processes each takes its contiguous share of every global step's clips (``RankBatches``) and encodes its
    share of the step's prompts (``encode_prompts_sharded``); each rank's loss is the mean over its own clips and the
    gradients are averaged over ranks (``average_gradients``): exactly one process's gradient on the whole step
    (pipeline/distributed.py). Rank 0 alone writes metrics and checkpoints."""
    from froster.pipeline import checkpoints as ck
    from froster.pipeline.distributed import (
        RankBatches, average_gradients, broadcast_parameters, encode_prompts_sharded, reduce_scalars,
    )
    from froster.pipeline.losses import froster_loss, video_logits
    from froster.pipeline.optim import lr_at, param_groups
    from froster.pipeline.text import class_embeddings, encode_text_trimmed, tokenize, training_prompt_rows
    from froster.pipeline.trainer_data import EpochBatchSampler, StoreViews, worker_init

    device, precision = config.device, config.resolved_precision
    student.to(device).train()
    heads.to(device).train()
    optimizer = torch.optim.AdamW(
        param_groups([student, heads], config.weight_decay), lr=config.lr, betas=ADAM_BETAS, eps=ADAM_EPS
    )
    scaler = torch.amp.GradScaler("cuda", enabled=(device == "cuda" and precision == "fp16"))
    params = [p for group in optimizer.param_groups for p in group["params"]]

    # Prompts of the run's classes: tokens [P, K, L] (the store's strings) and the teacher's targets per prompt row.
    prompts = store.prompts
    K = len(selection.class_index)
    all_texts = [[prompts.texts[p][c] for c in selection.class_index] for p in range(prompts.num_prompts)]
    tokens = tokenize(loaded.tokenizer, [t for row in all_texts for t in row]).reshape(prompts.num_prompts, K, -1)
    text_targets = torch.from_numpy(
        np.asarray(store.text_features[:], dtype=np.float32)[:, selection.class_index]
    )  # [P, K, D]
    num_desc = prompts.num_descriptions

    total_steps = steps_per_epoch * config.epochs
    step, average = 0, None
    if resume_payload is not None:
        student.load_state_dict(resume_payload["model"])
        for name, head in heads.items():
            head.load_state_dict(resume_payload["heads"][name])
        optimizer.load_state_dict(resume_payload["optimizer"])
        if resume_payload.get("scaler"):
            scaler.load_state_dict(resume_payload["scaler"])
        ck.set_rng_state(resume_payload["rng"])
        step = int(resume_payload["step"])
        average = resume_payload.get("average") or None
        if average is not None and average.get("count", 0) == 0:
            average = None
        dropped = _truncate_metrics(run_dir / METRICS_FILE, step, int(resume_payload["epoch"])) if env.is_main else 0
        log.info("resumed at step %d of %d (dropped %d metrics lines written after that checkpoint)", step,
                 total_steps, dropped)

    # Identical weights on every rank from the first step (cheap insurance; building them is deterministic on CPU).
    broadcast_parameters(student, env)
    broadcast_parameters(heads, env)

    dataset = StoreViews(
        store_path, selection.items, seed=config.seed, num_views=store.num_views, image_size=loaded.image_size,
        mean=loaded.mean, std=loaded.std, with_features=(config.teacher == "cached"),
    )
    step_batch = config.batch_size * config.grad_accum

    def training_state(epoch_done: int) -> dict:
        return {
            "model": student.state_dict(),
            "heads": {name: head.state_dict() for name, head in heads.items()},
            "optimizer": optimizer.state_dict(),
            "scheduler_step": step,
            "scaler": scaler.state_dict(),
            "rng": ck.rng_state(),
            "epoch": epoch_done,
            "step": step,
            "average": average if average is not None else {"sum": {}, "count": 0},
            "meta": ck.make_meta(**meta_args, epoch=epoch_done, kind="last"),
        }

    progress = _Progress(config.progress and env.is_main and not config.dry_run, total_steps, step)
    with progress:
        for epoch in range(step // steps_per_epoch, config.epochs):
            skip = step - epoch * steps_per_epoch
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_sampler=RankBatches(EpochBatchSampler(len(dataset), step_batch * env.world_size, config.seed, epoch,
                                                            skip_batches=skip), env),
                num_workers=config.num_workers,
                worker_init_fn=worker_init,
                pin_memory=(device == "cuda"),
            )
            sums = {"ce": 0.0, "fd_vision": 0.0, "fd_text": 0.0, "total": 0.0}
            n_steps = 0
            if skip:  # resumed mid-epoch: the epoch's means include the steps before the checkpoint
                for rec in _read_metrics(run_dir / METRICS_FILE):
                    if rec.get("type") == "step" and rec.get("epoch") == epoch + 1:
                        n_steps += 1
                        for k in sums:
                            sums[k] += rec[k]
            if config.dry_run:  # the step's peak: weights are already on the device, so they count
                rss_before = _peak_rss_mib()
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
            for batch in loader:
                # one optimizer step: the step's prompts, then grad_accum micro-batches
                lr = lr_at(step, steps_per_epoch, config.epochs, config.lr, config.warmup_epochs,
                           config.lr_factor, config.lr_factor)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                template, description = step_prompt_choice(config.seed, step, num_desc)
                rows = training_prompt_rows(prompts.template_index, prompts.description_index, template, description)
                step_tokens = tokens[rows].reshape(2 * K, -1).to(device)  # [2K, L]: templated then bare
                with _autocast(device, precision):
                    prompt_emb = encode_prompts_sharded(lambda t: student(tokens=t)[1], step_tokens, env)  # [2K, D]
                prompt_emb = prompt_emb.float().reshape(2, K, -1)  # [2, K, D]
                class_emb = class_embeddings(prompt_emb)  # [K, D]
                if teacher is None:
                    target_classes = class_embeddings(text_targets[rows].to(device))  # [K, D]
                else:
                    with torch.no_grad(), _autocast(device, precision):
                        t_emb = encode_prompts_sharded(lambda t: encode_text_trimmed(teacher, t), step_tokens, env)
                    t_emb = t_emb.float().reshape(2, K, -1)  # [2, K, D]
                    target_classes = class_embeddings(t_emb)  # [K, D]
                # The text tower runs once per step: the micro-batches backpropagate into a leaf copy of the class
                # embeddings, whose accumulated gradient then flows through the text tower in one backward.
                class_leaf = class_emb.detach().requires_grad_(True)
                terms_sum = {k: 0.0 for k in sums}
                for chunk in range(config.grad_accum):
                    part = slice(chunk * config.batch_size, (chunk + 1) * config.batch_size)
                    pixels = batch["pixels"][part].to(device, non_blocking=True)  # [b, T, 3, S, S]
                    labels = batch["label"][part].to(device, non_blocking=True)  # [b]
                    with _autocast(device, precision):
                        frames = student(frames=pixels)[0].float()  # [b, T, D]
                        if teacher is None:
                            target_frames = batch["teacher"][part].to(device, non_blocking=True)  # [b, T, D]
                        else:
                            with torch.no_grad():
                                g = teacher.encode_image(pixels.flatten(0, 1)).float()  # [b*T, D]
                            target_frames = F.normalize(g, dim=-1).reshape(frames.shape)  # [b, T, D]
                        logits = video_logits(frames, class_leaf, student.logit_scale.float())  # [b, K]
                        terms = froster_loss(
                            logits, labels, F.normalize(frames, dim=-1), target_frames, class_leaf, target_classes,
                            heads["vision"], heads["text"], beta=config.beta, distance=config.distance,
                            distill_on=config.distill_on, distill=config.distill,
                        )
                    scaler.scale(terms["total"] / config.grad_accum).backward()
                    for k in terms_sum:
                        terms_sum[k] += float(terms[k].detach()) / config.grad_accum
                class_emb.backward(class_leaf.grad)
                average_gradients(params, env)  # before unscale_: an inf on one rank reaches all, all skip the step
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if config.dry_run:
                    return _dry_run_report(config, store.num_frames, K, run_dir, env, rss_before)
                step += 1
                n_steps += 1
                terms_sum = reduce_scalars(terms_sum, env)  # each rank's mean over its clips -> the whole step's
                for k in sums:
                    sums[k] += terms_sum[k]
                record = {"type": "step", "step": step, "epoch": epoch + 1, "lr": lr, "template": template,
                          **{k: terms_sum[k] for k in sums}}
                if description >= 0:
                    record["description"] = description
                if env.is_main:
                    _append_metrics(run_dir / METRICS_FILE, record)
                progress.advance(step, terms_sum["total"], lr)
                if env.is_main and config.save_every and step % config.save_every == 0 and step % steps_per_epoch != 0:
                    ck.save_checkpoint(run_dir / CHECKPOINT_DIR / LAST_FILE, training_state(epoch))

            # end of epoch: weight average, validation, checkpoints
            epoch_no = epoch + 1
            weights = ck.flat_weights(student.state_dict(), {n: h.state_dict() for n, h in heads.items()})
            if epoch_no >= config.average_from:
                average = ck.average_add(average, weights)
            record = {"type": "epoch", "epoch": epoch_no, "step": step,
                      **{k: v / max(n_steps, 1) for k, v in sums.items()}}
            if val_store is not None:
                record["val_top1"] = _validate(student, val_store, config, loaded, env)
                student.train()
            if not env.is_main:
                continue
            _append_metrics(run_dir / METRICS_FILE, record)
            log.info("epoch %d/%d: loss %.4f%s", epoch_no, config.epochs, record["total"],
                     f", val top-1 {record['val_top1']:.2f}" if "val_top1" in record else "")
            state = training_state(epoch_no)
            ck.save_checkpoint(run_dir / CHECKPOINT_DIR / _epoch_file(epoch_no), {**state, "meta": ck.make_meta(
                **meta_args, epoch=epoch_no, kind="epoch")})
            ck.save_checkpoint(run_dir / CHECKPOINT_DIR / LAST_FILE, state)

    # ---- outputs ----
    if not env.is_main:
        return
    model_sd = student.state_dict()
    heads_sd = {n: h.state_dict() for n, h in heads.items()}
    ck.save_checkpoint(run_dir / FINAL_FILE, ck.weights_payload(
        model_sd, heads_sd, ck.make_meta(**meta_args, epoch=config.epochs, kind="last")))
    if average is not None:
        mean = ck.average_result(average, like=ck.flat_weights(model_sd, heads_sd))
        avg_model, avg_heads = ck.split_weights(mean)
        for name in heads_sd:  # a parameter-free head (fd, none) has no keys to split back
            avg_heads.setdefault(name, {})
        ck.save_checkpoint(run_dir / AVERAGED_FILE, ck.weights_payload(
            avg_model, avg_heads, ck.make_meta(**meta_args, epoch=config.epochs, kind="averaged")))
        log.info("averaged.pt: uniform mean of the weights at the end of epochs %d..%d (%d)", config.average_from,
                 config.epochs, average["count"])
    log.info("run directory %s", run_dir)


def _dry_run_report(config: TrainConfig, frames: int, K: int, run_dir: Path, env, rss_before: float) -> DryRun:
    if config.device == "cuda":
        torch.cuda.synchronize()
        peak, where = torch.cuda.max_memory_allocated() / 2**20, f"cuda:{torch.cuda.current_device()}"
    else:
        peak, where = _peak_rss_mib(), "cpu"
    report = DryRun(batch_size=config.batch_size, grad_accum=config.grad_accum, frames=frames, classes=K,
                    peak_mib=peak, device=where, rank=env.rank, world_size=env.world_size, run_dir=run_dir)
    log.info("%s", report)  # every rank logs its own device's peak
    if where == "cpu":
        log.info("rank %d: the step raised the process peak RSS by %.1f MiB (from %.1f MiB)", env.rank,
                 peak - rss_before, rss_before)
    return report


def _validate(student, val_store, config: TrainConfig, loaded, env) -> float:
    """Top-1 (%) of ``student`` on every done video of ``val_store``, its own vocabulary, all its prompts (class
    embedding = normalised mean of all P prompts, as the release tests) and views (logits summed). With W processes
    each encodes 1/W of the prompts and scores every W-th video; the counts are summed."""
    from froster.pipeline.distributed import encode_prompts_sharded, reduce_scalars
    from froster.pipeline.losses import video_logits
    from froster.pipeline.text import class_embeddings, encode_text_trimmed, tokenize
    from froster.pipeline.trainer_data import StoreViews, TrainItem, video_paths

    device, precision = config.device, config.resolved_precision
    m = val_store.manifest
    prompts = val_store.prompts
    done = np.asarray(val_store.done[:])
    rows = [i for i in range(len(m)) if done[i]]
    if not rows:
        return float("nan")
    paths = video_paths(m.column("path"), m.video_root)
    labels = m.column("label")
    items = [TrainItem(row=r, label=labels[r], path=paths[r]) for r in rows]
    total_items = len(items)
    items = items[env.rank :: env.world_size]
    V = val_store.num_views
    dataset = StoreViews(val_store.path, items, seed=config.seed, num_views=V, image_size=loaded.image_size,
                         mean=loaded.mean, std=loaded.std, with_features=False)
    per_batch = max(1, config.batch_size // V) if V <= config.batch_size else 1
    batches = [[(0, i, v) for i in range(s, min(s + per_batch, len(items))) for v in range(V)]
               for s in range(0, len(items), per_batch)]
    student.eval()
    correct = 0
    with torch.no_grad(), _autocast(device, precision):
        texts = [t for row in prompts.texts for t in row]
        emb = encode_prompts_sharded(lambda t: encode_text_trimmed(student.clip, t, max_batch=1024),
                                     tokenize(loaded.tokenizer, texts).to(device), env)
        classes = class_embeddings(emb.float().reshape(prompts.num_prompts, prompts.num_classes, -1))  # [C, D]
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=config.num_workers,
                                             pin_memory=(device == "cuda"))
        for batch in loader:
            frames = student(frames=batch["pixels"].to(device))[0].float()  # [b*V, T, D]
            logits = video_logits(frames, classes, student.logit_scale.float())  # [b*V, C]
            logits = logits.reshape(-1, V, logits.shape[-1]).sum(dim=1)  # [b, C]: the release sums the views
            truth = batch["label"].reshape(-1, V)[:, 0].to(device)
            correct += int((logits.argmax(dim=-1) == truth).sum())
    correct = reduce_scalars({"correct": correct}, env, op="sum")["correct"]
    return 100.0 * correct / total_items


class _Progress:
    """Rich progress bar on stderr: steps, steps/s, loss, lr (the stage owns it; pipeline/ never prints)."""

    def __init__(self, enabled: bool, total: int, completed: int):
        self.enabled, self.total, self.completed = enabled, total, completed
        self._bar = None
        self._t0 = time.perf_counter()
        self._start_step = completed

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} steps/s"),
                TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self.completed, rate="-",
                                            loss="-", lr="-")
        return self

    def advance(self, step: int, loss: float, lr: float) -> None:
        if self._bar is None:
            return
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        rate = (step - self._start_step) / elapsed
        self._bar.update(self._task, completed=step, rate=f"{rate:.2f}", loss=f"{loss:.4f}", lr=f"{lr:.3g}")

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False
