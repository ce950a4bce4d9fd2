"""``froster manifest``: annotations -> a probed manifest (Parquet), the input of every later stage.

Reads one of five annotation formats (headerless lists + a class-name file, the Kinetics CSV, UCF-101's official
lists, HMDB-51's official split files, a folder per class; see ``froster.pipeline.manifests``), then probes every video
(frames, fps, size; missing, empty and undecodable files keep their row with a status and reason). Writes the manifest
atomically and prints counts and the failing videos on stdout.

    froster manifest --format kinetics --annotations kinetics400/train.csv --split train \\
        --video-root /data/k400 --out manifests/k400_train.parquet
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from froster.pipeline.errors import ConfigError
from froster.pipeline.manifests import FORMATS, Manifest, build_manifest, probe_manifest, write_manifest
from froster.pipeline.video import STATUS_OK, STATUS_UNPROBED

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestConfig:
    format: str  # annotation format: lists | kinetics | ucf101 | hmdb51 | folders
    video_root: Path  # folder the manifest's relative paths start from
    out: Path  # the Parquet manifest to write, e.g. manifests/k400_train.parquet
    annotations: Path | None = None  # list file / Kinetics CSV / UCF-101 list folder / HMDB-51 split folder
    split: str | None = None  # ucf101/hmdb51: train1..test3|all; kinetics: a split-column value; lists/folders: a label
    classes: Path | None = None  # class-name file (txt/JSON/CSV): required for lists; otherwise fixes the class order
    prompt_names: Path | None = None  # class-name file overriding the derived prompt names, by label
    probe: bool = True  # probe every video (frames, fps, size, status); False leaves status "unprobed"
    workers: int = 8  # probing threads; decoding is I/O- and C-bound, so threads overlap well
    max_listed: int = 50  # failing videos listed on stdout (all are counted and kept in the manifest); 0 lists all

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, found {self.format!r}")
        if self.format != "folders" and self.annotations is None:
            raise ConfigError(f"--annotations: format {self.format!r} needs an annotation file or folder")
        if self.format == "lists" and self.classes is None:
            raise ConfigError("--classes: format 'lists' needs a class-name file (txt, JSON or CSV)")
        if self.format in ("ucf101", "hmdb51") and not self.split:
            raise ConfigError(f"--split: format {self.format!r} needs train1|test1|train2|test2|train3|test3|all")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"--workers: expected an integer >= 1, found {self.workers!r}")
        if isinstance(self.max_listed, bool) or not isinstance(self.max_listed, int) or self.max_listed < 0:
            raise ConfigError(f"--max-listed: expected an integer >= 0, found {self.max_listed!r}")
        if Path(self.out).suffix.lower() != ".parquet":
            raise ConfigError(f"--out: expected a .parquet file, found {str(self.out)!r}")


def summary(manifest: Manifest, path: Path, max_listed: int = 50) -> list[str]:
    """The lines printed after writing: counts per split and status, then the failing videos with their reason."""
    statuses = manifest.column("status")
    counts = manifest.status_counts()
    splits: dict[str, int] = {}
    for s in manifest.column("split"):
        splits[s] = splits.get(s, 0) + 1
    used = len(set(manifest.column("label")))
    lines = [
        f"manifest: {path}",
        f"videos: {len(manifest)}  classes: {len(manifest.classes)} ({used} with videos)  video root: "
        f"{manifest.video_root}",
        "splits: " + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())),
        "status: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
    ]
    failed = [i for i, s in enumerate(statuses) if s not in (STATUS_OK, STATUS_UNPROBED)]
    if failed:
        ids, reasons = manifest.column("video_id"), manifest.column("reason")
        shown = failed if max_listed == 0 else failed[:max_listed]
        lines.append(f"failing videos: {len(failed)} (kept in the manifest with their status and reason)")
        lines.extend(f"  {statuses[i]}\t{ids[i]}\t{reasons[i]}" for i in shown)
        if len(shown) < len(failed):
            lines.append(f"  ... and {len(failed) - len(shown)} more (--max-listed 0 lists all)")
    return lines


def run(config: ManifestConfig) -> Path:
    """Build, probe and write the manifest; print the summary on stdout. Returns the manifest's path."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    manifest = build_manifest(
        config.format,
        config.video_root,
        config.annotations,
        split=config.split,
        classes_file=config.classes,
        prompt_names_file=config.prompt_names,
    )
    log.info("%d videos of %d classes from %s", len(manifest), len(manifest.classes), manifest.source)
    if config.probe and len(manifest):
        columns = (TextColumn("probing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("probe", total=len(manifest))
            manifest = probe_manifest(manifest, config.workers, progress=lambda n: bar.update(task, completed=n))
    path = write_manifest(manifest, config.out)
    print("\n".join(summary(manifest, path, config.max_listed)))
    return path
