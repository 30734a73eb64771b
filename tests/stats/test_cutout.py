"""--cutout: values, crop and geometry against NumPy on the whole real CT and raster."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
import zarr

from pipeline.io.cutout import labels_box, write_raster_cutout, write_volume_cutout
from pipeline.io.cutout_geometry import grow, margin_steps, shifted_transform
from pipeline.geometry import pixel_size_m
from pipeline.io.geotiff import open_raster
from pipeline.io.nifti import open_scan


def group_with(tmp: Path, arrays: dict[str, tuple[np.ndarray, tuple[int, ...]]]) -> zarr.Group:
    group = zarr.open_group(zarr.storage.LocalStore(tmp / "work.zarr"), mode="w", zarr_format=3)
    for name, (values, chunks) in arrays.items():
        group.create_array(name, shape=values.shape, chunks=chunks, dtype=values.dtype)[...] = values
    return group


def whole_box(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    where = np.nonzero(mask)
    return tuple(int(w.min()) for w in where), tuple(int(w.max()) + 1 for w in where)


def test_labels_box_over_chunks(data_dir: Path, tmp_path: Path) -> None:
    ref = np.asanyarray(nib.load(data_dir / "medical" / "example_ct_sm_ct-organs_ref.nii.gz").dataobj)
    z = group_with(tmp_path, {"labels": (ref, (17, 23, 7))})["labels"]
    for kept in [(1,), (2, 3), (5,)]:
        assert labels_box(z, kept) == whole_box(np.isin(ref, kept))
    assert labels_box(z, (9,)) is None


def test_margin_rounds_up_and_clips() -> None:
    assert margin_steps(10.0, (3.0, 2.5, 0.0)) == (4, 4, 0)
    assert margin_steps(6.0, (3.0,)) == (2,)
    assert grow(((1, 5), (4, 9)), (2, 2), (5, 10)) == ((0, 3), (5, 10))


@pytest.mark.parametrize(("kept", "margin"), [((1,), 10.0), ((2, 3), 0.0)])
def test_volume_cutout_is_exact(data_dir: Path, tmp_path: Path, kept: tuple[int, ...], margin: float) -> None:
    ct_path = data_dir / "medical" / "example_ct_sm.nii.gz"
    scan = open_scan(ct_path)
    ct = np.asanyarray(nib.load(ct_path).dataobj)
    ref = np.asanyarray(nib.load(data_dir / "medical" / "example_ct_sm_ct-organs_ref.nii.gz").dataobj)
    group = group_with(tmp_path, {"image": (ct[None], (1, 40, 40, 16)), "labels": (ref, (40, 40, 16))})
    out = tmp_path / "cut.nii.gz"
    facts = write_volume_cutout(group, scan.geometry, kept, margin, out)
    assert facts is not None
    lo, hi = whole_box(np.isin(ref, kept))
    steps = [math.ceil(margin / z) for z in scan.geometry.zooms]
    lo = tuple(max(0, a - m) for a, m in zip(lo, steps))
    hi = tuple(min(n, b + m) for b, m, n in zip(hi, steps, ct.shape))
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    assert facts["start"] == list(lo) and facts["shape"] == [b - a for a, b in zip(lo, hi)]
    cut = nib.load(out)
    want = np.where(np.isin(ref[box], kept), ct[box], ct.min())
    assert cut.get_data_dtype() == ct.dtype
    np.testing.assert_array_equal(np.asanyarray(cut.dataobj), want)
    original = nib.load(ct_path)
    shift = np.eye(4)
    shift[:3, 3] = lo
    for get in ("get_qform", "get_sform"):
        np.testing.assert_allclose(getattr(cut.header, get)(), getattr(original.header, get)() @ shift, atol=1e-4)
    assert int(cut.header["qform_code"]) == int(original.header["qform_code"])
    assert int(cut.header["sform_code"]) == int(original.header["sform_code"])
    np.testing.assert_array_equal(cut.header.get_zooms(), original.header.get_zooms())


def test_raster_cutout_is_exact(data_dir: Path, tmp_path: Path) -> None:
    """RGB Landsat scene (EPSG:32618, nodata 0): class 1 of a threshold mask, 300 m margin."""
    path = data_dir / "geo" / "RGB.byte.tif"
    raster = open_raster(path)
    with rasterio.open(path) as src:
        image, transform, crs = src.read(), src.transform, src.crs
    valid = (image != 0).any(axis=0)
    labels = np.where(valid, np.digitize(image[0], [90]), 255).astype(np.uint8)
    labels[:, :400] = np.where(valid[:, :400], 0, 255)  # class 1 only on the right part
    group = group_with(tmp_path, {"image": (image, (3, 128, 128)), "labels": (labels, (128, 128)),
                                  "valid": (valid, (128, 128))})
    out = tmp_path / "cut.tif"
    metres = pixel_size_m(raster.geometry)
    facts = write_raster_cutout(group, raster.geometry, (1,), 300.0, out, metres)
    assert facts is not None
    lo, hi = whole_box((labels == 1) & valid)
    steps = [math.ceil(300.0 / m - 1e-9) for m in metres]
    lo = tuple(max(0, a - m) for a, m in zip(lo, steps))
    hi = tuple(min(n, b + m) for b, m, n in zip(hi, steps, labels.shape))
    rows, cols = slice(lo[0], hi[0]), slice(lo[1], hi[1])
    with rasterio.open(out) as cut:
        assert cut.crs == crs and cut.nodata == 0 and cut.count == 3
        assert cut.transform @ (0, 0) == transform @ (lo[1], lo[0])
        assert tuple(cut.transform)[:6] == shifted_transform(tuple(transform)[:6], lo[0], lo[1])
        want = np.where(((labels == 1) & valid)[rows, cols], image[:, rows, cols], 0)
        np.testing.assert_array_equal(cut.read(), want)
