"""Measure the classical (weightless) cards on the shipped real data, for their ``metrics``.

Each card runs through the pipeline's own front ends (``segment_volume`` / ``segment_raster``,
the chunked engine, default blocks), and the written mask is scored against the references:

- CT (``data/medical/example_ct_sm.nii.gz``) against ``example_ct_sm_ct-organs_ref.nii.gz``
  (the ct-organs grouping of TotalSegmentator labels): bone cards against label 5 on the whole
  scan and on the slices k >= 22 (ct-organs' held-out slab, so the numbers sit side by side);
  body cards by the share of labelled voxels (any non-zero label, a lower bound of the body)
  that fall inside the mask; ct-kmeans by the Dice of its brightest cluster against bone.
- The SpaceNet tile (``data/geo/sample_geotiff.tif``) against the rasterised footprints in
  ``geotiff_labels.geojson``, on the whole tile and on the columns x >= 675 (buildings' held-out).

``python models/measure_classical.py`` prints one YAML ``metrics`` block per card.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
CT = ROOT / "data/medical/example_ct_sm.nii.gz"
CT_REF = ROOT / "data/medical/example_ct_sm_ct-organs_ref.nii.gz"
TILE = ROOT / "data/geo/sample_geotiff.tif"
FOOTPRINTS = ROOT / "data/geo/geotiff_labels.geojson"
BONE = 5
HOLDOUT_K = 22
HOLDOUT_X = 675
VOLUME_CARDS = ("ct-body", "ct-body-edges", "ct-bone", "ct-bone-grow", "ct-bone-watershed", "ct-kmeans")
RASTER_CARDS = ("otsu-foreground",)


def dice(pred: np.ndarray, truth: np.ndarray) -> float | None:
    total = int(pred.sum() + truth.sum())
    return round(2 * int((pred & truth).sum()) / total, 3) if total else None


def iou(pred: np.ndarray, truth: np.ndarray) -> float | None:
    union = int((pred | truth).sum())
    return round(int((pred & truth).sum()) / union, 3) if union else None


def volume_metrics(name: str, mask: np.ndarray, ref: np.ndarray, scan: np.ndarray) -> dict[str, Any]:
    held = (slice(None), slice(None), slice(HOLDOUT_K, None))
    if name.startswith("ct-body"):
        labelled = ref > 0
        return {"labelled_voxels_inside": round(float((mask.astype(bool) & labelled).sum() / labelled.sum()), 3),
                "body_fraction_of_scan": round(float(mask.astype(bool).mean()), 3)}
    bone = mask == (mask.max() if name == "ct-kmeans" else 1)
    truth = ref == BONE
    out: dict[str, Any] = {"dice_bone": dice(bone, truth), "dice_bone_slices_k22_up": dice(bone[held], truth[held]),
                           "iou_bone": iou(bone, truth)}
    if name == "ct-kmeans":
        out["mean_hu_per_cluster"] = [round(float(scan[mask == c].mean()), 1) for c in range(int(mask.max()) + 1)]
        out["share_of_voxels_per_cluster"] = [round(float((mask == c).mean()), 3) for c in range(int(mask.max()) + 1)]
    return out


def raster_metrics(mask: np.ndarray) -> dict[str, Any]:
    from pipeline.config.cards import Label
    from pipeline.io.geotiff import open_raster
    from pipeline.io.vectors import read_reference_vectors

    geometry = open_raster(TILE).geometry
    shapes = read_reference_vectors(FOOTPRINTS, geometry, {0: Label(name="background"), 1: Label(name="building")})
    burnt, _ = shapes.rasterize(slice(0, geometry.height), slice(0, geometry.width), geometry)
    truth = burnt == 1
    pred = mask == 1
    right = (slice(None), slice(HOLDOUT_X, None))
    return {"dice_building": dice(pred, truth), "iou_building": iou(pred, truth),
            "dice_building_columns_675_up": dice(pred[right], truth[right]),
            "iou_building_columns_675_up": iou(pred[right], truth[right])}


def main() -> None:
    import rasterio

    from pipeline.cluster import ClusterSettings, dask_client
    from pipeline.segment import segment_volume
    from pipeline.segment.raster import segment_raster

    ref = np.asarray(nib.load(CT_REF).dataobj)
    scan = np.asarray(nib.load(CT).dataobj)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, dask_client(ClusterSettings(workers=2)) as client:
        for name in VOLUME_CARDS:
            result = segment_volume(CT, model=name, output=Path(tmp) / f"{name}.nii.gz", client=client)
            mask = np.asarray(nib.load(result.mask).dataobj)
            results[name] = {**volume_metrics(name, mask, ref, scan), "seconds": result.report["run"]["seconds_total"]}
        for name in RASTER_CARDS:
            result = segment_raster(TILE, model=name, output=Path(tmp) / f"{name}.tif", client=client)
            with rasterio.open(result.mask) as src:
                mask = src.read(1)
            results[name] = {**raster_metrics(mask), "seconds": result.report["run"]["seconds_total"]}
    print(yaml.safe_dump(results, sort_keys=False))


if __name__ == "__main__":
    main()
