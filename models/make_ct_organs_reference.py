"""Write the sample CT's reference mask in the ``ct-organs`` label space.

TotalSegmentator's labels (``data/medical/example_seg.nii.gz``) grouped exactly as the model
was trained (``CLASSES`` in ``train_ct_organs.py``), so ``./scripts/demo`` can report Dice.
Usage: ``python models/make_ct_organs_reference.py``
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from train_ct_organs import CLASSES

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "data" / "medical" / "example_seg.nii.gz"
TARGET = ROOT / "data" / "medical" / "example_ct_sm_ct-organs_ref.nii.gz"


def main() -> None:
    image = nib.load(SOURCE)
    ids = np.asanyarray(image.dataobj)
    lookup = np.zeros(256, dtype=np.uint8)
    for value, (_, _, source_ids) in CLASSES.items():
        lookup[source_ids] = value
    grouped = nib.Nifti1Image(lookup[ids], image.affine, image.header)
    grouped.set_data_dtype(np.uint8)
    nib.save(grouped, TARGET)
    print(TARGET, np.bincount(lookup[ids].ravel(), minlength=len(CLASSES)).tolist())


if __name__ == "__main__":
    main()
