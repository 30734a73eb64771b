"""Masks land on exactly the scan's grid: header spatial fields bit-identical, data exact."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.errors import GridMismatchError, InputError, InputNotFoundError
from pipeline.geometry import VolumeGeometry
from pipeline.io.nifti import iter_slabs, open_scan, read_reference, write_labels
from tests.factories import oblique_affine, write_nifti

SPATIAL_FIELDS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                  "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units")


def assert_same_geometry(scan: Path, mask: Path) -> None:
    a, b = nib.load(scan), nib.load(mask)
    assert a.shape[:3] == b.shape
    np.testing.assert_array_equal(a.affine, b.affine)
    for field in SPATIAL_FIELDS:
        np.testing.assert_array_equal(a.header[field], b.header[field], err_msg=field)
    np.testing.assert_array_equal(a.header["pixdim"][:4], b.header["pixdim"][:4])
    assert nib.aff2axcodes(a.affine) == nib.aff2axcodes(b.affine)


def round_trip(scan: Path, tmp_path: Path) -> Path:
    source = open_scan(scan)
    labels = (np.arange(np.prod(source.geometry.shape)) % 7).reshape(source.geometry.shape).astype(np.uint8)
    out = tmp_path / (scan.name.split(".")[0] + "_mask.nii.gz")
    write_labels(labels, source.geometry, out)
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), labels)
    return out


@pytest.mark.parametrize("name", ["example_ct_sm.nii.gz", "example_mr_sm.nii.gz", "example_seg.nii.gz",
                                  "example_seg_mr.nii.gz"])
def test_real_scans_round_trip(data_dir: Path, tmp_path: Path, name: str) -> None:
    scan = data_dir / "medical" / name
    assert_same_geometry(scan, round_trip(scan, tmp_path))


@pytest.mark.parametrize(("affine", "codes", "version", "shape"), [
    (oblique_affine(), (1, 1), 1, (13, 9, 5)),
    (oblique_affine(lps=True), (2, 0), 1, (8, 8, 8)),  # sform unset: qform defines space
    (oblique_affine((0.5, 0.5, 5.0)), (0, 4), 2, (17, 4, 1)),  # NIfTI-2, one voxel thick
    (np.diag([-0.7, 0.7, 3.3, 1.0]), (1, 2), 1, (5, 6, 7)),
])
def test_synthetic_geometries_round_trip(tmp_path: Path, affine: np.ndarray, codes: tuple[int, int], version: int,
                                         shape: tuple[int, ...]) -> None:
    scan = write_nifti(tmp_path / "scan.nii.gz", np.zeros(shape, np.int16), affine,
                       qform_code=codes[0], sform_code=codes[1], version=version)
    mask = round_trip(scan, tmp_path)
    assert_same_geometry(scan, mask)
    assert isinstance(nib.load(mask), nib.Nifti2Image if version == 2 else nib.Nifti1Image)


def test_geometry_attrs_round_trip(data_dir: Path) -> None:
    geometry = open_scan(data_dir / "medical" / "example_mr_sm.nii.gz").geometry
    import json

    again = VolumeGeometry.from_attrs(json.loads(json.dumps(geometry.to_attrs())))
    assert again == geometry
    assert geometry.voxel_volume_ml == pytest.approx(0.027)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_slabs_stream_whole_volume(tmp_path: Path, dtype: type) -> None:
    data = (np.arange(11 * 7 * 9) % 100).reshape(11, 7, 9).astype(dtype)
    scan = open_scan(write_nifti(tmp_path / "s.nii", data))
    got = np.concatenate([slab for _, slab in iter_slabs(scan, 4)], axis=2)
    np.testing.assert_array_equal(got, data)


def test_bad_inputs(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(InputNotFoundError, match="file not found"):
        open_scan(tmp_path / "missing.nii.gz")
    (tmp_path / "text.nii.gz").write_text("hello")
    with pytest.raises(InputError, match="not a readable NIfTI"):
        open_scan(tmp_path / "text.nii.gz")
    with pytest.raises(InputError, match="image is 4D"):
        open_scan(write_nifti(tmp_path / "4d.nii.gz", np.zeros((4, 4, 4, 2), np.int16)))
    with pytest.raises(InputError, match="image is 2D"):
        open_scan(write_nifti(tmp_path / "2d.nii.gz", np.zeros((4, 4), np.int16)))
    nan = np.zeros((4, 4, 4), np.float32)
    nan[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="1 NaN/inf voxels"):
        list(iter_slabs(open_scan(write_nifti(tmp_path / "nan.nii.gz", nan)), 2))
    ct = data_dir / "medical" / "example_ct_sm.nii.gz"
    (tmp_path / "trunc.nii.gz").write_bytes(ct.read_bytes()[:200_000])
    with pytest.raises(InputError, match="truncated or corrupt"):
        list(iter_slabs(open_scan(tmp_path / "trunc.nii.gz"), 8))
    with pytest.raises(GridMismatchError, match="differs from the scan"):
        read_reference(data_dir / "medical" / "example_seg_mr.nii.gz", open_scan(ct).geometry)
