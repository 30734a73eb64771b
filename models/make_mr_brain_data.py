"""Write the ``mr-brain`` training pair from the MNI ICBM152 2009 template that nilearn ships.

Source: the nilearn 0.14.1 wheel (``pip download --no-deps nilearn==0.14.1 -d /tmp/nl``) holds, under
``nilearn/datasets/data/``, the ICBM152 2009a nonlinear *symmetric* template at 1 mm (197x233x189, uint8,
RAS, already brain-extracted: zero outside the brain) and its grey- and white-matter probability maps
(uint8, 255 = probability 1). No CSF map is in the wheel, so there is no CSF class.

What this writes (3 mm voxels, cropped to the brain's bounding box plus a 3 mm margin):

- ``data/medical/mni152_t1.nii.gz``: the T1 template, mean of each 3x3x3 block, rounded to uint8.
- ``data/medical/mni152_t1_mr-brain_ref.nii.gz``: labels, uint8: 0 background (everything else: CSF,
  partial-volume edge voxels, outside the brain), 1 grey matter, 2 white matter. Each 3 mm voxel takes
  the largest of its mean GM probability, mean WM probability and the remainder 1 - GM - WM, i.e. a voxel is
  GM (WM) when that probability is above 1/3 and above the other two. These labels are the template's own
  tissue priors, not a manual segmentation.

Deterministic (block means and an argmax: no random draws). Usage::

    python models/make_mr_brain_data.py [DIR_WITH_MNI_FILES] [OUT_DIR]

``DIR_WITH_MNI_FILES`` defaults to ``/tmp/nl/x/nilearn/datasets/data`` (the wheel unzipped into ``/tmp/nl/x``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path("/tmp/nl/x/nilearn/datasets/data")
NAME = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
FACTOR = 3  # 1 mm -> 3 mm
MARGIN = 3  # source voxels kept around the brain's bounding box


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean of each f x f x f block (shape must be a multiple of f)."""
    s = a.shape
    return a.reshape(s[0] // f, f, s[1] // f, f, s[2] // f, f).mean(axis=(1, 3, 5))


def crop_box(mask: np.ndarray, f: int, margin: int) -> tuple[slice, ...]:
    """The mask's bounding box plus ``margin``, grown to a multiple of ``f`` and kept inside the array."""
    box = []
    for axis, size in enumerate(mask.shape):
        idx = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
        lo, hi = max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, size)
        n = -(-(hi - lo) // f) * f
        lo = max(min(lo, size - n), 0)
        box.append(slice(lo, lo + n))
    return tuple(box)


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE
    out_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "data" / "medical"
    t1_img = nib.load(source / NAME.format("t1"))
    t1, gm, wm = (np.asarray(nib.load(source / NAME.format(n)).dataobj, dtype=np.float64) for n in ("t1", "gm", "wm"))
    box = crop_box((t1 > 0) | (gm > 0) | (wm > 0), FACTOR, MARGIN)

    image = np.rint(block_mean(t1[box], FACTOR)).astype(np.uint8)
    p_gm, p_wm = block_mean(gm[box] / 255.0, FACTOR), block_mean(wm[box] / 255.0, FACTOR)
    rest = np.clip(1.0 - p_gm - p_wm, 0.0, None)
    labels = np.argmax(np.stack([rest, p_gm, p_wm]), axis=0).astype(np.uint8)  # ties -> lower class

    # new voxel (0,0,0) is the centre of source block starting at the crop origin
    offset = np.array([s.start for s in box], dtype=np.float64) + (FACTOR - 1) / 2
    scale = np.diag([FACTOR, FACTOR, FACTOR, 1.0])
    scale[:3, 3] = offset
    affine = t1_img.affine @ scale

    out_dir.mkdir(parents=True, exist_ok=True)
    for array, name in ((image, "mni152_t1.nii.gz"), (labels, "mni152_t1_mr-brain_ref.nii.gz")):
        img = nib.Nifti1Image(array, affine)
        img.set_data_dtype(np.uint8)
        img.set_qform(affine, code=1)  # scanner
        img.set_sform(affine, code=4)  # MNI152
        img.header["xyzt_units"] = 2 + 8  # mm, s
        nib.save(img, out_dir / name)
        print(out_dir / name, array.shape, (out_dir / name).stat().st_size, "bytes")
    print("crop (1 mm voxels):", [(s.start, s.stop) for s in box])
    print("label counts (background, GM, WM):", np.bincount(labels.ravel(), minlength=3).tolist())


if __name__ == "__main__":
    main()
