"""Peak memory depends on the block size, not on the volume: an 8x larger scan costs (almost) no more.

The old engine held a front of partial sums as wide as the volume's cross-section; the runner holds
only the tasks in flight (spills live on disk). Measured from outside, as peak PSS of the whole
process tree, like the benchmark does.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import torch
from monai.inferers import sliding_window_inference

from pipeline.model.models import load_model
from tests.factories import write_nifti

PIPELINE = Path(sys.executable).parent / "pipeline"


def tree_pss(root: psutil.Process) -> int:
    """PSS of a process and its descendants (shared pages counted once across the tree)."""
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            with open(f"/proc/{proc.pid}/smaps_rollup", encoding="ascii") as fh:
                total += sum(int(line.split()[1]) * 1024 for line in fh if line.startswith("Pss:"))
        except OSError:  # exited meanwhile
            pass
    return total


def peak_pss(command: list[str]) -> int:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_pss(root))
        time.sleep(0.02)
    assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
    return peak


def mirrored(scan: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Tile a scan by mirroring (anatomy stays continuous across copies), cut to ``shape``."""
    out = scan
    for axis, n in enumerate(shape):
        copies = [np.flip(out, axis) if i % 2 else out for i in range(-(-n // out.shape[axis]))]
        out = np.take(np.concatenate(copies, axis=axis), range(n), axis=axis)
    return out


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_volume(tmp_path: Path, tiny_card: Path, data_dir: Path) -> None:
    ct = nib.load(data_dir / "medical" / "example_ct_sm.nii.gz")
    base = np.asarray(ct.dataobj)
    small = write_nifti(tmp_path / "small.nii", mirrored(base, (80, 80, 40)), ct.affine)
    large = write_nifti(tmp_path / "large.nii", mirrored(base, (160, 160, 80)), ct.affine)  # 8x the voxels
    run = [str(PIPELINE), "segment-volume", "-m", str(tiny_card), "--chunk-size", "32,32,16", "--no-html"]
    small_peak = peak_pss([*run, str(small), "-o", str(tmp_path / "small_seg.nii")])
    large_peak = peak_pss([*run, str(large), "-o", str(tmp_path / "large_seg.nii")])
    print(f"peak PSS: small {small_peak / 2**20:.0f} MB, 8x larger {large_peak / 2**20:.0f} MB")
    # The 8x input itself is 28 MB larger as int16 and 57 MB as float32 slabs: allow that and noise, no more.
    assert large_peak <= small_peak * 1.15 + 64 * 2**20

    # ... and still MONAI's result, checked on the small scan.
    model = load_model(tiny_card)
    x = torch.from_numpy(model.preprocess(np.asarray(nib.load(small).dataobj)[None]))[None]
    with torch.inference_mode():
        expected = sliding_window_inference(x, model.roi_size, 4, model.network, model.overlap, mode="gaussian")
    ours = np.asarray(nib.load(tmp_path / "small_seg.nii").dataobj)
    assert np.mean(ours == expected[0].argmax(0).numpy()) >= 0.9999
