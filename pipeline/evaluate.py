"""Compare label masks on one grid, streaming slab by slab along the last axis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.geometry import VolumeGeometry
from pipeline.io.nifti import iter_slabs, open_scan, read_reference
from pipeline.metrics import MAX_LABEL, PairCounts, pair_counts, scores
from pipeline.outputs import check_outputs, created_parents, report_outputs
from pipeline.report import label_rows, write_report

#: Slices per slab when streaming masks (uint8 masks: a 512 x 512 plane x 16 = 4 MiB).
SLAB = 16

SlabReader = Callable[[slice], np.ndarray]


def _as_labels(path: Path, slab: np.ndarray) -> np.ndarray:
    if slab.dtype.kind == "f":
        slab = np.rint(slab)
    if slab.size and slab.min() < 0:
        raise InputError(f"{path}: negative values in a label mask")
    if slab.size and slab.max() > MAX_LABEL:
        raise InputError(f"{path}: label value {slab.max():.0f} in a label mask; labels go up to {MAX_LABEL} "
                         "(2^32 - 1)")
    return slab.astype(np.int64, copy=False)


def confusion_against(reference: str | Path, geometry: VolumeGeometry, predicted: SlabReader, *,
                      n_labels: int | None = None) -> PairCounts:
    """Counts of (reference, prediction) pairs of a reference NIfTI (on ``geometry``'s grid) against
    ``predicted(k_slice)`` slabs; ``.dense(n)`` gives the matrix.

    With ``n_labels`` reference values >= n_labels are an :class:`InputError`; without, any label
    up to :data:`~pipeline.metrics.MAX_LABEL` is counted, in memory for the pairs that occur only.
    """
    ref = read_reference(reference, geometry)
    total = PairCounts.empty()
    for k, slab in iter_slabs(ref, SLAB):
        truth = _as_labels(ref.path, slab)
        pred = np.asarray(predicted(k)).astype(np.int64)
        if n_labels is not None and truth.size and truth.max() >= n_labels:
            raise InputError(f"{ref.path}: reference has label {int(truth.max())} (slices k={k.start}..{k.stop - 1}), "
                             f"but the model only predicts 0..{n_labels - 1}")
        total = total + pair_counts(truth, pred)
    return total


def check_reference_labels(reference: str | Path, geometry: VolumeGeometry, n_labels: int) -> None:
    """Fail early (before inference) when a reference is off-grid or holds labels the model cannot predict."""
    confusion_against(reference, geometry, lambda k: np.zeros((*geometry.shape[:2], k.stop - k.start), np.int64),
                      n_labels=n_labels)


def evaluate_report(prediction: str | Path, reference: str | Path, *, output: Path | None = None,
                    overwrite: bool = False) -> dict[str, Any]:
    """Scores of two NIfTI label masks, in the same layout as ``segment_volume``'s report (no run facts)."""
    writes = report_outputs(Path(output)) if output is not None else []
    check_outputs(writes, [prediction, reference], overwrite=overwrite)
    pred = open_scan(prediction)
    slabs = iter_slabs(pred, SLAB)  # read along with the reference's slabs, in the same order
    counts = confusion_against(reference, pred.geometry, lambda k: _as_labels(pred.path, next(slabs)[1]))
    next(slabs, None)  # the end of the stream: a .nii.gz's checksum is verified there
    measured = scores(counts)
    report = {
        "prediction": str(prediction),
        "reference": str(reference),
        "labels": label_rows(measured, {}, pred.geometry.voxel_volume_ml, has_reference=True),
        "pixel_accuracy": measured.pixel_accuracy,
        "mean_pixel_accuracy": measured.mean_pixel_accuracy,
    }
    if output is not None:
        with created_parents(writes):
            write_report(report, Path(output))
    return report
