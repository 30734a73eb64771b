"""``segment-volume FOLDER``: a DICOM series segments exactly as the NIfTI it was built from; SEG beside the mask."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.io.dicom import open_series
from pipeline.segment import SeriesOptions, segment_series, segment_volume
from tests.dicom.conftest import dciodvfy, reoriented
from tests.dicom.series import INTERCEPT, write_non_image, write_series
from tests.dicom.test_seg import decode
from tests.factories import run_and_check_clean_failure

runner = CliRunner()


@pytest.fixture
def study(sample_ct: nib.Nifti1Image, tmp_path: Path) -> tuple[Path, Path]:
    """The sample CT as a NIfTI file and as a DICOM series (stored in the same axis order, so the same grid)."""
    image = reoriented(sample_ct, "RAS")
    nifti = tmp_path / "ct.nii.gz"
    nib.save(image, nifti)
    write_series(np.asarray(image.dataobj), image.affine, tmp_path / "CT")
    return nifti, tmp_path / "CT"


@pytest.mark.slow
def test_series_segments_as_its_nifti(study: tuple[Path, Path], tiny_card: Path, tmp_path: Path) -> None:
    nifti, folder = study
    from_nifti = segment_volume(nifti, model=tiny_card, html=False)
    result = segment_series(folder, model=tiny_card, dicom=SeriesOptions(dicom_seg="binary"), html=False)
    assert result.mask == tmp_path / "CT_seg.nii.gz"
    ours, theirs = nib.load(result.mask), nib.load(from_nifti.mask)
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-4)
    labels = np.asarray(ours.dataobj)
    np.testing.assert_array_equal(labels, np.asarray(theirs.dataobj))
    seg = result.report["dicom_seg"]
    assert Path(seg["path"]) == tmp_path / "CT_seg.dcm"
    assert dciodvfy(Path(seg["path"])) == []
    segments = {int(k): v for k, v in seg["segments"].items()}
    assert set(segments.values()) == set(np.unique(labels)) - {0}
    np.testing.assert_array_equal(decode(Path(seg["path"]), open_series(folder), segments), labels)
    facts = result.report["input"]
    assert facts["series_uid"] == open_series(folder).series_uid
    assert facts["instances"] == 30
    assert facts["sha256"] == open_series(folder).sha256()


@pytest.mark.slow
def test_cli_series_with_padding(sample_ct: nib.Nifti1Image, tiny_card: Path, tmp_path: Path) -> None:
    """Pixel Padding Value voxels are invalid: background in the mask and SEG; the report counts valid voxels."""
    image = reoriented(sample_ct, "LPS")
    values = np.asarray(image.dataobj)
    write_series(values, image.affine, tmp_path / "CT", padding=0)
    args = ["segment-volume", str(tmp_path / "CT"), "-m", str(tiny_card), "--dicom-seg", "--no-html"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "dicom seg: " in result.stdout
    assert "CT_seg.dcm (binary" in result.stdout
    labels = np.asarray(nib.load(tmp_path / "CT_seg.nii.gz").dataobj)
    assert not labels[values == INTERCEPT].any()
    again = runner.invoke(app, args)
    assert again.exit_code == 1
    assert "output exists" in again.stderr


def test_cli_refusals(sample_ct: nib.Nifti1Image, tmp_path: Path, tiny_card: Path) -> None:
    from pydicom.uid import BasicTextSRStorage

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    run_and_check_clean_failure(runner, app, ["segment-volume", str(tmp_path / "empty"), "-m", str(tiny_card)],
                                tmp_path / "empty", "no DICOM files found")
    image = reoriented(sample_ct, "LPS")
    write_series(np.asarray(image.dataobj), image.affine, tmp_path / "two" / "a")
    write_series(np.asarray(image.dataobj)[:, :, :4], image.affine, tmp_path / "two" / "b")
    result = runner.invoke(app, ["segment-volume", str(tmp_path / "two"), "-m", str(tiny_card)])
    assert result.exit_code == 1
    assert "2 image series; choose one with --series UID" in result.stderr
    assert not list(tmp_path.glob("two_seg*"))
    (tmp_path / "sr").mkdir()
    write_non_image(tmp_path / "sr" / "sr.dcm", BasicTextSRStorage)
    run_and_check_clean_failure(runner, app, ["segment-volume", str(tmp_path / "sr"), "-m", str(tiny_card)],
                                tmp_path / "sr", "no CT/MR/PET image series, only Basic Text SR Storage")
    nifti = tmp_path / "ct.nii.gz"
    nib.save(image, nifti)
    result = runner.invoke(app, ["segment-volume", str(nifti), "--dicom-seg"])
    assert result.exit_code == 2
    assert "--series and --dicom-seg are for DICOM series" in result.stderr
    shutil.rmtree(tmp_path / "two" / "b")
    result = runner.invoke(app, ["segment-volume", str(tmp_path / "two"), "--dicom-seg", "--dicom-seg-type", "rle"])
    assert result.exit_code == 2
    assert "--dicom-seg-type must be one of binary, labelmap" in result.stderr


def test_truncated_pixel_data(sample_ct: nib.Nifti1Image, tmp_path: Path, tiny_card: Path) -> None:
    """A file cut short inside its pixel data: one line naming it, no output, no work store left."""
    image = reoriented(sample_ct, "LPS")
    files = write_series(np.asarray(image.dataobj), image.affine, tmp_path / "CT")
    broken = sorted(files)[7]
    broken.write_bytes(broken.read_bytes()[:-5000])
    args = ["segment-volume", str(tmp_path / "CT"), "-m", str(tiny_card), "--dicom-seg", "--no-html"]
    run_and_check_clean_failure(runner, app, args, tmp_path, f"{broken}: cannot decode pixel data")


def test_default_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.io.dicom_files import is_series_path
    from pipeline.io.outputs import default_series_output, dicom_seg_path

    assert default_series_output(Path("study/CT/")) == Path("study/CT_seg.nii.gz")
    assert default_series_output(Path("in/study.ZIP")) == Path("in/study_seg.nii.gz")
    monkeypatch.chdir(tmp_path)
    assert default_series_output(Path(".")) == tmp_path.parent / f"{tmp_path.name}_seg.nii.gz"
    assert dicom_seg_path(Path("out/CT_seg.nii.gz")) == Path("out/CT_seg.dcm")
    (tmp_path / "scan.nii.gz").mkdir()
    assert not is_series_path(tmp_path / "scan.nii.gz")  # a misplaced NIfTI path, reported as one
    assert is_series_path(tmp_path)
    assert is_series_path(tmp_path / "missing.zip")
