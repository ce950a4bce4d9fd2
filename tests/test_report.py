"""pipeline/report.py: the tables' shape and cells, the chart file, the predictions table."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from froster.pipeline import report
from froster.pipeline.metrics import Summary, mean_std


def test_format_cell():
    assert report.format_cell(Summary(74.2, float("nan"), 1)) == "74.2"
    assert report.format_cell(mean_std([73.2, 73.8, 74.4], ddof=1)) == "73.8 ± 0.6"
    assert report.format_cell(mean_std([73.2, 73.8, 74.4], ddof=1), show_std=False) == "73.8"
    assert report.format_cell(None) == "-"


def test_table1_shape():
    cells = {
        ("teacher", "K400 base"): Summary(62.3, float("nan"), 1),
        ("teacher", "K400 novel"): Summary(53.4, float("nan"), 1),
        ("teacher", "K400 HM"): Summary(57.5, float("nan"), 1),
        ("tuned", "K400 base"): Summary(77.8, 0.3, 3),
    }
    text = report.table1_markdown(cells, ["K400", "HMDB"])
    lines = text.splitlines()
    assert lines[0].split("|")[1].strip() == "Method"
    assert [c.strip() for c in lines[0].split("|")[2:-1]] == [
        "K400 base", "K400 novel", "K400 HM", "HMDB base", "HMDB novel", "HMDB HM"]
    assert len(lines) == 2 + 3  # header, rule, three methods
    teacher = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert teacher == ["Frozen teacher", "62.3", "53.4", "57.5", "-", "-", "-"]
    tuned = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert tuned[1] == "77.8"  # Table 1 prints means only
    assert lines[4].split("|")[1].strip().startswith("Ensemble")


def test_table2_shape():
    cells = {("teacher", "UCF"): mean_std([73.2, 73.8, 74.4], ddof=1), ("teacher", "UCF*"): Summary(74.2, float("nan"), 1)}
    lines = report.table2_markdown(cells, ["UCF*", "UCF"], methods=["teacher"]).splitlines()
    assert [c.strip() for c in lines[2].split("|")[1:-1]] == ["Frozen teacher", "74.2", "73.8 ± 0.6"]


def test_chart_and_text_are_written(tmp_path):
    cells = {("teacher", "UCF"): mean_std([73.2, 74.4]), ("tuned", "UCF"): Summary(80.0, float("nan"), 1)}
    png = report.bar_chart(tmp_path / "chart.png", cells, ["UCF", "HMDB"], title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))
    assert report.write_text(tmp_path / "a.md", "x\n").read_text() == "x\n"


def test_predictions_table(tmp_path):
    idx = np.array([[1, 0], [0, 1]])
    sc = np.array([[0.9, 0.1], [0.8, 0.2]])
    t = report.predictions_table(
        ["a", "b"], [1, 0], ["zero", "one"], [True, False], {"teacher": idx}, {"teacher": sc}, extra={"run": "r"})
    report.write_parquet(tmp_path / "p.parquet", t)
    back = pq.read_table(tmp_path / "p.parquet").to_pylist()
    assert back[0]["run"] == "r" and back[0]["class_name"] == "one"
    assert back[0]["teacher_top5"] == [1, 0] and back[0]["teacher_top5_names"] == ["one", "zero"]
    assert back[1]["evaluated"] is False and back[1]["teacher_top5"] is None
