"""``pipeline report OUTPUT_DIR``: one index page + CSV over every report of a run, outliers flagged.

Reads the ``*.report.json`` files a run left (recursively, skipping hidden work directories), so it
works the same for a CLI batch, a Prefect flow's ``out/<source>/`` tree or a mix of volumes and
rasters. Nothing is recomputed from the masks: the JSON reports are the source of truth.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import InputError, InputNotFoundError
from pipeline.io.atomic import atomic_path, check_output
from pipeline.report.charts import figure_uri
from pipeline.report.html_report import render_page, write_html

logger = logging.getLogger(__name__)

INDEX_NAME = "index.html"
CSV_NAME = "summary.csv"
CSV_FIELDS = ("report", "input", "model", "kind", "label", "name", "count", "size", "size_unit", "reference_count",
              "dice", "iou", "flag")


@dataclass(frozen=True)
class Entry:
    """One report: where it is, what it says, and its HTML page if one was written."""

    path: Path
    report: dict[str, Any]
    html: Path | None

    @property
    def kind(self) -> str:
        return "raster" if any("pixels" in row for row in self.report["labels"]) else "volume"

    @property
    def name(self) -> str:
        source = self.report.get("input", {}).get("path") if isinstance(self.report.get("input"), dict) else None
        return Path(source).name if source else self.path.name.removesuffix(".report.json")


@dataclass(frozen=True)
class BatchSummary:
    """What ``pipeline report`` wrote."""

    index: Path
    csv: Path
    reports: int
    outliers: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def find_reports(root: Path) -> list[Path]:
    """Every ``*.report.json`` under ``root``, sorted, outside hidden (work / partial) directories."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found += [Path(directory) / f for f in files if f.endswith(".report.json") and not f.startswith(".")]
    return sorted(found)


def load_entry(path: Path) -> Entry:
    """Read one report; :class:`InputError` if it is not a volseg report."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable JSON report ({e})") from e
    if not isinstance(report, dict) or not isinstance(report.get("labels"), list):
        raise InputError(f"{path}: not a volseg report (no 'labels' list)")
    html = path.with_name(path.name.removesuffix(".report.json") + ".report.html")
    return Entry(path=path, report=report, html=html if html.is_file() else None)


def _count(row: Mapping[str, Any]) -> tuple[int | None, int | None]:
    key = "pixels" if "pixels" in row else "voxels"
    return row.get(key), row.get(f"reference_{key}")


def _size(row: Mapping[str, Any], report: Mapping[str, Any]) -> tuple[float | None, str]:
    if "volume_ml" in row:
        return row["volume_ml"], "ml"
    if row.get("area_ha") is not None:
        return row["area_ha"], "ha"
    return row.get("area"), str(report.get("area_unit", "px"))


def flags(entry: Entry, threshold: float) -> dict[int | None, str]:
    """Outliers of one report: label -> reason (``None`` key: the whole prediction is empty)."""
    found: dict[int | None, str] = {}
    rows = entry.report["labels"]
    foreground = [row for row in rows if row["label"] != 0]
    if foreground and all(not _count(row)[0] for row in foreground):
        found[None] = "empty prediction (no foreground voxel/pixel)"
    for row in foreground:
        if row.get("dice") is not None and row["dice"] < threshold:
            found[row["label"]] = f"Dice {row['dice']:.3f} < {threshold:g}"
    return found


def summary_rows(entries: Iterable[Entry], threshold: float, root: Path) -> list[dict[str, Any]]:
    """One CSV row per report and label."""
    out = []
    for entry in entries:
        flagged = flags(entry, threshold)
        for row in entry.report["labels"]:
            count, reference = _count(row)
            size, unit = _size(row, entry.report)
            out.append({"report": str(entry.path.relative_to(root)), "input": entry.name,
                        "model": entry.report.get("model"), "kind": entry.kind, "label": row["label"],
                        "name": row.get("name"), "count": count, "size": size, "size_unit": unit,
                        "reference_count": reference, "dice": row.get("dice"), "iou": row.get("iou"),
                        "flag": "; ".join(filter(None, (flagged.get(row["label"]),
                                                        flagged.get(None) if row["label"] != 0 else None)))})
    return out


def label_stats(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, label): how many reports scored it, mean / median / min Dice and IoU."""
    groups: dict[tuple[str, int, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(str(row["model"]), int(row["label"]), str(row["name"]))].append(row)
    stats = []
    for (model, label, name), members in sorted(groups.items()):
        dice = [r["dice"] for r in members if r["dice"] is not None]
        iou = [r["iou"] for r in members if r["iou"] is not None]
        stats.append({"model": model, "label": label, "name": name, "reports": len(members), "scored": len(dice),
                      "dice_mean": statistics.fmean(dice) if dice else None,
                      "dice_median": statistics.median(dice) if dice else None,
                      "dice_min": min(dice) if dice else None,
                      "iou_mean": statistics.fmean(iou) if iou else None})
    return stats


def dice_strip_chart(rows: Sequence[Mapping[str, Any]], threshold: float) -> str | None:
    """Dice of every report per label (one dot each), with the outlier threshold as a line."""
    scored = [r for r in rows if r["dice"] is not None and r["label"] != 0]
    if not scored:
        return None
    import numpy as np
    from matplotlib.figure import Figure

    names = sorted({f"{r['model']}: {r['name']}" for r in scored})
    fig = Figure(figsize=(6, 0.35 * len(names) + 0.9))
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for y, name in enumerate(names):
        values = [r["dice"] for r in scored if f"{r['model']}: {r['name']}" == name]
        ax.scatter(values, y + rng.uniform(-0.15, 0.15, len(values)), s=14, color="tab:blue", alpha=0.7)
        ax.plot([statistics.median(values)] * 2, [y - 0.3, y + 0.3], color="black", linewidth=2)
    ax.axvline(threshold, color="tab:red", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlim(-0.02, 1.02)
    ax.invert_yaxis()
    ax.set_xlabel("Dice (dots: reports, bar: median, dashed: threshold)")
    fig.subplots_adjust(left=0.35, right=0.97, bottom=0.5 / fig.get_figheight() + 0.05, top=0.97)
    return figure_uri(fig)


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def batch_report(output_dir: str | os.PathLike[str], *, dice_threshold: float = 0.5,
                 overwrite: bool = False) -> BatchSummary:
    """Write ``index.html`` and ``summary.csv`` in ``output_dir`` over every report below it.

    Raises
    ------
    InputNotFoundError
        ``output_dir`` is not a directory.
    InputError
        No readable report below it.
    OutputExistsError
        ``index.html`` / ``summary.csv`` exist and ``overwrite`` is False.
    """
    root = Path(output_dir)
    if not root.is_dir():
        raise InputNotFoundError(f"{root}: not a directory")
    index, table = root / INDEX_NAME, root / CSV_NAME
    for path in (index, table):
        check_output(path, overwrite=overwrite)
    entries, unreadable = [], []
    for path in find_reports(root):
        try:
            entries.append(load_entry(path))
        except InputError as e:
            logger.warning("%s", e)
            unreadable.append(str(e))
    if not entries:
        raise InputError(f"{root}: no readable *.report.json below it")
    rows = summary_rows(entries, dice_threshold, root)
    outliers = [f"{e.path.relative_to(root)}: "
                + (reason if label is None else f"{_label_name(e, label)} {reason}")
                for e in entries for label, reason in flags(e, dice_threshold).items()]
    volumes = [{"entry": e, "rel": e.path.relative_to(root).as_posix(),
                "html": e.html.relative_to(root).as_posix() if e.html else None,
                "flags": flags(e, dice_threshold)} for e in entries]
    text = render_page("summary.html.j2", root=str(root), volumes=volumes, stats=label_stats(rows),
                       outliers=outliers, unreadable=unreadable, threshold=dice_threshold,
                       chart=dice_strip_chart(rows, dice_threshold))
    with atomic_path(table) as tmp:
        tmp.write_text(_csv_text(rows), encoding="utf-8")
    write_html(index, text)
    return BatchSummary(index=index, csv=table, reports=len(entries), outliers=outliers, unreadable=unreadable)


def _label_name(entry: Entry, label: int) -> str:
    return next((str(r.get("name")) for r in entry.report["labels"] if r["label"] == label), str(label))
