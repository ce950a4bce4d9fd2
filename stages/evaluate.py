"""Stage three: evaluate the frozen teacher, the tuned model and their ensemble on a protocol's evaluation sets.

Reads a protocol file (pipeline/protocols.py), for each evaluation set the feature store of its test videos (stage
one's output, 3 clips x 1 centre crop), and for each run the checkpoint the protocol names (``final.pt`` for
``checkpoint = "last"``, base-to-novel; ``averaged.pt`` for ``"averaged"``, cross-dataset; the paper's A.1) from the
run directory of ``froster train``. Writes a result directory (default ``reports/<protocol stem>/``):

    predictions.parquet  per video: protocol, run, eval_set, video_id, label, class_name, evaluated, status, and per
                         method (teacher, tuned, ensemble) the top-5 class indices, names and scores
    metrics.parquet      per (run, eval set, method): top-1 and top-5 (%), videos evaluated and failed
    summary.parquet      the aggregated numbers of the table (mean, std, n per cell)
    table.md             the paper's Table 1 (base-to-novel) or Table 2 (cross-dataset), the checkpoints and stores
                         used, failed videos; the CLI prints it
    chart.png            a bar chart of the table
    config.json          the resolved settings: stores and checkpoints used

    froster evaluate --protocol base2novel --device cuda
    froster evaluate --cache cache/ucf101_test1.zarr --checkpoint runs/k400/full/averaged.pt

How each method scores a video: per clip, the mean over its T frames of cos(frame embedding, class embedding), summed
over the 3 clips (the release sums the clips' logits; logit_scale is left out, it changes no ranking). The frozen
teacher's frame embeddings are the store's (never recomputed); the tuned model's come from its image tower over the
very pixels the teacher saw (the store's views, rebuilt with ``views.render_view``). A class embedding is the
normalised mean over the class's P prompts (the store's prompt strings) of the normalised prompt embeddings: the
teacher's from the store's text features, the tuned model's from one pass of its text tower; computed once per
(model, vocabulary), not per batch as the release did. Distillation heads are not used. The ensemble (the paper's
Fig. 1) is the sum of the two models' cosine scores. Videos whose extraction failed, or that cannot be decoded now,
are left out of every method and counted.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from froster.pipeline.errors import ConfigError, FrosterError
from froster.pipeline.precision import check_device_precision, resolve_precision
from froster.pipeline.precision import autocast as _autocast

log = logging.getLogger(__name__)

PROTOCOLS_DIR = Path("protocols")  # where `--protocol NAME` looks for NAME.toml
CHECKPOINT_FILES = {"last": "final.pt", "averaged": "averaged.pt"}  # ARCHITECTURE.md, run directory
METHODS = ("teacher", "tuned", "ensemble")
TOPK = 5


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of ``froster evaluate``: either protocols, or one store with one checkpoint (``cache``)."""

    # Protocol files, or names of files under ./protocols/ ("base2novel" -> protocols/base2novel.toml). Several
    # protocols of one kind make one table (e.g. Table 1 over K400, HMDB, UCF, SSv2).
    protocols: tuple[str, ...] = ()
    # Without a protocol: one store evaluated over its own class list with `checkpoint`.
    cache: Optional[Path] = None
    checkpoint: Optional[Path] = None  # the checkpoint of `cache` mode (any checkpoint file of froster train)
    # Protocol mode: explicit stores by dataset key ([datasets.KEY] of the protocol), e.g. ("ucf101_test1", path).
    stores: tuple[tuple[str, Path], ...] = ()
    stores_dir: Path = Path("cache")  # other stores: <dir>/<dataset key>.zarr, else any store made from the manifest
    # Run directories: <runs_dir>/<run name>/; None: runs/<protocol stem>/ (froster train --protocol's default).
    runs_dir: Optional[Path] = None
    run_checkpoints: tuple[tuple[str, Path], ...] = ()  # explicit checkpoint files by run name (protocol mode)
    out: Optional[Path] = None  # result directory; None: reports/<protocol stem(s)> or reports/eval-<store stem>
    video_root: Optional[Path] = None  # where the videos are now, when moved since the stores were made
    device: str = "cpu"  # cpu | cuda: where the tuned model runs
    precision: str = "auto"  # auto (fp32 on cpu, bf16 autocast on cuda) | fp32 | bf16 | fp16
    batch_size: int = 8  # videos per forward of the tuned model (each 3 clips x T frames)
    workers: int = 2  # DataLoader worker processes decoding and rendering videos; 0 decodes in this process
    text_batch: int = 1024  # prompts per text-tower call when building the tuned model's class embeddings
    progress: bool = True  # progress bar on stderr

    def __post_init__(self):
        if bool(self.protocols) == (self.cache is not None):
            raise ConfigError("give either --protocol FILE|NAME or --cache STORE --checkpoint FILE, not both or neither")
        if self.cache is not None:
            if self.checkpoint is None:
                raise ConfigError("--cache needs --checkpoint FILE (the tuned model to evaluate on the store)")
            if self.stores or self.run_checkpoints or self.runs_dir is not None:
                raise ConfigError("--store, --run-checkpoint and --runs belong to --protocol, not --cache")
        elif self.checkpoint is not None:
            raise ConfigError("--checkpoint belongs to --cache; with --protocol use --run-checkpoint RUN=FILE or --runs")
        check_device_precision(self.device, self.precision)
        for name, minimum in (("batch_size", 1), ("workers", 0), ("text_batch", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"--{name.replace('_', '-')}: expected an integer >= {minimum}, found {value!r}")
        for option, pairs in (("--store", self.stores), ("--run-checkpoint", self.run_checkpoints)):
            keys = [k for k, _ in pairs]
            dup = sorted({k for k in keys if keys.count(k) > 1})
            if dup:
                raise ConfigError(f"{option}: {dup[0]!r} given more than once")

    @property
    def resolved_precision(self) -> str:
        return resolve_precision(self.device, self.precision)


# ---- what is evaluated ----


@dataclass
class _Checkpoint:
    """One tuned model: a run's checkpoint file and what its meta says."""

    run: str
    path: Path
    expected_kind: str  # "last" | "averaged" | "any" (cache mode)
    kind: str = ""  # meta["kind"]
    epoch: int = -1
    student: str = ""
    teacher: dict = field(default_factory=dict)


@dataclass
class _Set:
    """One evaluation set on one store: which store rows, their labels in the set's vocabulary."""

    protocol: str  # protocol name ("" in cache mode)
    name: str  # eval set name
    group: str  # aggregation group
    run: str  # "all" or a run name (protocol's eval set field)
    store: Path
    vocabulary: list[str]  # raw class names; label i = vocabulary[i]
    store_labels: list[int]  # the store manifest's label of each vocabulary entry
    rows: np.ndarray  # [n] int64 store rows of the set, in store order
    labels: np.ndarray  # [n] int64 label in the vocabulary
    video_ids: list[str]
    status: list[str]  # per row: "ok" or why the row has no features


@dataclass
class _Unit:
    """One evaluation: a checkpoint on a set."""

    protocol: str
    kind: str  # "base2novel" | "cross-dataset" | "single"
    checkpoint: _Checkpoint
    eval_set: _Set
    column: str  # the table column / dataset label this unit feeds
    ddof: int


# ---- resolving inputs ----


def resolve_protocol_path(text: str, protocols_dir: Path = PROTOCOLS_DIR) -> Path:
    """A protocol file path, or a name of a file under ``protocols_dir`` ("base2novel" -> protocols/base2novel.toml).

    Raises FrosterError listing the files found under ``protocols_dir`` when neither exists.
    """
    path = Path(text)
    if path.is_file():
        return path
    candidates = [protocols_dir / text, protocols_dir / f"{text}.toml"]
    for c in candidates:
        if c.is_file():
            return c
    if protocols_dir.is_dir():
        found = sorted(p.name for p in protocols_dir.glob("*.toml"))
        listing = f"{protocols_dir}/ holds {', '.join(found)}" if found else f"{protocols_dir}/ holds no .toml file"
    else:
        listing = f"there is no {protocols_dir}/ folder in {Path.cwd()}"
    raise FrosterError(
        f"--protocol {text}: no protocol file {path} or {candidates[-1]}; {listing} "
        "(write one with `froster protocol base2novel|cross-dataset ... --out protocols/NAME.toml`)"
    )


def _open_store(path: Path, where: str):
    from froster.pipeline.store import FeatureStore

    try:
        store = FeatureStore.open(path)
    except FrosterError as e:
        raise FrosterError(f"{where}: {e}") from e
    if not store.complete:
        raise FrosterError(f"{where}: {path} is not complete (extract-teacher was interrupted); rerun extract-teacher")
    mode = store.attrs.get("view_mode")
    if mode != "test":
        raise FrosterError(
            f"{where}: {path} holds {mode!r} views; evaluation needs a store of test views (3 clips x 1 centre crop, "
            "extract-teacher --view-mode test, the default for test/val splits)"
        )
    return store


def _find_store(key: str, manifest, manifest_path: Path, config: EvaluateConfig, where: str,
                fingerprints: dict[Path, tuple[str, str]]) -> Path:
    """The store of protocol dataset ``key``: --store KEY=PATH, <stores_dir>/<key>.zarr, or the test-view store in
    <stores_dir> whose manifest fingerprint is the dataset manifest's. ``fingerprints`` caches (fingerprint,
    view_mode) per store path across calls."""
    explicit = dict(config.stores)
    if key in explicit:
        return Path(explicit[key])
    conventional = Path(config.stores_dir) / f"{key}.zarr"
    if conventional.is_dir():
        return conventional
    from froster.pipeline.store import FeatureStore, manifest_fingerprint

    want = manifest_fingerprint(manifest)
    matches, seen = [], []
    for candidate in sorted(Path(config.stores_dir).glob("*.zarr")) if Path(config.stores_dir).is_dir() else []:
        if candidate not in fingerprints:
            try:
                attrs = FeatureStore.open(candidate).attrs
            except FrosterError:
                continue
            fingerprints[candidate] = ((attrs.get("manifest") or {}).get("sha256", ""), attrs.get("view_mode", ""))
        seen.append(candidate.name)
        if fingerprints[candidate] == (want, "test"):
            matches.append(candidate)
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise FrosterError(
            f"{where}: several stores were made from {manifest_path}: {', '.join(map(str, matches))}; "
            f"pick one with --store {key}=PATH"
        )
    raise FrosterError(
        f"{where}: no store for dataset {key!r} ({manifest_path}): expected --store {key}=PATH, {conventional}, or a "
        f"test-view store made from that manifest in {config.stores_dir}/ (found: {', '.join(seen) or 'none'}); "
        f"make one with `froster extract-teacher --manifest {manifest_path} --out {conventional}`"
    )


def _make_set(store, store_path: Path, vocabulary: Sequence[str], *, protocol: str, name: str, group: str, run: str,
              where: str, required_ids: Sequence[str] | None = None) -> _Set:
    """The store rows whose class is in ``vocabulary``, labelled by position in it."""
    from froster.pipeline.protocols import vocabulary_labels

    m = store.manifest
    store_labels = vocabulary_labels(m.classes, vocabulary, where=f"{where} vocabulary (store {store_path})")
    to_set = {s: i for i, s in enumerate(store_labels)}
    labels_col = m.column("label")
    rows = np.array([r for r, lab in enumerate(labels_col) if lab in to_set], dtype=np.int64)
    if rows.size == 0:
        raise FrosterError(f"{where}: store {store_path} has no video of the set's {len(vocabulary)} classes")
    ids = m.column("video_id")
    video_ids = [ids[r] for r in rows]
    if required_ids is not None:
        have = set(video_ids)
        missing = [v for v in required_ids if v not in have]
        if missing:
            raise FrosterError(
                f"{where}: store {store_path} lacks {len(missing)} of the set's {len(required_ids)} videos "
                f"(e.g. {missing[0]!r}); it was made from another manifest"
            )
    status_col, reason_col = m.column("status"), m.column("reason")
    done = np.asarray(store.done[:], dtype=bool)  # [N]
    status = []
    for r in rows:
        if status_col[r] != "ok":
            status.append(f"{status_col[r]}: {reason_col[r] or ''}".strip(": "))
        elif not done[r]:
            status.append("not extracted")
        else:
            status.append("ok")
    labels = np.array([to_set[labels_col[r]] for r in rows], dtype=np.int64)
    return _Set(protocol, name, group, run, Path(store_path), list(vocabulary), list(store_labels), rows, labels,
                video_ids, status)


def _checkpoint(run: str, path: Path, expected_kind: str, where: str) -> _Checkpoint:
    from froster.pipeline.checkpoints import load_checkpoint

    if not Path(path).is_file():
        raise FrosterError(
            f"{where}: no checkpoint at {path} (expected the {expected_kind!r} checkpoint of run {run!r}: "
            f"run `froster train` first, or name the file with --run-checkpoint {run}=FILE)"
        )
    meta = load_checkpoint(path)["meta"]
    ck = _Checkpoint(run, Path(path), expected_kind, str(meta.get("kind", "")), int(meta.get("epoch", -1)),
                     str((meta.get("student") or {}).get("name", "")), dict(meta.get("teacher") or {}))
    if expected_kind in CHECKPOINT_FILES and ck.kind and ck.kind != expected_kind:
        log.warning("%s: the protocol asks for the %r checkpoint but %s is a %r checkpoint", where, expected_kind,
                    path, ck.kind)
    return ck


def _protocol_units(config: EvaluateConfig) -> tuple[list[_Unit], list[dict]]:
    from froster.pipeline.manifests import read_manifest
    from froster.pipeline.protocols import load_protocol

    paths = [resolve_protocol_path(p) for p in config.protocols]
    protocols = [load_protocol(p) for p in paths]
    kinds = {p.kind for p in protocols}
    if len(kinds) > 1:
        listed = ", ".join(f"{p.path} ({p.kind})" for p in protocols)
        raise FrosterError(f"--protocol: one table needs protocols of one kind, found {listed}")
    names = [p.name for p in protocols]
    if len(set(names)) != len(names):
        raise FrosterError(f"--protocol: two protocols share a name ({names}); each labels its own columns")
    explicit_ckpts = dict(config.run_checkpoints)
    unknown = sorted(set(explicit_ckpts) - {r.name for p in protocols for r in p.runs})
    if unknown:
        raise FrosterError(f"--run-checkpoint {unknown[0]}=...: no run of that name in {', '.join(map(str, paths))}")
    units: list[_Unit] = []
    cards: list[dict] = []
    stores: dict[Path, object] = {}
    manifests: dict[Path, object] = {}
    fingerprints: dict[Path, tuple[str, str]] = {}
    for path, proto in zip(paths, protocols):
        runs_dir = Path(config.runs_dir) if config.runs_dir is not None else Path("runs") / path.stem
        checkpoints = {}
        for r in proto.runs:
            ckpt_path = Path(explicit_ckpts.get(r.name, runs_dir / r.name / CHECKPOINT_FILES[proto.checkpoint]))
            checkpoints[r.name] = _checkpoint(r.name, ckpt_path, proto.checkpoint, f"{path}: run {r.name!r}")
        card = {"protocol": proto.name, "file": str(path), "kind": proto.kind, "checkpoint": proto.checkpoint,
                "ddof": proto.aggregation.ddof, "groups": list(proto.aggregation.groups), "sets": [],
                "runs": {n: str(c.path) for n, c in checkpoints.items()}}
        for e in proto.eval_sets:
            where = f"{path}: eval set {e.name!r}"
            if e.manifest not in manifests:
                manifests[e.manifest] = read_manifest(e.manifest)
            m = manifests[e.manifest]
            store_path = _find_store(e.dataset, m, e.manifest, config, where, fingerprints)
            if store_path not in stores:
                stores[store_path] = _open_store(store_path, where)
            store = stores[store_path]
            vocab = set(e.vocabulary)
            required = [v for v, c in zip(m.column("video_id"), m.column("class_name")) if c in vocab]
            s = _make_set(store, store_path, e.vocabulary, protocol=proto.name, name=e.name, group=e.group,
                          run=e.run, where=where, required_ids=required)
            card["sets"].append({"name": e.name, "group": e.group, "store": str(store_path), "videos": len(s.rows),
                                 "classes": len(e.vocabulary), "clips": store.num_views, "frames": store.num_frames})
            for r in proto.runs_for(e):
                column = proto.name if proto.kind == "base2novel" else (
                    e.group if len(protocols) == 1 else f"{proto.name}/{e.group}")
                units.append(_Unit(proto.name, proto.kind, checkpoints[r.name], s, column, proto.aggregation.ddof))
        cards.append(card)
    return units, cards


def _single_units(config: EvaluateConfig) -> tuple[list[_Unit], list[dict]]:
    path = Path(config.cache)
    store = _open_store(path, "--cache")
    s = _make_set(store, path, list(store.manifest.classes), protocol="", name=path.name, group=path.name,
                  run="all", where="--cache")
    ck = _checkpoint("checkpoint", Path(config.checkpoint), "any", "--checkpoint")
    card = {"protocol": "", "file": "", "kind": "single", "checkpoint": str(config.checkpoint), "ddof": 0,
            "groups": [path.name], "sets": [{"name": path.name, "group": path.name, "store": str(path),
                                               "videos": len(s.rows), "classes": len(s.vocabulary),
                                               "clips": store.num_views, "frames": store.num_frames}],
            "runs": {"checkpoint": str(config.checkpoint)}}
    return [_Unit("", "single", ck, s, path.name, 0)], [card]


# ---- computing scores ----


def _store_rows_pooled(store, rows: np.ndarray) -> np.ndarray:
    """The teacher's pooled frame features (metrics.pool_clips) of store ``rows`` -> float64 [n, D]."""
    from froster.pipeline.metrics import pool_clips

    out = np.zeros((rows.size, store.dim), dtype=np.float64)
    if rows.size == 0:
        return out
    block = max(1, store.block_rows)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    start = 0
    while start < sorted_rows.size:
        lo = int(sorted_rows[start])
        hi = min((lo // block + 1) * block, store.num_videos)  # read one chunk at a time
        stop = int(np.searchsorted(sorted_rows, hi, side="left"))
        feats = np.asarray(store.video_features[lo:hi])  # [hi - lo, V, T, D] float16
        pick = sorted_rows[start:stop] - lo
        out[order[start:stop]] = pool_clips(feats[pick].astype(np.float32))
        start = stop
    return out


class _Clips:
    """DataLoader dataset: per item, the V test clips of one video as the model's pixels.

    Holds only plain arrays (paths, frame indices, crops, flips read from the store by the main process), so workers
    never open the Zarr store (fork after zarr's I/O thread started is unsafe) and nothing heavy is pickled.
    """

    def __init__(self, paths: list[str], frame_index: np.ndarray, crop: np.ndarray, flip: np.ndarray,
                 size: int, mean: Sequence[float], std: Sequence[float]):
        self.paths = paths
        self.frame_index = frame_index  # [n, V, T] int32
        self.crop = crop  # [n, V, 4] int32
        self.flip = flip  # [n, V] bool
        self.size, self.mean, self.std = int(size), tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        import torch

        from froster.pipeline.video import read_frames
        from froster.pipeline.views import render_view

        V, T = self.frame_index.shape[1:]
        try:
            frames = read_frames(self.paths[i], self.frame_index[i].reshape(-1))  # [V * T, H, W, 3] uint8
            frames = frames.reshape(V, T, *frames.shape[1:])  # [V, T, H, W, 3]
            pixels = torch.stack([
                render_view(frames[v], self.crop[i, v], bool(self.flip[i, v]), self.size, self.mean, self.std)
                for v in range(V)
            ])  # [V, T, 3, S, S]
            error = ""
        except FrosterError as e:
            pixels = torch.zeros(V, T, 3, self.size, self.size)
            error = str(e)
        return {"index": i, "pixels": pixels, "error": error}


def _tuned_classifier(student, tokenizer, store, device: str, precision: str, batch: int) -> np.ndarray:
    """The tuned model's class embeddings of every store class from the store's prompt strings -> float32 [C, D]."""
    import torch

    from froster.pipeline.metrics import class_classifier
    from froster.pipeline.text import tokenize

    texts = store.prompts.texts  # [P][C]
    P, C = len(texts), len(texts[0])
    flat = [t for row in texts for t in row]  # row p * C + c
    out = []
    with torch.inference_mode(), _autocast(device, precision):
        for i in range(0, len(flat), batch):
            tokens = tokenize(tokenizer, flat[i : i + batch]).to(device)  # [b, L]
            out.append(student.encode_text(tokens).float().cpu())  # [b, D]
    emb = torch.cat(out).numpy().reshape(P, C, -1)  # [P, C, D]
    return class_classifier(emb)


def _tuned_pooled(student, store, rows: np.ndarray, paths: list[str], config: EvaluateConfig, bar, task
                  ) -> tuple[np.ndarray, dict[int, str]]:
    """The tuned model's pooled frame embeddings of store ``rows`` -> (float64 [n, D], {position: decode error})."""
    import torch
    from torch.utils.data import DataLoader

    from froster.pipeline.metrics import pool_clips

    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    fi = np.asarray(store.frame_index.get_orthogonal_selection((sorted_rows,))) if sorted_rows.size else None
    crop = np.asarray(store.crop.get_orthogonal_selection((sorted_rows,))) if sorted_rows.size else None
    flip = np.asarray(store.flip.get_orthogonal_selection((sorted_rows,))) if sorted_rows.size else None
    attrs = store.attrs
    dataset = _Clips([paths[j] for j in order], fi, crop, flip, attrs["image_size"], attrs["mean"], attrs["std"])
    loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=config.workers, shuffle=False,
                        pin_memory=config.device == "cuda", persistent_workers=False)
    out = np.zeros((rows.size, store.dim), dtype=np.float64)
    errors: dict[int, str] = {}
    with torch.inference_mode():
        for batch in loader:
            x = batch["pixels"].to(config.device, non_blocking=True)  # [B, V, T, 3, S, S]
            B, V = x.shape[:2]
            with _autocast(config.device, config.resolved_precision):
                f = student.encode_frames(x.flatten(0, 1))  # [B * V, T, D]
            f = f.float().reshape(B, V, f.shape[1], -1).cpu().numpy()  # [B, V, T, D]
            pos = order[batch["index"].numpy()]
            out[pos] = pool_clips(f)
            for j, err in zip(pos, batch["error"]):
                if err:
                    errors[int(j)] = err
            bar.advance(task, B)
    return out, errors


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)


@dataclass
class _Scores:
    """Per set row: whether evaluated, and per method the [n, K] scores (rows not evaluated hold zeros)."""

    evaluated: np.ndarray  # [n] bool
    status: list[str]  # [n]
    scores: dict[str, np.ndarray]  # method -> [n, K]


def _evaluate(units: list[_Unit], config: EvaluateConfig) -> dict[int, _Scores]:
    """Scores of every unit (by position in ``units``): the one loop over checkpoints and stores."""
    import torch

    from froster.pipeline.checkpoints import load_student
    from froster.pipeline.metrics import class_classifier, ensemble_scores, video_scores
    from froster.pipeline.store import FeatureStore
    from froster.pipeline.teacher import TeacherSpec, tokenizer_for

    if config.device == "cuda" and not torch.cuda.is_available():
        raise FrosterError("--device cuda: torch finds no CUDA device here")
    stores = {p: FeatureStore.open(p) for p in {u.eval_set.store for u in units}}
    video_root = Path(config.video_root) if config.video_root is not None else None

    # The rows each store needs, over every set on it (K600 subsets share one store and many rows).
    needed: dict[Path, np.ndarray] = {}
    for u in units:
        s = u.eval_set
        ok_rows = s.rows[np.array([st == "ok" for st in s.status], dtype=bool)]
        needed[s.store] = np.union1d(needed.get(s.store, np.zeros(0, np.int64)), ok_rows).astype(np.int64)

    # The frozen teacher: the store's features, no recompute.
    teacher_pooled = {p: _store_rows_pooled(stores[p], rows) for p, rows in needed.items()}  # [n_p, D]
    teacher_text = {p: class_classifier(np.asarray(stores[p].text_features[:], dtype=np.float32))
                    for p in needed}  # [C_p, D]

    results: dict[int, _Scores] = {}
    by_ckpt: dict[Path, list[int]] = {}
    for i, u in enumerate(units):
        by_ckpt.setdefault(u.checkpoint.path, []).append(i)
    with _progress(config.progress) as bar:
        for ckpt_path, idxs in by_ckpt.items():
            ck = units[idxs[0]].checkpoint
            student, meta = load_student(ckpt_path, device=config.device)
            tokenizer = tokenizer_for(TeacherSpec.from_provenance(meta["teacher"]))
            for p in dict.fromkeys(units[i].eval_set.store for i in idxs):
                store = stores[p]
                _check_compatible(store, p, student, meta, ckpt_path)
                rows = needed[p]
                root = video_root or Path(store.manifest.video_root)
                rel = store.manifest.column("path")
                paths = [str(root / rel[r]) for r in rows]
                log.info("run %s: tuned model on %d videos of %s", ck.run, rows.size, p)
                task = bar.add_task(f"{ck.run} @ {p.name}", total=int(rows.size))
                tuned_text = _tuned_classifier(student, tokenizer, store, config.device, config.resolved_precision,
                                               config.text_batch)  # [C, D]
                tuned_pooled, errors = _tuned_pooled(student, store, rows, paths, config, bar, task)  # [n, D]
                for err_pos, err in sorted(errors.items())[:3]:
                    log.warning("cannot decode %s now: %s", paths[err_pos], err)
                if errors:
                    log.warning("%d videos of %s failed to decode and are left out of every method", len(errors), p)
                where_in_needed = {int(r): k for k, r in enumerate(rows)}
                for i in idxs:
                    u = units[i]
                    if u.eval_set.store != p:
                        continue
                    s = u.eval_set
                    status = list(s.status)
                    pos = np.full(len(s.rows), -1, dtype=np.int64)
                    for j, r in enumerate(s.rows):
                        if status[j] == "ok":
                            pos[j] = where_in_needed[int(r)]
                            if pos[j] in errors:
                                status[j] = f"undecodable now: {errors[pos[j]]}"
                    evaluated = np.array([st == "ok" for st in status], dtype=bool)
                    take = pos[evaluated]
                    labels = np.asarray(s.store_labels)
                    K = len(s.vocabulary)
                    scores = {m: np.zeros((len(s.rows), K)) for m in METHODS}
                    scores["teacher"][evaluated] = video_scores(teacher_pooled[p][take], teacher_text[p][labels])
                    scores["tuned"][evaluated] = video_scores(tuned_pooled[take], tuned_text[labels])
                    scores["ensemble"] = ensemble_scores(scores["teacher"], scores["tuned"])
                    results[i] = _Scores(evaluated, status, scores)
            del student
    return results


def _check_compatible(store, store_path: Path, student, meta: dict, ckpt_path: Path) -> None:
    """The tuned model must take the store's pixels (image size) and share its embedding width with the teacher."""
    size = getattr(getattr(student.clip, "visual", None), "image_size", None)
    if isinstance(size, (tuple, list)):
        size = size[0]
    if size is not None and int(size) != int(store.attrs["image_size"]):
        raise FrosterError(
            f"{ckpt_path}: the tuned model takes {size}px images but {store_path} was rendered at "
            f"{store.attrs['image_size']}px; evaluate with a store made by the same teacher architecture"
        )
    num_frames = int(meta["student"]["num_frames"])
    if num_frames != store.num_frames:
        raise FrosterError(
            f"{ckpt_path}: the tuned model takes T={num_frames} frames per clip but {store_path} holds T="
            f"{store.num_frames}; extract the test store with --frames {num_frames}"
        )
    st, mt = store.attrs.get("teacher") or {}, meta.get("teacher") or {}
    if (st.get("model"), st.get("pretrained"), st.get("checkpoint_sha256")) != (
            mt.get("model"), mt.get("pretrained"), mt.get("checkpoint_sha256")):
        log.warning("%s was extracted with teacher %s but %s was trained from %s: the teacher row and the ensemble "
                    "use the store's teacher", store_path, st.get("model"), ckpt_path, mt.get("model"))


# ---- aggregation and outputs ----


def _unit_metrics(units: list[_Unit], results: dict[int, _Scores]) -> list[dict]:
    from froster.pipeline.metrics import topk_accuracy

    records = []
    for i, u in enumerate(units):
        r = results[i]
        s = u.eval_set
        failed_extraction = sum(1 for st in s.status if st != "ok")
        failed_decode = int((~r.evaluated).sum()) - failed_extraction
        for m in METHODS:
            acc = topk_accuracy(r.scores[m][r.evaluated], s.labels[r.evaluated], ks=(1, 5))
            records.append({
                "protocol": u.protocol, "kind": u.kind, "run": u.checkpoint.run, "eval_set": s.name,
                "group": s.group, "column": u.column, "store": str(s.store), "checkpoint": str(u.checkpoint.path),
                "checkpoint_kind": u.checkpoint.kind, "checkpoint_epoch": u.checkpoint.epoch, "method": m,
                "top1": acc[1], "top5": acc[5], "videos": int(r.evaluated.sum()), "set_videos": len(s.rows),
                "failed": len(s.rows) - int(r.evaluated.sum()), "failed_extraction": failed_extraction,
                "failed_decode": failed_decode, "classes": len(s.vocabulary),
            })
    return records


def aggregate(records: list[dict], kind: str, ddof: int) -> tuple[dict, list[str], list[dict]]:
    """Table cells from per-(run, set, method) records: ``(cells {(method, column): Summary}, columns, rows)``.

    base2novel (per protocol ``column``): "<column> base" / "<column> novel" = mean and std over runs of the top-1 of
    the run's "base" / "novel" set; "<column> HM" = HM of those two means (the paper's tables); each run's HM is kept as
    "<column> HM [run NAME]" and their mean as "<column> HM (mean of runs)". cross-dataset: per group column, mean and std over the group's
    (run, set) top-1 values. single: "top-1" and "top-5". ``rows`` is the same as flat dicts for summary.parquet.
    """
    from froster.pipeline.metrics import Summary, harmonic_mean, mean_std

    cells: dict[tuple[str, str], Summary] = {}
    columns: list[str] = []
    if kind == "single":
        columns = ["top-1", "top-5"]
        for rec in records:
            cells[(rec["method"], "top-1")] = Summary(rec["top1"], float("nan"), 1)
            cells[(rec["method"], "top-5")] = Summary(rec["top5"], float("nan"), 1)
    elif kind == "base2novel":
        for col in dict.fromkeys(r["column"] for r in records):
            columns += [f"{col} base", f"{col} novel", f"{col} HM"]
            for m in METHODS:
                per_run: dict[str, dict[str, float]] = {}
                for rec in records:
                    if rec["column"] == col and rec["method"] == m and rec["group"] in ("base", "novel"):
                        per_run.setdefault(rec["run"], {})[rec["group"]] = rec["top1"]
                b = mean_std([v["base"] for v in per_run.values() if "base" in v], ddof)
                n = mean_std([v["novel"] for v in per_run.values() if "novel" in v], ddof)
                cells[(m, f"{col} base")], cells[(m, f"{col} novel")] = b, n
                hm = harmonic_mean(b.mean, n.mean) if b.n and n.n and not (math.isnan(b.mean) or math.isnan(n.mean)) \
                    else float("nan")
                cells[(m, f"{col} HM")] = Summary(hm, float("nan"), min(b.n, n.n))
                runs_hm = {run: harmonic_mean(v["base"], v["novel"]) for run, v in per_run.items()
                           if "base" in v and "novel" in v and not math.isnan(v["base"] + v["novel"])}
                for run, hm_run in runs_hm.items():  # kept in summary.parquet, not in the table
                    cells[(m, f"{col} HM [run {run}]")] = Summary(hm_run, float("nan"), 1)
                cells[(m, f"{col} HM (mean of runs)")] = mean_std(list(runs_hm.values()), ddof)
    else:
        columns = list(dict.fromkeys(r["column"] for r in records))
        for col in columns:
            for m in METHODS:
                cells[(m, col)] = mean_std([r["top1"] for r in records if r["column"] == col and r["method"] == m],
                                           ddof)
    rows = [{"column": c, "method": m, "mean": s.mean, "std": s.std, "n": s.n, "ddof": ddof}
            for (m, c), s in cells.items()]
    return cells, columns, rows


def _table_markdown(kind: str, cells: dict, columns: list[str], records: list[dict], cards: list[dict],
                    ddof: int) -> str:
    from froster.pipeline import report
    from froster.pipeline.metrics import std_name

    if kind == "base2novel":
        datasets = [c[: -len(" base")] for c in columns if c.endswith(" base")]
        table = report.table1_markdown(cells, datasets)
        title = "Base-to-novel top-1 accuracy (%), the paper's Table 1"
    elif kind == "cross-dataset":
        table = report.table2_markdown(cells, columns)
        title = "Cross-dataset top-1 accuracy (%), the paper's Table 2"
    else:
        header = ["Method", "top-1", "top-5"]
        body = [[report.method_label(m)] + [report.format_cell(cells.get((m, c))) for c in ("top-1", "top-5")]
                for m in METHODS]
        table = report.markdown_table(header, body)
        title = "Top-1 / top-5 accuracy (%)"
    names = ", ".join(c["protocol"] or c["sets"][0]["store"] for c in cards)
    lines = [f"# froster evaluate: {names}", "", title, "", table, ""]
    if kind == "base2novel":
        for col in [c[: -len(" HM")] for c in columns if c.endswith(" HM")]:
            per = ", ".join(f"{report.method_label(m)} {report.format_cell(cells.get((m, f'{col} HM (mean of runs)')), 1, False)}"
                            for m in METHODS)
            lines.append(f"- {col}: HM = 2bn/(b+n) of the mean base and novel top-1 over runs; the mean of the "
                         f"per-run HMs: {per}.")
    if kind == "cross-dataset":
        lines.append(f"- {report.std_note(ddof)} A value without ± comes from one set (a full set, e.g. UCF*).")
    elif kind == "base2novel":
        lines.append(f"- Means over runs; their {std_name(ddof)} is in summary.parquet.")
    clips = "/".join(str(v) for v in sorted({s["clips"] for c in cards for s in c["sets"]}))
    frames = "/".join(str(v) for v in sorted({s["frames"] for c in cards for s in c["sets"]}))
    lines += [
        "- Frozen teacher: the stores' teacher features (not recomputed). Tuned model: the checkpoint below, "
        "distillation heads unused. Ensemble: the sum of the two models' cosine scores (the paper's Fig. 1; "
        "logit scales not applied).",
        f"- Scores: per clip the mean over its frames of cos(frame, class), summed over the {clips} test clips "
        f"(x 1 centre crop, {frames} frames each) of the stores; class embedding = normalised mean over the class's "
        "prompts of the normalised prompt embeddings.",
        "",
        "## Checkpoints",
        "",
    ]
    ckpts = {}
    for r in records:
        ckpts.setdefault((r["protocol"], r["run"]), (r["checkpoint"], r["checkpoint_kind"], r["checkpoint_epoch"]))
    for c in cards:
        if c["kind"] != "single":
            lines.append(f"- protocol {c['protocol']} ({c['file']}): checkpoint = {c['checkpoint']!r}")
    for (proto, run), (path, kind_, epoch) in ckpts.items():
        label = f"{proto} / {run}" if proto else run
        lines.append(f"- {label}: {path} ({kind_ or 'unknown'} checkpoint, epoch {epoch})")
    lines += ["", "## Evaluation sets", ""]
    header = ["run", "eval set", "group", "store", "classes", "evaluated", "failed (extraction + decode)",
              "teacher top-1/5", "tuned top-1/5", "ensemble top-1/5"]
    body = []
    seen = set()
    for r in records:
        key = (r["protocol"], r["run"], r["eval_set"])
        if key in seen:
            continue
        seen.add(key)
        acc = {m: next(x for x in records if (x["protocol"], x["run"], x["eval_set"]) == key and x["method"] == m)
               for m in METHODS}
        body.append([
            r["run"], r["eval_set"], r["group"], r["store"], str(r["classes"]), str(r["videos"]),
            f"{r['failed']} ({r['failed_extraction']} + {r['failed_decode']})",
            *[f"{acc[m]['top1']:.1f} / {acc[m]['top5']:.1f}" for m in METHODS],
        ])
    lines.append(report.markdown_table(header, body, left=4))
    return "\n".join(lines) + "\n"


def _predictions(units: list[_Unit], results: dict[int, _Scores]):
    import pyarrow as pa

    from froster.pipeline.metrics import topk_indices
    from froster.pipeline.report import predictions_table

    tables = []
    for i, u in enumerate(units):
        r, s = results[i], units[i].eval_set
        top_idx, top_sc = {}, {}
        for m in METHODS:
            idx = topk_indices(r.scores[m], TOPK)  # [n, k]
            top_idx[m] = idx
            top_sc[m] = np.take_along_axis(r.scores[m], idx, axis=1)
        t = predictions_table(s.video_ids, s.labels, s.vocabulary, r.evaluated, top_idx, top_sc,
                              extra={"protocol": u.protocol, "run": u.checkpoint.run, "eval_set": s.name})
        t = t.append_column("status", pa.array(r.status, pa.string()))
        tables.append(t)
    return pa.concat_tables(tables)


def _default_out(config: EvaluateConfig) -> Path:
    if config.cache is not None:
        name = Path(config.cache).name
        return Path("reports") / f"eval-{name[:-5] if name.endswith('.zarr') else name}"
    return Path("reports") / "+".join(Path(resolve_protocol_path(p)).stem for p in config.protocols)


def _jsonable(config: EvaluateConfig) -> dict:
    def conv(v):
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        return v

    return {k: conv(v) for k, v in asdict(config).items()}


def run(config: EvaluateConfig) -> Path:
    """Evaluate and write the result directory; returns its path (the CLI prints its table.md)."""
    import pyarrow as pa

    from froster.pipeline import report

    # validate inputs: protocols, stores, checkpoints (all before any model runs)
    units, cards = _protocol_units(config) if config.cache is None else _single_units(config)
    kind = units[0].kind
    ddof = units[0].ddof
    for c in cards:
        if c["kind"] != "single":
            log.info("protocol %s (%s, %s): %s checkpoint, groups %s, std ddof=%d", c["protocol"], c["file"], c["kind"],
                     c["checkpoint"], ", ".join(c["groups"]), c["ddof"])
        for run_name, ckpt in c["runs"].items():
            log.info("  run %s: %s", run_name, ckpt)
        for s in c["sets"]:
            log.info("  eval set %s (group %s): %d videos, %d classes, %d clips x %d frames, store %s", s["name"],
                     s["group"], s["videos"], s["classes"], s["clips"], s["frames"], s["store"])

    # one loop: every checkpoint over its stores
    results = _evaluate(units, config)

    # write outputs
    records = _unit_metrics(units, results)
    cells, columns, summary_rows = aggregate(records, kind, ddof)
    out = Path(config.out) if config.out is not None else _default_out(config)
    out.mkdir(parents=True, exist_ok=True)
    report.write_parquet(out / "predictions.parquet", _predictions(units, results))
    report.write_parquet(out / "metrics.parquet", pa.Table.from_pylist(records))
    report.write_parquet(out / "summary.parquet", pa.Table.from_pylist(summary_rows))
    text = _table_markdown(kind, cells, columns, records, cards, ddof)
    report.write_text(out / "table.md", text)
    chart_columns = columns if kind != "single" else ["top-1", "top-5"]
    report.bar_chart(out / "chart.png", cells, chart_columns, METHODS, title=text.splitlines()[2])
    resolved = {"config": _jsonable(config), "protocols": cards,
                "checkpoints": sorted({(r["run"], r["checkpoint"], r["checkpoint_kind"], r["checkpoint_epoch"])
                                       for r in records})}
    report.write_text(out / "config.json", json.dumps(resolved, indent=2, default=str) + "\n")
    log.info("results in %s", out)
    return out
