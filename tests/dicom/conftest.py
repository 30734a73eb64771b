"""DICOM series built from the shipped sample CT, in several storage orientations and encodings."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.dicom.series import INTERCEPT

DATA = Path(__file__).resolve().parents[2] / "data" / "medical"


@pytest.fixture(scope="session")
def sample_ct() -> nib.Nifti1Image:
    """The shipped CT (122 x 101 x 30, 3 mm, RAS), HU clipped to what the series' uint16 + -1024 holds."""
    image = nib.load(DATA / "example_ct_sm.nii.gz")
    values = np.clip(np.asarray(image.dataobj), INTERCEPT, None).astype(np.int16)
    return nib.Nifti1Image(values, image.affine)


def reoriented(image: nib.Nifti1Image, codes: str) -> nib.Nifti1Image:
    """The same voxels stored along other axes (``codes``: e.g. ``LPS``, ``LIP``); same place in space."""
    target = nib.orientations.axcodes2ornt(tuple(codes))
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(image.affine), target)
    return image.as_reoriented(transform)


def rotated(image: nib.Nifti1Image, degrees: float, axis: int = 0) -> nib.Nifti1Image:
    """The image turned about a world axis through the origin: an oblique acquisition."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = [i for i in range(3) if i != axis]
    turn = np.eye(4)
    turn[a, a], turn[a, b], turn[b, a], turn[b, b] = c, -s, s, c
    return nib.Nifti1Image(np.asarray(image.dataobj), turn @ image.affine)


@pytest.fixture(scope="session")
def sample_ref() -> nib.Nifti1Image:
    """The shipped ct-organs reference mask of the sample CT (labels 0..5), on its grid."""
    image = nib.load(DATA / "example_ct_sm_ct-organs_ref.nii.gz")
    return nib.Nifti1Image(np.asarray(image.dataobj).astype(np.uint8), image.affine)


def dciodvfy(path: Path, *, warnings: bool = False) -> list[str]:
    """The ``Error`` lines (and ``Warning`` lines, with ``warnings``) dicom3tools' validator prints for a file
    (skips locally without it, fails in CI)."""
    import shutil
    import subprocess

    from tests.report.conftest import require

    tool = shutil.which("dciodvfy")
    require(tool is not None, "dciodvfy (dicom3tools)")
    done = subprocess.run([str(tool), str(path)], capture_output=True, text=True, timeout=120, check=False)
    kinds = ("Error", "Warning") if warnings else ("Error",)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(kinds)]
