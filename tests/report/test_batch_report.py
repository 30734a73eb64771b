"""``pipeline report OUTPUT_DIR``: index page + CSV over a run's reports, with outliers flagged."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import InputError, OutputExistsError
from pipeline.report.batch_report import batch_report, find_reports

NAMES = ("background", "liver", "spleen")


def volume_report(stem: str, dice: list[float | None], voxels: list[int]) -> dict[str, Any]:
    return {"model": "ct-organs", "input": {"path": f"/scans/{stem}.nii.gz"}, "reference": "ref.nii.gz",
            "labels": [{"label": i, "name": NAMES[i], "voxels": voxels[i], "volume_ml": voxels[i] * 0.027,
                        "reference_voxels": 10, "reference_volume_ml": 0.27, "dice": d,
                        "iou": None if d is None else d / 2}
                       for i, d in enumerate(dice)],
            "run": {"seconds_total": 3.5}}


def raster_report(stem: str) -> dict[str, Any]:
    return {"model": "buildings", "input": {"path": f"/scenes/{stem}.tif"}, "reference": None, "area_unit": "metre^2",
            "labels": [{"label": 0, "name": "background", "pixels": 900, "area": 225.0, "area_ha": 0.0225,
                        "dice": None, "iou": None},
                       {"label": 1, "name": "building", "pixels": 100, "area": 25.0, "area_ha": 0.0025,
                        "dice": None, "iou": None}],
            "run": {"seconds_total": 1.0}}


def write(path: Path, report: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    write(out / "ct" / "a_seg.report.json", volume_report("a", [0.99, 0.90, 0.80], [1000, 50, 40]))
    write(out / "ct" / "b_seg.report.json", volume_report("b", [0.98, 0.70, 0.20], [1000, 40, 30]))
    write(out / "ct" / "c_seg.report.json", volume_report("c", [0.97, 0.0, 0.0], [1000, 0, 0]))  # empty prediction
    (out / "ct" / "a_seg.report.html").write_text("<html></html>")
    write(out / "geo" / "s_seg.report.json", raster_report("s"))
    write(out / ".volseg-work-x" / "z_seg.report.json", volume_report("z", [0.0, 0.0, 0.0], [0, 0, 0]))  # ignored
    (out / "ct" / "broken.report.json").write_text("{not json")
    return out


def test_index_and_csv(run_dir: Path) -> None:
    summary = batch_report(run_dir, dice_threshold=0.5)
    assert summary.index == run_dir / "index.html"
    assert summary.csv == run_dir / "summary.csv"
    assert summary.reports == 4
    assert len(summary.unreadable) == 1
    assert "broken.report.json" in summary.unreadable[0]
    rows = list(csv.DictReader(summary.csv.open()))
    assert len(rows) == 3 * 3 + 2
    assert {r["report"] for r in rows} == {"ct/a_seg.report.json", "ct/b_seg.report.json", "ct/c_seg.report.json",
                                           "geo/s_seg.report.json"}
    building = next(r for r in rows if r["name"] == "building")
    assert (building["count"], building["size"], building["size_unit"], building["dice"]) == ("100", "0.0025", "ha", "")
    flagged = {(r["report"], r["name"]): r["flag"] for r in rows if r["flag"]}
    assert flagged[("ct/b_seg.report.json", "spleen")] == "Dice 0.200 < 0.5"
    assert "empty prediction" in flagged[("ct/c_seg.report.json", "liver")]
    assert ("ct/a_seg.report.json", "liver") not in flagged
    assert ("ct/a_seg.report.json", "background") not in flagged
    assert len(summary.outliers) == 4  # b spleen; c liver, spleen, empty
    html = summary.index.read_text()
    assert 'href="ct/a_seg.report.html"' in html
    assert 'href="ct/b_seg.report.json"' in html
    assert 'href="ct/b_seg.report.html"' not in html  # only pages that exist are linked
    liver = [0.90, 0.70, 0.0]
    mean, median = statistics.fmean(liver), statistics.median(liver)
    assert f"<td>{mean:.3f}</td><td>{median:.3f}</td><td>{min(liver):.3f}</td>" in html
    assert "z_seg" not in html  # reports in hidden work directories are not part of the run
    assert 'id="dice-strip"' in html


def test_threshold_changes_flags(run_dir: Path) -> None:
    summary = batch_report(run_dir, dice_threshold=0.85)
    assert "ct/a_seg.report.json: spleen Dice 0.800 < 0.85" in summary.outliers


def test_refuses_to_replace_and_empty_dirs(run_dir: Path, tmp_path: Path) -> None:
    batch_report(run_dir)
    with pytest.raises(OutputExistsError):
        batch_report(run_dir)
    batch_report(run_dir, overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no readable"):
        batch_report(empty)
    assert find_reports(empty) == []


def test_cli(run_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(run_dir), "--dice-threshold", "0.3"])
    assert result.exit_code == 0, result.output
    assert "4 reports, 4 flagged" in result.output  # b spleen (0.2); c liver, spleen (0.0) and empty
    again = runner.invoke(app, ["report", str(run_dir)])
    assert again.exit_code == 1
    assert again.stderr.strip().startswith("error: ")
    assert "--overwrite" in again.stderr
    missing = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 1
    assert "not a directory" in missing.stderr
