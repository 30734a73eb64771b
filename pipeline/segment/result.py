"""What a run returns and reports: :class:`SegmentationResult` and the report's shared sections.

The domain adapters supply the ``input`` section, the label rows (units differ: ml for volumes,
map units for rasters) and extra keys; everything else is built here once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.evaluate.metrics import scores
from pipeline.segment.resources import peak_rss_bytes
from pipeline.segment.stages import Stages, describe
from pipeline.version import code_version

if TYPE_CHECKING:
    import numpy as np

    from pipeline.engine.infer import InferenceResult
    from pipeline.model.models import Model
    from pipeline.segment.domain import Source


@dataclass(frozen=True)
class SegmentationResult:
    """Where the outputs went, and the report that was written."""

    mask: Path
    report_json: Path
    report_csv: Path
    probabilities: Path | None
    report: dict[str, Any]
    vectors: Path | None = None
    html: Path | None = None
    viewer_files: tuple[Path, ...] = ()
    ome_zarr: Path | None = None

    def summary(self) -> str:
        run = self.report["run"]
        unit = "Mpx/s" if "pixel_area" in self.report else "Mvox/s"  # rasters report pixels, volumes voxels
        stages = f"; {describe(run['stages'])}" if run.get("stages") else ""
        return (f"{self.mask}: {run['seconds_total']:.1f} s, {run['mvox_per_s']:.2f} {unit}, "
                f"peak RSS {run['peak_rss_mb']:.0f} MB (driver + workers), {run['windows']} windows, "
                f"backend {run.get('backend', 'torch')}{stages}")


def run_facts(result: InferenceResult, *, started: float, elements: int, workers_rss: int,
              stages: Stages | None = None) -> dict[str, Any]:
    """The report's ``run`` section: timing (per stage too), throughput (voxels or pixels), windows, blocks,
    the inference backend, peak RSS, code."""
    seconds = time.perf_counter() - started
    return {
        "seconds_total": round(seconds, 3),
        "seconds_inference": round(result.seconds, 3),
        "stages": stages.facts() if stages else {},
        "backend": result.backend,
        "spill_peak_mb": round(result.spill_bytes_peak / 2**20, 1),
        "mvox_per_s": round(elements / 1e6 / seconds, 4),
        "windows": result.windows,
        "blocks": result.blocks,
        "blocks_resumed": result.blocks_resumed,
        "block_tasks_at_once": result.tasks_at_once,
        "chunks": list(result.chunks),
        "peak_rss_mb": round((peak_rss_bytes() + workers_rss) / 2**20, 1),
        "code_version": code_version(),
    }


@dataclass(frozen=True)
class RunRecord:
    """The facts of one finished inference that the report is built from."""

    sha256: str
    mask: Path
    reference: Any  #: the reference as the caller named it (a path), or None
    result: InferenceResult
    valid_pixels: int | None
    started: float
    workers_rss: int
    stages: Stages


def build_report(source: Source, model: Model, record: RunRecord, matrix: np.ndarray,
                 extras: dict[str, Any]) -> dict[str, Any]:
    """The complete JSON report of one run (CSV rows are its ``labels``)."""
    has_reference = bool(record.reference)
    measured = scores(matrix)
    return {
        "model": model.name,
        "model_sha256": model.sha256,
        "input": source.report_input(record.sha256, record.valid_pixels),
        "output": str(record.mask),
        **extras,
        "reference": str(record.reference) if has_reference else None,
        "labels": source.label_rows(measured, model, has_reference=has_reference),
        "pixel_accuracy": measured.pixel_accuracy if has_reference else None,
        "mean_pixel_accuracy": measured.mean_pixel_accuracy if has_reference else None,
        "confusion_matrix": matrix.tolist() if has_reference else None,
        "run": run_facts(record.result, started=record.started, elements=math.prod(source.geometry.shape),
                         workers_rss=record.workers_rss, stages=record.stages),
    }
