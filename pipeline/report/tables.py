"""The per-volume report: JSON (complete) + CSV (one row per label), written atomically."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from pipeline.config.cards import Label
from pipeline.evaluate.metrics import Scores
from pipeline.io.atomic import atomic_path
from pipeline.io.outputs import report_csv_path

CSV_FIELDS = ("label", "name", "voxels", "volume_ml", "reference_voxels", "reference_volume_ml", "dice", "iou")


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def label_rows(scores: Scores, labels: dict[int, Label], unit_volume: float, *, has_reference: bool,
               count_key: str = "voxels", size_key: str = "volume_ml") -> list[dict[str, Any]]:
    """One row per label; ``unit_volume`` is ml per voxel (or area per pixel for rasters).

    ``count_key`` and ``size_key`` name the count and size columns (``pixels`` and ``area`` for rasters).
    """
    rows = []
    for item in scores.labels:
        rows.append({
            "label": item.label,
            "name": labels[item.label].name if item.label in labels else f"label_{item.label}",
            count_key: item.predicted,
            size_key: _round(item.predicted * unit_volume),
            f"reference_{count_key}": item.reference if has_reference else None,
            f"reference_{size_key}": _round(item.reference * unit_volume) if has_reference else None,
            "dice": _round(item.dice) if has_reference else None,
            "iou": _round(item.iou) if has_reference else None,
        })
    return rows


def write_report(report: dict[str, Any], json_path: Path) -> Path:
    """Write ``report`` as JSON at ``json_path`` and its label table as CSV beside it; returns the CSV path.

    The CSV columns are the keys of the label rows (:data:`CSV_FIELDS` for volumes).
    """
    csv_path = report_csv_path(json_path)
    buffer = io.StringIO()
    fields = list(report["labels"][0]) if report["labels"] else list(CSV_FIELDS)
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(report["labels"])
    with atomic_path(csv_path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return csv_path
