"""Write the sample CT's reference mask in the ``ct-organs`` label space.

TotalSegmentator's labels (``data/medical/example_seg.nii.gz``) grouped exactly as the model is
trained: by the ``label_map`` of the ``ct-organs`` dataset in ``data_catalog.yaml``, so
``./scripts/demo`` can report Dice. Usage: ``python models/make_ct_organs_reference.py [OUTPUT]``
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.config.catalog import load_catalog
from pipeline.train.datasets import group_labels

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "data" / "medical" / "example_ct_sm_ct-organs_ref.nii.gz"
N_CLASSES = 6


def main() -> None:
    entry = load_catalog(ROOT / "data_catalog.yaml").dataset("ct-organs")
    source = entry.pairs[0].labels
    image = nib.load(source)
    grouped = group_labels(np.asanyarray(image.dataobj), entry.label_map, N_CLASSES, source)
    out = nib.Nifti1Image(grouped, image.affine, image.header)
    out.set_data_dtype(np.uint8)
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else TARGET
    nib.save(out, target)
    print(target, np.bincount(grouped.ravel(), minlength=N_CLASSES).tolist())


if __name__ == "__main__":
    main()
