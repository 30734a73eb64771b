"""Compare label masks on one grid, streaming slab by slab (NIfTI) or window by window (GeoTIFF)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.cards import Label
from pipeline.errors import InputError
from pipeline.evaluate.metrics import MAX_LABEL, PairCounts, pair_counts, scores
from pipeline.geometry import VolumeGeometry
from pipeline.io.nifti import iter_slabs, open_scan, read_reference
from pipeline.io.outputs import check_outputs, created_parents, report_outputs
from pipeline.report.tables import label_rows, write_report

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
    up to :data:`~pipeline.evaluate.metrics.MAX_LABEL` is counted, in memory for the pairs that occur only.
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


#: Suffixes read as raster masks (GDAL); anything else is read as NIfTI.
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")


def evaluate_report(prediction: str | Path, reference: str | Path, *, output: Path | None = None,
                    overwrite: bool = False, model: str | None = None) -> dict[str, Any]:
    """Scores of two label masks on one grid (two NIfTI masks, or two rasters), in the layout of
    ``segment_volume`` / ``segment_raster``'s reports (no run facts).

    Labels are named from ``model``'s card when given, else from a volseg raster mask's class tags,
    else ``label_<n>``. Raster nodata pixels (255 in volseg masks) of either mask are left out.
    """
    writes = report_outputs(Path(output)) if output is not None else []
    check_outputs(writes, [prediction, reference], overwrite=overwrite)
    names = _card_labels(model) if model else {}
    if Path(prediction).suffix.lower() in RASTER_SUFFIXES:
        report = _raster_report(Path(prediction), Path(reference), names)
        if output is not None:
            with created_parents(writes):
                write_report(report, Path(output))
        return report
    if Path(reference).suffix.lower() in RASTER_SUFFIXES:
        raise InputError(f"{reference}: a raster reference for a NIfTI prediction; "
                         "compare two NIfTI masks or two rasters")
    pred = open_scan(prediction)
    slabs = iter_slabs(pred, SLAB)  # read along with the reference's slabs, in the same order
    counts = confusion_against(reference, pred.geometry, lambda k: _as_labels(pred.path, next(slabs)[1]))
    next(slabs, None)  # the end of the stream: a .nii.gz's checksum is verified there
    measured = scores(counts)
    report = {
        "prediction": str(prediction),
        "reference": str(reference),
        "labels": label_rows(measured, names, pred.geometry.voxel_volume_ml, has_reference=True),
        "pixel_accuracy": measured.pixel_accuracy,
        "mean_pixel_accuracy": measured.mean_pixel_accuracy,
    }
    if output is not None:
        with created_parents(writes):
            write_report(report, Path(output))
    return report


def _card_labels(model: str) -> dict[int, Label]:
    """The card's labels, read from the card alone (no weights are loaded)."""
    from pipeline.config.cards import load_card
    from pipeline.model.bundles import imported_path
    from pipeline.model.models import load_model, resolve_card_path

    imported = imported_path(model)
    if imported is not None and imported.is_dir():
        return dict(load_model(imported).card.labels)
    return dict(load_card(resolve_card_path(imported or model)).labels)


def _raster_report(prediction: Path, reference: Path, names: dict[int, Label]) -> dict[str, Any]:
    from pipeline.io.geotiff import open_raster, open_reference, read_labels, read_windows

    pred = open_raster(prediction)
    if pred.geometry.count != 1:
        raise InputError(f"{pred.path}: prediction has {pred.geometry.count} bands; pass a single-band label mask")
    ref = open_reference(reference, pred.geometry)
    total = PairCounts.empty()
    for rows, cols in read_windows(pred.geometry.shape, (512, 512), 32):
        predicted, pred_valid = read_labels(pred.path, rows, cols)
        truth, ref_valid = read_labels(ref.path, rows, cols)
        total = total + pair_counts(truth.astype(np.int64), predicted.astype(np.int64), pred_valid & ref_valid)
    measured = scores(total)
    report = {
        "prediction": str(prediction),
        "reference": str(reference),
        "labels": label_rows(measured, names or _class_tags(pred.path), pred.geometry.pixel_area, has_reference=True,
                             count_key="pixels", size_key="area"),
        "pixel_accuracy": measured.pixel_accuracy,
        "mean_pixel_accuracy": measured.mean_pixel_accuracy,
    }
    return report


def _class_tags(path: Path) -> dict[int, Label]:
    """Class names a volseg raster mask carries as ``CLASS_<value>`` band tags (empty for other rasters)."""
    import rasterio

    with rasterio.open(path) as src:
        tags = src.tags(1)
    return {int(k[6:]): Label(name=v) for k, v in tags.items() if k.startswith("CLASS_") and k[6:].isdigit()}
