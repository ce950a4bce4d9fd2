"""``froster protocol base2novel|cross-dataset``: manifests -> a protocol file (TOML) that train and evaluate read.

Reads the manifests written by ``froster manifest`` (and optional class-name files or video lists); writes one TOML
file naming the datasets, each run's training vocabulary and subset, each evaluation set, the checkpoint to evaluate
and the aggregation (format: ``froster.pipeline.protocols``, examples: docs/protocols.md); prints what it holds.

    froster protocol base2novel --train manifests/k400_train.parquet --test manifests/k400_val.parquet \\
        --out protocols/k400_base2novel.toml
    froster protocol cross-dataset --source manifests/k400_train.parquet \\
        --target ucf101=manifests/ucf101_test1.parquet,manifests/ucf101_test2.parquet,manifests/ucf101_test3.parquet \\
        --target ucf101-full=manifests/ucf101_all.parquet --novel-target k600=manifests/k600_test.parquet \\
        --out protocols/k400_cross.toml
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from froster.pipeline.errors import ConfigError
from froster.pipeline.protocols import KINDS, Protocol, build_base2novel, build_cross_dataset, write_protocol


@dataclass(frozen=True)
class ProtocolConfig:
    kind: str  # "base2novel" | "cross-dataset"
    out: Path  # the TOML file to write; paths inside it are relative to its folder
    name: str | None = None  # protocol name; default "<train or source manifest stem>-<kind>"
    # base2novel
    train: Path | None = None  # training manifest (e.g. K400 train); base/novel are derived from its class counts
    test: Path | None = None  # test manifest (e.g. K400 val) holding both the base and the novel test videos
    base_classes: Path | None = None  # class-name file of the base classes (with novel_classes); None: derived (A.1)
    novel_classes: Path | None = None  # class-name file of the novel classes (with base_classes)
    seeds: tuple[int, ...] = (1, 2, 3)  # one run per seed, each drawing `shots` videos per base class (paper: 1, 2, 3)
    shots: int = 16  # training videos per base class (the paper's 16-shot base training, A.1)
    train_lists: tuple[Path, ...] = ()  # video lists, one run each, instead of seeded subsets
    # cross-dataset
    source: Path | None = None  # training manifest (e.g. K400 train); one run on all its usable videos
    targets: tuple[tuple[str, tuple[Path, ...]], ...] = ()  # (group, manifests): e.g. ("ucf101", (test1, test2, test3))
    novel_targets: tuple[tuple[str, Path], ...] = ()  # (group, manifest) whose classes new to the source are subsampled
    novel_size: int = 160  # classes per new-class subset (the paper's K600: 160 of the 220 new classes)
    novel_seeds: tuple[int, ...] = (1, 2, 3)  # one subset per seed
    novel_lists: tuple[Path, ...] = ()  # class-name files, one subset each, instead of seeded subsets

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"kind: expected one of {', '.join(KINDS)}, found {self.kind!r}")
        if Path(self.out).suffix.lower() != ".toml":
            raise ConfigError(f"--out: expected a .toml file, found {str(self.out)!r}")
        if self.kind == "base2novel":
            if self.train is None or self.test is None:
                raise ConfigError("--train/--test: base2novel needs a training and a test manifest")
            if (self.base_classes is None) != (self.novel_classes is None):
                raise ConfigError("--base/--novel: expected both class files or neither (neither: derived)")
            if isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 1:
                raise ConfigError(f"--shots: expected an integer >= 1, found {self.shots!r}")
            if not self.train_lists and not self.seeds:
                raise ConfigError("--seeds: expected at least one seed (or --train-lists)")
        else:
            if self.source is None:
                raise ConfigError("--source: cross-dataset needs the training manifest")
            if not self.targets and not self.novel_targets:
                raise ConfigError("--target/--novel-target: expected at least one target")
            if isinstance(self.novel_size, bool) or not isinstance(self.novel_size, int) or self.novel_size < 1:
                raise ConfigError(f"--novel-size: expected an integer >= 1, found {self.novel_size!r}")
            if self.novel_lists and len(self.novel_targets) != 1:
                raise ConfigError(
                    f"--novel-lists: expected exactly one --novel-target, found {len(self.novel_targets)}"
                )


def summary(protocol: Protocol, path: Path) -> list[str]:
    """The lines printed after writing: runs and eval sets with their sizes."""
    lines = [f"protocol: {path} ({protocol.kind}, checkpoint {protocol.checkpoint})"]
    for r in protocol.runs:
        videos = "all usable videos" if r.train_video_ids is None else f"{len(r.train_video_ids)} videos"
        lines.append(f"run {r.name}: {len(r.vocabulary)} classes, {videos} of {r.dataset}")
    for e in protocol.eval_sets:
        flag = ", disjoint" if e.disjoint else ""
        lines.append(f"eval {e.name} [{e.group}]: {len(e.vocabulary)} classes of {e.dataset}{flag}")
    return lines


def run(config: ProtocolConfig) -> Path:
    """Build the protocol, write it, print its summary on stdout. Returns the file's path."""
    if config.kind == "base2novel":
        protocol = build_base2novel(
            config.train, config.test, base_file=config.base_classes, novel_file=config.novel_classes,
            seeds=config.seeds, shots=config.shots, train_lists=config.train_lists, name=config.name,
        )
    else:
        protocol = build_cross_dataset(
            config.source, config.targets, config.novel_targets, novel_size=config.novel_size,
            novel_seeds=config.novel_seeds, novel_lists=config.novel_lists, name=config.name,
        )
    path = write_protocol(protocol, config.out)
    print("\n".join(summary(protocol, path)))
    return path
