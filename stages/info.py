"""``froster info STORE``: what a feature store holds: counts, provenance, settings and the failed videos.

Reads a store written by ``froster extract-teacher`` (complete or still running / interrupted); writes nothing and
prints a report on stdout.

    froster info cache/k400.zarr
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from froster.pipeline.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InfoConfig:
    store: Path  # the store directory, e.g. cache/k400.zarr
    max_failures: int = 50  # failed videos listed one per line (all are counted); 0 lists none

    def __post_init__(self):
        if isinstance(self.max_failures, bool) or not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise ConfigError(f"--max-failures: expected an integer >= 0, found {self.max_failures!r}")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)) and value and all(isinstance(x, float) for x in value):
        return "(" + ", ".join(f"{x:.4g}" for x in value) + ")"
    return str(value)


def report(store, max_failures: int = 50) -> list[str]:
    """The report's lines for an open FeatureStore, listing at most ``max_failures`` failed videos."""
    a = store.attrs
    statuses = store.row_status()
    done = np.asarray(store.done[:])  # [N]
    by_status: dict[str, int] = {}
    for s in statuses:
        by_status[s["status"]] = by_status.get(s["status"], 0) + 1
    failed = [s for s in statuses if s["status"] not in ("ok", "unprobed")]
    lines = [f"store: {store.path}"]
    if store.complete:
        lines.append("state: complete")
    else:
        pending = store.pending_blocks()
        lines.append(
            f"state: incomplete: {store.num_blocks - len(pending)} of {store.num_blocks} row blocks written "
            "(rerun the same extract-teacher command to finish)"
        )
    fail_text = ", ".join(f"{k} {n}" for k, n in sorted(by_status.items()) if k not in ("ok", "unprobed"))
    lines.append(
        f"videos: {store.num_videos}  done: {int(done.sum())}  failed: {len(failed)}"
        + (f" ({fail_text})" if fail_text else "")
    )
    lines.append(
        f"arrays: video/features {list(store.video_features.shape)} {store.video_features.dtype}, "
        f"text/features {list(store.text_features.shape)} {store.text_features.dtype} "
        f"(P={store.text_features.shape[0]} prompts x C={store.text_features.shape[1]} classes), "
        f"block_rows {a.get('block_rows')}"
    )
    t = a.get("teacher") or {}
    lines.append("teacher: " + ", ".join(f"{k}={_fmt(v)}" for k, v in t.items() if v is not None))
    lines.append(
        "input: "
        + ", ".join(f"{k}={_fmt(a.get(k))}" for k in ("image_size", "mean", "std", "precision"))
    )
    lines.append(
        "views: "
        + ", ".join(f"{k}={_fmt(a.get(k))}" for k in ("view_mode", "views", "frames", "rate", "target_fps", "seed"))
    )
    d = a.get("descriptions")
    lines.append(
        f"prompts: {len(a.get('templates') or [])} templates + the bare prompt; descriptions: "
        + (f"{d['file']} (sha256 {d['sha256'][:12]})" if d else "none")
    )
    lines.append(f"resize: {a.get('resize_impl')}")
    lines.append(f"versions: froster {a.get('froster_version')}, decord {a.get('decord_version')}")
    m = a.get("manifest") or {}
    lines.append(f"manifest: {m.get('videos')} rows, sha256 {str(m.get('sha256'))[:12]}")
    if failed:
        ids = store.manifest.column("video_id")
        lines.append(f"failures ({len(failed)}):")
        for s in failed[:max_failures]:
            lines.append(f"  row {s['row']}  {ids[s['row']]}  {s['status']}: {s['reason']}")
        if len(failed) > max_failures:
            lines.append(f"  ... and {len(failed) - max_failures} more (--max-failures)")
    return lines


def run(config: InfoConfig) -> Path:
    """Print the report of ``config.store``."""
    from froster.pipeline.store import FeatureStore

    store = FeatureStore.open(config.store)
    lines = report(store, config.max_failures)
    print("\n".join(lines))
    return Path(config.store)
