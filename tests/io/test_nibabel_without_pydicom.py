"""nibabel comes without pydicom (a third of a run's imports), DICOM extensions stay bytes, pydicom still imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def test_a_nifti_run_does_not_import_pydicom_and_keeps_dicom_extensions(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    image.header.extensions.append(nib.nifti1.Nifti1Extension(2, b"raw DICOM bytes"))
    path = tmp_path / "with_extension.nii"
    nib.save(image, path)
    code = f"""
import sys
import pipeline.io.nifti
assert "pydicom" not in sys.modules, "pydicom imported"
import nibabel
ext = nibabel.load({str(path)!r}).header.extensions[0]
assert ext.get_code() == 2 and bytes(ext.get_content())[:15] == b"raw DICOM bytes", ext
import pydicom  # the DICOM input still gets it
print(pydicom.__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pydicom"
