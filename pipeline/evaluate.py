"""Compare two label masks on the same grid, streaming slab by slab."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.io.atomic import check_output
from pipeline.io.nifti import iter_slabs, open_scan, read_reference
from pipeline.metrics import confusion, scores
from pipeline.report import label_rows, write_report


def _as_labels(path: Path, slab: np.ndarray) -> np.ndarray:
    if slab.dtype.kind == "f":
        slab = np.rint(slab)
    if slab.size and slab.min() < 0:
        raise InputError(f"{path}: negative values in a label mask")
    return slab.astype(np.int64, copy=False)


def add_confusion(total: np.ndarray, part: np.ndarray) -> np.ndarray:
    """Sum two confusion matrices of possibly different sizes."""
    size = max(total.shape[0], part.shape[0])
    out = np.zeros((size, size), dtype=np.int64)
    out[: total.shape[0], : total.shape[0]] += total
    out[: part.shape[0], : part.shape[0]] += part
    return out


def confusion_nifti(prediction: Any, reference: str | Path, geometry: Any, *, n_labels: int | None = None) -> np.ndarray:
    """Confusion matrix of ``prediction`` ((i, j, k) array-like) against a reference NIfTI on ``geometry``.

    With ``n_labels``, reference values >= n_labels are an error (the model cannot predict them).
    """
    ref = read_reference(reference, geometry)
    total = np.zeros((n_labels or 1,) * 2, dtype=np.int64)
    thickness = prediction.chunks[-1] if hasattr(prediction, "chunks") and isinstance(prediction.chunks[-1], int) else 16
    for k, slab in iter_slabs(ref, thickness):
        truth = _as_labels(ref.path, slab)
        pred = np.asarray(prediction[:, :, k]).astype(np.int64)
        if n_labels is not None and truth.size and truth.max() >= n_labels:
            raise InputError(f"{ref.path}: reference has label {int(truth.max())}, but the model only predicts 0..{n_labels - 1}")
        size = n_labels or int(max(truth.max(initial=0), pred.max(initial=0))) + 1
        total = add_confusion(total, confusion(truth, pred, size))
    return total


def evaluate_masks(prediction: str | Path, reference: str | Path) -> tuple[np.ndarray, Any]:
    """Confusion matrix of two NIfTI label masks; returns it with the prediction's geometry."""
    pred = open_scan(prediction)

    class _Slabs:  # adapt the prediction's proxy to the (i, j, k) slicing confusion_nifti uses
        chunks = (16, 16, 16)

        def __getitem__(self, index: Any) -> np.ndarray:
            return _as_labels(pred.path, np.asarray(pred.proxy[index]).reshape(
                *pred.geometry.shape[:2], -1))

    return confusion_nifti(_Slabs(), reference, pred.geometry), pred.geometry


def evaluate_report(prediction: str | Path, reference: str | Path, *, output: Path | None = None,
                    overwrite: bool = False) -> dict[str, Any]:
    """Report (as written by ``segment_volume``, without run facts) comparing two masks."""
    if output is not None:
        check_output(output, overwrite=overwrite)
    matrix, geometry = evaluate_masks(prediction, reference)
    measured = scores(matrix)
    report = {
        "prediction": str(prediction),
        "reference": str(reference),
        "labels": label_rows(measured, {}, geometry.voxel_volume_ml, has_reference=True),
        "pixel_accuracy": measured.pixel_accuracy,
        "mean_pixel_accuracy": measured.mean_pixel_accuracy,
    }
    if output is not None:
        write_report(report, output)
    return report
