"""Streaming per-label statistics equal NumPy on the whole array (real CT, real rasters, float input)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import rasterio
import zarr

from pipeline.evaluate.label_statistics import FLOAT_BITS, StatisticsUnits, accumulate, bin_width, label_statistics

NAMES = ("mean", "std", "min", "max", "p5", "median", "p95")


def numpy_stats(values: np.ndarray) -> dict[str, float]:
    v = values.astype(np.float64)
    return {"mean": v.mean(), "std": v.std(), "min": v.min(), "max": v.max(), "p5": np.percentile(v, 5),
            "median": np.percentile(v, 50), "p95": np.percentile(v, 95)}


def as_zarr(tmp: Path, name: str, array: np.ndarray, chunks: tuple[int, ...]) -> Any:
    z = zarr.create_array(tmp / f"{name}.zarr", shape=array.shape, chunks=chunks, dtype=array.dtype)
    z[...] = array
    return z


def run(image: np.ndarray, labels: np.ndarray, valid: np.ndarray | None, n: int, tmp: Path,
        chunks: tuple[int, ...]) -> dict[str, Any]:
    zi = as_zarr(tmp, "image", image, (image.shape[0], *chunks))
    zl = as_zarr(tmp, "labels", labels, chunks)
    zv = None if valid is None else as_zarr(tmp, "valid", valid, chunks)
    units = StatisticsUnits(unit="u", size_key="size", unit_size=0.5,
                            channel_names=[f"b{c}" for c in range(image.shape[0])])
    return label_statistics(zi, zl, zv, names={}, n_labels=n, units=units)


def check(found: dict[str, Any], image: np.ndarray, labels: np.ndarray, valid: np.ndarray | None, n: int,
          exact_percentiles: bool) -> int:
    keep = np.ones(labels.shape, bool) if valid is None else valid
    checked = 0
    for row in found["rows"]:
        c, label = int(row["channel"][1:]), row["label"]
        inside = image[c][keep & (labels == label)]
        assert row["count"] == inside.size
        assert row["size"] == pytest.approx(inside.size * 0.5)
        if inside.size == 0:
            assert row["mean"] is None
            continue
        want = numpy_stats(inside)
        for key in ("mean", "std"):
            assert row[key] == pytest.approx(want[key], rel=1e-9, abs=1e-9), (label, c, key)
        assert row["min"] == want["min"] and row["max"] == want["max"]
        for key in ("p5", "median", "p95"):
            if exact_percentiles:
                assert row[key] == want[key], (label, c, key)
            else:  # one float32 bin: relative 2^-FLOAT_BITS
                assert abs(row[key] - want[key]) <= abs(want[key]) * 2.0**-FLOAT_BITS + 1e-12, (label, c, key)
        checked += 1
    return checked


def test_real_ct_inside_reference_labels(data_dir: Path, tmp_path: Path) -> None:
    """HU of the real CT inside each structure of its reference, chunked so blocks split structures."""
    ct = np.asanyarray(nib.load(data_dir / "medical" / "example_ct_sm.nii.gz").dataobj)
    ref = np.asanyarray(nib.load(data_dir / "medical" / "example_ct_sm_ct-organs_ref.nii.gz").dataobj)
    n = int(ref.max()) + 1
    found = run(ct[None], ref, None, n, tmp_path, (40, 37, 11))
    assert found["bin_width"] == bin_width(True)
    assert check(found, ct[None], ref, None, n, exact_percentiles=True) == n


def test_real_raster_inside_footprints_without_nodata(data_dir: Path, tmp_path: Path) -> None:
    """Band values of the SpaceNet tile inside building footprints and outside; nodata (0) excluded."""
    with rasterio.open(data_dir / "geo" / "sample_geotiff.tif") as src:
        image, nodata = src.read(), src.nodata
    with rasterio.open(data_dir / "geo" / "sample_fp_mask.tif") as src:
        labels = (src.read(1) > 0).astype(np.uint8)
    valid = image[0] != nodata
    valid[:300, :300] = False  # and a corner of nodata whose pixels would shift every statistic
    image[:, :300, :300] = 65535
    found = run(image, labels, valid, 2, tmp_path, (128, 200))
    assert check(found, image, labels, valid, 2, exact_percentiles=True) == 2


def test_real_rgb_scene_per_band(data_dir: Path, tmp_path: Path) -> None:
    with rasterio.open(data_dir / "geo" / "RGB.byte.tif") as src:
        image = src.read()
    valid = (image != 0).any(axis=0)
    labels = np.digitize(image[1], [60, 120]).astype(np.uint8)  # three classes, and label 3 empty
    labels[~valid] = 255  # the mask's nodata value: beyond the labels, counted nowhere
    found = run(image, labels, valid, 4, tmp_path, (100, 256))
    assert len(found["rows"]) == 4 * 3
    assert check(found, image, labels, valid, 4, exact_percentiles=True) == 3 * 3


@pytest.mark.parametrize("scale", [0.37, -1e-3])
def test_float_input_within_one_bin(data_dir: Path, tmp_path: Path, scale: float) -> None:
    ct = np.asanyarray(nib.load(data_dir / "medical" / "example_ct_sm.nii.gz").dataobj)
    ref = np.asanyarray(nib.load(data_dir / "medical" / "example_ct_sm_ct-organs_ref.nii.gz").dataobj)
    image = (ct.astype(np.float32) * np.float32(scale) + np.float32(3.1))[None]
    n = int(ref.max()) + 1
    found = run(image, ref, None, n, tmp_path, (64, 64, 16))
    assert "2^-10" in found["bin_width"]
    assert check(found, image, ref, None, n, exact_percentiles=False) == n


def test_chunking_does_not_change_the_result(data_dir: Path, tmp_path: Path) -> None:
    ct = np.asanyarray(nib.load(data_dir / "medical" / "example_ct_sm.nii.gz").dataobj)[None]
    ref = np.asanyarray(nib.load(data_dir / "medical" / "example_ct_sm_ct-organs_ref.nii.gz").dataobj)
    whole = accumulate(ct, ref, n_labels=6)
    (tmp_path / "a").mkdir()
    parts = accumulate(as_zarr(tmp_path / "a", "i", ct, (1, 13, 17, 7)), as_zarr(tmp_path / "a", "l", ref, (13, 17, 7)),
                       n_labels=6)
    np.testing.assert_array_equal(whole.count, parts.count)
    np.testing.assert_allclose(whole.mean, parts.mean, rtol=1e-12)
    np.testing.assert_allclose(whole.m2, parts.m2, rtol=1e-9)
    np.testing.assert_array_equal(whole.codes[0], parts.codes[0])
    np.testing.assert_array_equal(whole.counts[0], parts.counts[0])
