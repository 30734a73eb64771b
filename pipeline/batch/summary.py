"""A run's results as a table and a short markdown report (the flow's artifacts)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.batch.jobs import Plan, ScanOutcome, ScanStatus

#: Columns of the per-run table: one row per scan and label (one row per scan without labels).
#: Volumes report ``volume_ml``, rasters ``area_ha`` (None when the scene's CRS has no metric unit).
TABLE_COLUMNS = ("scan", "source", "status", "label", "dice", "iou", "volume_ml", "area_ha", "seconds", "output",
                 "reason")


def table_rows(outcomes: Iterable[ScanOutcome]) -> list[dict[str, Any]]:
    """The run's results as flat rows, for a table artifact or a CSV."""
    rows = []
    for outcome in outcomes:
        base = {"scan": outcome.scan, "source": outcome.source, "status": str(outcome.status),
                "seconds": outcome.seconds, "output": outcome.output, "reason": outcome.reason}
        for label in outcome.labels or ({},):
            measured = {"label": label.get("name"), "dice": label.get("dice"), "iou": label.get("iou"),
                        "volume_ml": label.get("volume_ml"), "area_ha": label.get("area_ha")}
            row = {**base, **measured}
            rows.append({key: row[key] for key in TABLE_COLUMNS})
    return rows


def markdown_summary(outcomes: Iterable[ScanOutcome], plan: Plan) -> str:
    """A short markdown report: counts, then one line per scan with links to its report files."""
    outcomes = list(outcomes)
    counts = {status: sum(o.status is status for o in outcomes) for status in ScanStatus}
    lines = [f"# segment-new-scans: {counts[ScanStatus.DONE]} done, "
             f"{counts[ScanStatus.FAILED] + counts[ScanStatus.FAILED_BEFORE]} failed, "
             f"{counts[ScanStatus.RETRY]} left for storage trouble (retried next run), "
             f"{counts[ScanStatus.BUSY]} busy, {plan.up_to_date + counts[ScanStatus.UP_TO_DATE]} up to date", ""]
    for o in outcomes:
        if o.status is ScanStatus.DONE:
            reports = [Path(p) for p in (o.report_json, o.report_csv) if p]
            links = ", ".join(f"[{p.name}]({p.resolve().as_uri()})" for p in reports)
            lines.append(f"- `{o.scan}`: **done** in {o.seconds:.1f} s -> `{o.output}`; report: {links}")
        else:
            lines.append(f"- `{o.scan}`: **{o.status}**: {o.reason}")
    if not outcomes:
        lines.append("Nothing to do: every scan is up to date.")
    return "\n".join(lines) + "\n"
