"""nibabel, imported without its optional pydicom: a third of a run's imports for a feature masks do not use.

``nibabel.nifti1`` imports pydicom when it is installed (the DICOM input needs it) only to parse the DICOM
extensions (code 2) some NIfTI headers carry; without it nibabel keeps them as raw bytes, which is all a
mask needs. Measured: 0.26 s of every run's start-up on this machine. ``None`` in ``sys.modules`` makes that
import fail during nibabel's import alone; the DICOM path imports pydicom itself, later, as usual. Nothing
is hidden when pydicom or nibabel is already imported.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def _pydicom_hidden() -> Iterator[None]:
    if "pydicom" in sys.modules or "nibabel.nifti1" in sys.modules:
        yield
        return
    sys.modules["pydicom"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if "pydicom" in sys.modules and sys.modules["pydicom"] is None:
            del sys.modules["pydicom"]


with _pydicom_hidden():
    import nibabel as nib
    from nibabel.volumeutils import apply_read_scaling

__all__ = ["apply_read_scaling", "nib"]
