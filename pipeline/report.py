"""Reports people read: Markdown tables shaped like the paper's Table 1 (base / novel / HM per dataset) and Table 2
(mean +- std per target), a PNG bar chart of the same numbers, and the per-video predictions as Parquet.

Tables take ``cells``: a mapping from (method, column) to a ``metrics.Summary`` (mean, std, n) of top-1 accuracy in
percent. The caller aggregates; this module only formats and writes (atomically: a temporary file, then
``os.replace``).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from froster.pipeline.metrics import Summary, std_name

log = logging.getLogger(__name__)

# Method keys used in metrics and predictions, and how tables name them (the paper's Fig. 1 rows).
METHOD_LABELS = {
    "teacher": "Frozen teacher",
    "tuned": "Tuned model",
    "ensemble": "Ensemble (teacher + tuned)",
}
METHODS = tuple(METHOD_LABELS)


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + ".tmp")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    path = Path(path)
    tmp = _atomic_target(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


# ---- Markdown ----


def format_cell(s: Summary | None, digits: int = 1, show_std: bool = True) -> str:
    """"74.2" for one value, "73.8 ± 0.6" for several (with ``show_std``), "-" when there is nothing."""
    if s is None or s.n == 0 or math.isnan(s.mean):
        return "-"
    text = f"{s.mean:.{digits}f}"
    if show_std and s.n > 1 and not math.isnan(s.std):
        text += f" ± {s.std:.{digits}f}"
    return text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A GitHub-flavoured Markdown table, columns padded to one width; the first ``left`` columns (names)
    left-aligned, the others (numbers) right-aligned."""
    widths = [max(3, len(h)) for h in header]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {list(row)} has {len(row)} cells, header has {len(header)}")
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i < left else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = [":" + "-" * (w - 1) if i < left else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
    return "\n".join([line(header), "| " + " | ".join(rule) + " |", *(line(r) for r in rows)])


def table1_markdown(
    cells: Mapping[tuple[str, str], Summary],
    datasets: Sequence[str],
    methods: Sequence[str] = METHODS,
    digits: int = 1,
    show_std: bool = False,
) -> str:
    """The paper's Table 1 (base-to-novel): one row per method, and per dataset the columns base, novel and HM.

    ``cells`` maps (method, "<dataset> base" | "<dataset> novel" | "<dataset> HM") to a Summary over runs. The paper
    prints the means only; ``show_std`` adds "± std" where there are several runs.
    """
    header = ["Method"]
    for d in datasets:
        header += [f"{d} base", f"{d} novel", f"{d} HM"]
    rows = []
    for m in methods:
        row = [method_label(m)]
        for col in header[1:]:
            row.append(format_cell(cells.get((m, col)), digits, show_std))
        rows.append(row)
    return markdown_table(header, rows)


def table2_markdown(
    cells: Mapping[tuple[str, str], Summary],
    targets: Sequence[str],
    methods: Sequence[str] = METHODS,
    digits: int = 1,
) -> str:
    """The paper's Table 2 (cross-dataset): one row per method, one column per target; a target evaluated over
    several splits shows "mean ± std", a full-set target (the paper's UCF*, HMDB*) one number."""
    header = ["Method", *targets]
    rows = [[method_label(m)] + [format_cell(cells.get((m, t)), digits, True) for t in targets] for m in methods]
    return markdown_table(header, rows)


# ---- chart ----


def bar_chart(
    path: str | os.PathLike,
    cells: Mapping[tuple[str, str], Summary],
    columns: Sequence[str],
    methods: Sequence[str] = METHODS,
    title: str = "",
    ylabel: str = "top-1 accuracy (%)",
) -> Path:
    """A grouped bar chart as PNG: one group per column, one bar per method, error bars where a std exists."""
    import matplotlib

    matplotlib.use("Agg")  # no display; the CLI may run on a headless machine
    import matplotlib.pyplot as plt

    path = Path(path)
    x = np.arange(len(columns), dtype=np.float64)
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(columns) + 2.0), 3.6), dpi=120)
    try:
        for i, m in enumerate(methods):
            means, errs = [], []
            for c in columns:
                s = cells.get((m, c))
                means.append(s.mean if s is not None and s.n else np.nan)
                errs.append(s.std if s is not None and s.n > 1 and not math.isnan(s.std) else 0.0)
            offset = (i - (len(methods) - 1) / 2) * width
            bars = ax.bar(x + offset, np.nan_to_num(means), width, yerr=errs, capsize=2, label=method_label(m))
            for rect, v in zip(bars, means):
                if not math.isnan(v):
                    ax.annotate(f"{v:.1f}", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                                ha="center", va="bottom", fontsize=6)
        ax.set_xticks(x)
        ax.set_xticklabels(columns, rotation=30 if len(columns) > 4 else 0, ha="right" if len(columns) > 4 else "center")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 105)
        if title:
            ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        tmp = _atomic_target(path)
        fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    os.replace(tmp, path)
    return path


# ---- Parquet ----


def write_parquet(path: str | os.PathLike, table) -> Path:
    """Write a pyarrow Table atomically."""
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = _atomic_target(path)
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def predictions_table(
    video_ids: Sequence[str],
    labels: Sequence[int],
    class_names: Sequence[str],
    evaluated: Sequence[bool],
    top_indices: Mapping[str, np.ndarray],
    top_scores: Mapping[str, np.ndarray],
    extra: Mapping[str, object] | None = None,
):
    """Per-video predictions as a pyarrow Table, one row per video.

    Columns: the ``extra`` constant columns first (e.g. run, eval_set), then ``video_id``, ``label`` (int32, index in
    the set's vocabulary), ``class_name`` (the true class), ``evaluated`` (False for failed videos, whose predictions
    are null), and per method m in ``top_indices``: ``m_top5`` (list<int32>, best first), ``m_top5_names``
    (list<string>) and ``m_top5_scores`` (list<float32>). ``top_indices[m]`` / ``top_scores[m]`` are [N, k] arrays
    over all N videos (rows of failed videos are ignored).
    """
    import pyarrow as pa

    n = len(video_ids)
    if len(labels) != n or len(evaluated) != n:
        raise ValueError(f"{n} video ids but {len(labels)} labels and {len(evaluated)} evaluated flags")
    cols: dict[str, pa.Array] = {}
    for key, value in (extra or {}).items():
        cols[key] = pa.array([value] * n)
    cols["video_id"] = pa.array(list(video_ids), pa.string())
    cols["label"] = pa.array(np.asarray(labels, dtype=np.int32))
    cols["class_name"] = pa.array([class_names[int(i)] for i in labels], pa.string())
    ok = [bool(e) for e in evaluated]
    cols["evaluated"] = pa.array(ok, pa.bool_())
    for m, idx in top_indices.items():
        idx = np.asarray(idx)
        sc = np.asarray(top_scores[m])
        if idx.shape[0] != n or sc.shape != idx.shape:
            raise ValueError(f"method {m}: indices {idx.shape} and scores {sc.shape} for {n} videos")
        cols[f"{m}_top5"] = pa.array(
            [idx[i].astype(np.int32).tolist() if ok[i] else None for i in range(n)], pa.list_(pa.int32()))
        cols[f"{m}_top5_names"] = pa.array(
            [[class_names[int(j)] for j in idx[i]] if ok[i] else None for i in range(n)], pa.list_(pa.string()))
        cols[f"{m}_top5_scores"] = pa.array(
            [sc[i].astype(np.float32).tolist() if ok[i] else None for i in range(n)], pa.list_(pa.float32()))
    return pa.table(cols)


def std_note(ddof: int) -> str:
    """The sentence every table with "±" carries."""
    return f"± is the {std_name(ddof)} over splits."
