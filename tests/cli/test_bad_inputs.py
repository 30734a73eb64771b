"""Bad input: one line naming the problem and the file, exit 1, nothing written, input untouched."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from tests.factories import run_and_check_clean_failure, write_nifti

runner = CliRunner()


def absurd_header(path: Path, side: int) -> Path:
    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    nib.save(image, path)
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[40:56] = np.array([3, side, side, side, 1, 1, 1, 1], "<i2").tobytes()  # dim[0..7]
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def empty_axis(path: Path) -> Path:
    image = nib.Nifti1Image(np.zeros((3, 3, 3), np.int16), np.eye(4))
    nib.save(image, path)
    raw = bytearray(path.read_bytes())
    raw[40:48] = np.array([3, 3, 0, 3], "<i2").tobytes()
    path.write_bytes(bytes(raw))
    return path


@pytest.fixture
def case_dir(tmp_path: Path, data_dir: Path) -> Path:
    shutil.copy(data_dir / "medical" / "example_ct_sm.nii.gz", tmp_path / "ct.nii.gz")
    return tmp_path


def make_case(name: str, d: Path, tiny_card: Path) -> tuple[list[str], str]:
    ct = str(d / "ct.nii.gz")
    card = str(tiny_card)
    if name == "missing":
        return [str(d / "nope.nii.gz"), "-m", card], "nope.nii.gz: file not found"
    if name == "not_nifti":
        (d / "notes.nii.gz").write_text("not an image")
        return [str(d / "notes.nii.gz"), "-m", card], "not a readable NIfTI"
    if name == "truncated":
        (d / "cut.nii.gz").write_bytes((d / "ct.nii.gz").read_bytes()[:150_000])
        return [str(d / "cut.nii.gz"), "-m", card], "truncated or corrupt"
    if name == "4d":
        write_nifti(d / "4d.nii.gz", np.zeros((8, 8, 8, 3), np.int16))
        return [str(d / "4d.nii.gz"), "-m", card], "image is 4D"
    if name == "2d":
        write_nifti(d / "2d.nii.gz", np.zeros((8, 8), np.int16))
        return [str(d / "2d.nii.gz"), "-m", card], "image is 2D"
    if name == "nan":
        data = np.zeros((20, 20, 20), np.float32)
        data[3, 4, 5] = np.inf
        write_nifti(d / "nan.nii.gz", data)
        return [str(d / "nan.nii.gz"), "-m", card], "NaN/inf voxels"
    if name == "empty_axis":
        return [str(empty_axis(d / "empty.nii")), "-m", card], "empty axis"
    if name == "absurd_dims":
        return [str(absurd_header(d / "huge.nii.gz", 30000)), "-m", card], "refusing (corrupt header?)"
    if name == "dims_beyond_data":
        return [str(absurd_header(d / "big.nii.gz", 600)), "-m", card], "truncated or corrupt"
    if name == "unknown_model":
        return [ct, "-m", "ct-organz"], "unknown model 'ct-organz'"
    if name == "bad_checksum":
        data = yaml.safe_load(tiny_card.read_text())
        data["sha256"] = "f" * 64
        (d / "bad.yaml").write_text(yaml.safe_dump(data))
        shutil.copy(tiny_card.parent / data["weights"], d / data["weights"])
        return [ct, "-m", str(d / "bad.yaml")], "weights sha256 is"
    if name == "reference_grid":
        write_nifti(d / "ref.nii.gz", np.zeros((10, 10, 10), np.uint8))
        return [ct, "-m", card, "--reference", str(d / "ref.nii.gz")], "differs from the scan"
    if name == "reference_labels":
        ct = nib.load(d / "ct.nii.gz")
        nib.save(nib.Nifti1Image(np.full(ct.shape, 7, np.uint8), ct.affine, ct.header), d / "ref7.nii.gz")
        return [str(d / "ct.nii.gz"), "-m", card, "--reference", str(d / "ref7.nii.gz")], "reference has label 7"
    if name == "output_exists":
        (d / "ct_seg.nii.gz").write_bytes(b"previous result")
        return [ct, "-m", card], "output exists; pass --overwrite"
    raise AssertionError(name)


CASES = ["missing", "not_nifti", "truncated", "4d", "2d", "nan", "empty_axis", "absurd_dims", "dims_beyond_data", "unknown_model",
         "bad_checksum", "reference_grid", "reference_labels", "output_exists"]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_fails_cleanly(name: str, case_dir: Path, tiny_card: Path) -> None:
    args, message = make_case(name, case_dir, tiny_card)
    run_and_check_clean_failure(runner, app, ["segment-volume", *args, "--workers", "1"], case_dir, message)


def test_chunk_size_usage_error(case_dir: Path, tiny_card: Path) -> None:
    result = runner.invoke(app, ["segment-volume", str(case_dir / "ct.nii.gz"), "-m", str(tiny_card),
                                 "--chunk-size", "1,2"])
    assert result.exit_code == 2
    assert "--chunk-size needs 1 or 3 positive integers" in result.stderr


def test_debug_shows_traceback(case_dir: Path, tiny_card: Path) -> None:
    result = runner.invoke(app, ["--debug", "segment-volume", str(case_dir / "nope.nii.gz"), "-m", str(tiny_card)])
    assert result.exit_code != 0 and result.exception is not None
