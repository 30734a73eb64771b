"""The DICOM reader on real series built from the sample CT: geometry round trips, encodings, refusals."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from pipeline.errors import InputError, InputNotFoundError
from pipeline.io.dicom import iter_slabs, open_series, stream_to_array
from tests.dicom.conftest import reoriented, rotated
from tests.dicom.series import INTERCEPT, RAS_TO_LPS, write_enhanced, write_non_image, write_series


def read_volume(path: Path, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
    series = open_series(path, **kwargs)  # type: ignore[arg-type]
    values = np.concatenate([v for _, v, _ in iter_slabs(series, 7)], axis=2)
    return values, series.geometry.affine_matrix


def assert_same_image(values: np.ndarray, affine: np.ndarray, image: nib.Nifti1Image) -> None:
    assert values.shape == image.shape
    np.testing.assert_allclose(affine, image.affine, atol=1e-4)
    np.testing.assert_array_equal(values, np.asarray(image.dataobj))


def flipped_k(image: nib.Nifti1Image) -> nib.Nifti1Image:
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1, image.shape[2] - 1
    return nib.Nifti1Image(np.asarray(image.dataobj)[:, :, ::-1], image.affine @ flip)


@pytest.mark.parametrize(("codes", "reversed_k"), [("LPS", False), ("RAS", False), ("LIP", False), ("PIL", True)])
def test_storage_orientations_round_trip(sample_ct: nib.Nifti1Image, tmp_path: Path, codes: str,
                                         reversed_k: bool) -> None:
    """Axial (LPS, as scanners store it), RAS, coronal- and sagittal-stored series read back on the grid
    they were written from, and all of them sit on the same world voxels as the original. Slices go along
    the normal (row x column direction): for P-I-L storage that is R, so k comes back reversed."""
    image = reoriented(sample_ct, codes)
    write_series(np.asarray(image.dataobj), image.affine, tmp_path / "s")
    values, affine = read_volume(tmp_path / "s")
    assert_same_image(values, affine, flipped_k(image) if reversed_k else image)
    back = reoriented(nib.Nifti1Image(values, affine), "RAS")
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(sample_ct.dataobj))


def test_oblique_series(sample_ct: nib.Nifti1Image, tmp_path: Path) -> None:
    image = rotated(reoriented(sample_ct, "LPS"), 17.0, axis=0)
    write_series(np.asarray(image.dataobj), image.affine, tmp_path / "s")
    assert_same_image(*read_volume(tmp_path / "s"), image)


def test_gantry_tilt_keeps_sheared_geometry(sample_ct: nib.Nifti1Image, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    image = reoriented(sample_ct, "LPS")
    lps = RAS_TO_LPS @ image.affine
    tilt = np.tan(np.radians(12.0)) * 3.0  # each slice 3 mm up and 0.64 mm along the column direction
    positions = [lps[:3, 3] + k * lps[:3, 2] + k * tilt * np.array([0.0, 1.0, 0.0]) for k in range(image.shape[2])]
    write_series(np.asarray(image.dataobj), image.affine, tmp_path / "s", positions=positions)
    with caplog.at_level(logging.WARNING):
        values, affine = read_volume(tmp_path / "s")
    assert "gantry tilt of 12.00 degrees" in caplog.text
    sheared = image.affine.copy()
    sheared[1, 2] = -tilt  # LPS y is -RAS y
    assert_same_image(values, affine, nib.Nifti1Image(np.asarray(image.dataobj), sheared))


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_transfer_syntaxes(sample_ct: nib.Nifti1Image, tmp_path: Path, syntax: str) -> None:
    image = reoriented(sample_ct, "LPS")
    files = write_series(np.asarray(image.dataobj), image.affine, tmp_path / "s", transfer_syntax=syntax)
    assert files[0].read_bytes().find(syntax.encode()) > 0  # really stored compressed
    assert_same_image(*read_volume(tmp_path / "s"), image)


def test_multiframe_enhanced_ct(sample_ct: nib.Nifti1Image, tmp_path: Path) -> None:
    """One Enhanced CT instance with its frames shuffled: sorted by their Plane Position, not frame order."""
    image = reoriented(sample_ct, "LIP")
    (tmp_path / "s").mkdir()
    write_enhanced(np.asarray(image.dataobj), image.affine, tmp_path / "s" / "enhanced.dcm")
    assert_same_image(*read_volume(tmp_path / "s"), image)


def test_zip_and_rescale(sample_ct: nib.Nifti1Image, tmp_path: Path) -> None:
    image = reoriented(sample_ct, "LPS")
    files = write_series(np.asarray(image.dataobj), image.affine, tmp_path / "s")
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for f in files:
            out.write(f, f"study/CT/{f.name}")
    series = open_series(archive)
    assert series.dtype == np.float32
    assert series.frames[0].intercept == INTERCEPT
    assert len(series.sha256()) == 64
    assert_same_image(*read_volume(archive), image)


def test_pixel_padding_is_invalid(sample_ct: nib.Nifti1Image, tmp_path: Path) -> None:
    import zarr

    image = reoriented(sample_ct, "LPS")
    values = np.asarray(image.dataobj)
    write_series(values, image.affine, tmp_path / "s", padding=0)  # stored 0 = HU -1024
    series = open_series(tmp_path / "s")
    target = zarr.create_array({}, shape=(1, *values.shape), chunks=(1, 64, 64, 8), dtype="float32")
    valid = zarr.create_array({}, shape=values.shape, chunks=(64, 64, 8), dtype="bool")
    assert stream_to_array(series, target, valid) == int((values > INTERCEPT).sum())
    np.testing.assert_array_equal(valid[:], values > INTERCEPT)


def test_several_series_need_a_choice(sample_ct: nib.Nifti1Image, tmp_path: Path) -> None:
    image = reoriented(sample_ct, "LPS")
    data = np.asarray(image.dataobj)
    write_series(data, image.affine, tmp_path / "study" / "a", series_number=1)
    write_series(data[:, :, :10], image.affine, tmp_path / "study" / "b", series_number=2)
    with pytest.raises(InputError, match=r"2 image series; choose one with --series UID: .*30 instances.*10 instances"):
        open_series(tmp_path / "study")
    wanted = open_series(tmp_path / "study" / "b").series_uid
    assert open_series(tmp_path / "study", series_uid=wanted).geometry.shape[2] == 10
    with pytest.raises(InputError, match=r"no series 1\.2\.3; found: "):
        open_series(tmp_path / "study", series_uid="1.2.3")


def test_non_image_series(sample_ct: nib.Nifti1Image, tmp_path: Path) -> None:
    from pydicom.uid import BasicTextSRStorage, RTStructureSetStorage

    (tmp_path / "sr").mkdir()
    write_non_image(tmp_path / "sr" / "report.dcm", BasicTextSRStorage)
    write_non_image(tmp_path / "sr" / "rt.dcm", RTStructureSetStorage, modality="RTSTRUCT")
    with pytest.raises(InputError, match="no CT/MR/PET image series, only Basic Text SR Storage, RT Structure Set"):
        open_series(tmp_path / "sr")
    image = reoriented(sample_ct, "LPS")
    write_series(np.asarray(image.dataobj), image.affine, tmp_path / "sr" / "ct")
    assert open_series(tmp_path / "sr").geometry.shape == image.shape  # the SR is ignored beside one CT


def test_no_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=r"no DICOM files found \(1 files looked at\)"):
        open_series(tmp_path)
    with pytest.raises(InputNotFoundError):
        open_series(tmp_path / "missing")
    with pytest.raises(InputError, match=r"not a folder or a \.zip"):
        open_series(tmp_path / "notes.txt")


def _positions(image: nib.Nifti1Image) -> list[np.ndarray]:
    lps = RAS_TO_LPS @ image.affine
    return [lps[:3, 3] + k * lps[:3, 2] for k in range(image.shape[2])]


def test_refused_series(sample_ct: nib.Nifti1Image, tmp_path: Path) -> None:
    image = reoriented(sample_ct, "LPS")
    data = np.asarray(image.dataobj)
    duplicate = _positions(image)
    duplicate[5] = duplicate[4]
    write_series(data, image.affine, tmp_path / "dup", positions=duplicate)
    with pytest.raises(InputError, match=r"series [\d.]+: duplicate slice positions"):
        open_series(tmp_path / "dup")
    missing = _positions(image)
    write_series(data[:, :, :-1], image.affine, tmp_path / "gap", positions=missing[:12] + missing[13:])
    with pytest.raises(InputError, match=r"uneven slice spacing \(3 to 6 mm, median 3\); missing slices"):
        open_series(tmp_path / "gap")
    files = write_series(data, image.affine, tmp_path / "loc")
    write_series(data[:, :, :1], image.affine, tmp_path / "loc", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    _same_series(tmp_path / "loc", files)
    with pytest.raises(InputError, match="contains localizer images"):
        open_series(tmp_path / "loc")
    files = write_series(data, image.affine, tmp_path / "mixed")
    coronal = reoriented(sample_ct, "LIP")
    write_series(np.asarray(coronal.dataobj)[:, :, :2], coronal.affine, tmp_path / "mixed", seed=1)
    _same_series(tmp_path / "mixed", files)
    with pytest.raises(InputError, match="mixes orientations, sizes or pixel spacings"):
        open_series(tmp_path / "mixed")


def _same_series(folder: Path, keep: list[Path]) -> None:
    """Put every file of ``folder`` into the series of ``keep`` (as a scanner mixing them would)."""
    from pydicom import dcmread

    uid = dcmread(keep[0]).SeriesInstanceUID
    for path in folder.iterdir():
        ds = dcmread(path)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.SOPInstanceUID if path in keep else generate_uid()
        ds.save_as(path)


def test_streaming_holds_one_slab(sample_ct: nib.Nifti1Image, tmp_path: Path) -> None:
    """A 600-slice series goes into the work store holding about a slab (8 slices here), never the volume."""
    import tracemalloc

    import zarr

    image = reoriented(sample_ct, "LPS")
    values = np.concatenate([np.asarray(image.dataobj)] * 20, axis=2)  # 122 x 101 x 600
    write_series(values, image.affine, tmp_path / "s")
    series = open_series(tmp_path / "s")
    target = zarr.create_array(zarr.storage.LocalStore(tmp_path / "z"), shape=(1, *values.shape),
                               chunks=(1, 122, 101, 8), dtype="float32")
    tracemalloc.start()
    stream_to_array(series, target)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    volume = values.size * 4
    assert peak < volume / 10, f"peak {peak / 1e6:.1f} MB for a {volume / 1e6:.1f} MB volume"
    np.testing.assert_array_equal(target[0, :, :, 150:160], values[:, :, 150:160])
