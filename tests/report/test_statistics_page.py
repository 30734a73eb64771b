"""The HTML page and the CSV show the --statistics table."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.cards import Label
from pipeline.report.html_report import volume_report
from pipeline.evaluate.label_statistics import add_to_label_rows, volume_statistics
from pipeline.report.tables import write_report
from tests.report.conftest import CT_REF


def test_page_and_csv_show_statistics(ct_case: dict[str, Any], ct_labels: dict[int, Label], tmp_path: Path) -> None:
    scan, group = ct_case["scan"], ct_case["group"]
    section = volume_statistics(group, ct_labels, len(ct_labels), scan.geometry.voxel_volume_ml)
    report = json.loads(json.dumps(ct_case["report"]))
    report["statistics"] = section
    add_to_label_rows(report["labels"], section)
    page = volume_report(report, group, ct_labels, geometry=scan.geometry, window=(-1000, 1000), reference=CT_REF,
                         path=tmp_path / "r.report.html").read_text()
    assert 'id="statistics"' in page and "bin width 1 (exact values)" in page
    image, prediction = np.asarray(group["image"][0]), ct_case["prediction"]
    liver = image[prediction == 1].astype(np.float64)
    assert f"<td>{liver.mean():.1f}</td>" in page
    assert f"<td>{np.percentile(liver, 95):.1f}</td>" in page
    write_report(report, tmp_path / "r.report.json")
    rows = list(csv.DictReader((tmp_path / "r.report.csv").open()))
    assert float(rows[1]["median"]) == np.percentile(liver, 50)
    assert rows[2]["mean"] == ""  # spleen: missed by the degraded prediction, so no values inside it


def test_page_without_statistics_has_no_table(ct_case: dict[str, Any], ct_labels: dict[int, Label],
                                              tmp_path: Path) -> None:
    scan = ct_case["scan"]
    page = volume_report(ct_case["report"], ct_case["group"], ct_labels, geometry=scan.geometry, window=None,
                         reference=CT_REF, path=tmp_path / "r.html").read_text()
    assert 'id="statistics"' not in page
