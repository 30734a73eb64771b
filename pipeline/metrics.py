"""Segmentation metrics from a confusion matrix accumulated chunk by chunk.

Pure functions: ``confusion(reference, prediction, n)`` on one chunk, add the
matrices, then ``scores(matrix)``. Rows are reference labels, columns predicted.
A label absent from both reference and prediction has Dice and IoU ``None``
(undefined), never 0 or 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion(reference: np.ndarray, prediction: np.ndarray, n_labels: int,
              valid: np.ndarray | None = None) -> np.ndarray:
    """(n, n) int64 counts of (reference, prediction) pairs; voxels where ``valid`` is False are skipped.

    Raises ValueError when a value is outside ``[0, n_labels)``.
    """
    ref = np.asarray(reference).ravel()
    pred = np.asarray(prediction).ravel()
    if valid is not None:
        keep = np.asarray(valid).ravel()
        ref, pred = ref[keep], pred[keep]
    for name, values in (("reference", ref), ("prediction", pred)):
        if values.size and (values.min() < 0 or values.max() >= n_labels):
            bad = sorted(set(np.unique(values).tolist()) - set(range(n_labels)))[:5]
            raise ValueError(f"{name} has label values {bad} outside 0..{n_labels - 1}")
    flat = ref.astype(np.int64) * n_labels + pred.astype(np.int64)
    return np.bincount(flat, minlength=n_labels * n_labels).reshape(n_labels, n_labels)


@dataclass(frozen=True)
class LabelScore:
    """Scores of one label. Counts are voxels (pixels for rasters)."""

    label: int
    predicted: int
    reference: int
    true_positive: int
    dice: float | None
    iou: float | None


@dataclass(frozen=True)
class Scores:
    labels: tuple[LabelScore, ...]
    pixel_accuracy: float | None
    mean_pixel_accuracy: float | None


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def scores(matrix: np.ndarray) -> Scores:
    """Dice, IoU (Jaccard), pixel accuracy and mean pixel accuracy from a confusion matrix.

    Mean pixel accuracy averages per-label recall over labels present in the reference.
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    tp = np.diag(matrix)
    ref = matrix.sum(axis=1)
    pred = matrix.sum(axis=0)
    labels = tuple(
        LabelScore(label=i, predicted=int(pred[i]), reference=int(ref[i]), true_positive=int(tp[i]),
                   dice=_ratio(2 * tp[i], ref[i] + pred[i]), iou=_ratio(tp[i], ref[i] + pred[i] - tp[i]))
        for i in range(matrix.shape[0]))
    recalls = [tp[i] / ref[i] for i in range(matrix.shape[0]) if ref[i] > 0]
    return Scores(labels=labels, pixel_accuracy=_ratio(tp.sum(), matrix.sum()),
                  mean_pixel_accuracy=float(np.mean(recalls)) if recalls else None)
