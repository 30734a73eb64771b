"""Benchmark (3D): this engine vs MONAI in-memory sliding window, same model and volumes, one run.

Each measurement runs in its own child process so its peak RSS is its own:
- ``monai``: nibabel load -> preprocess -> ``sliding_window_inference`` on the whole volume -> argmax -> save.
- ``ours``: ``segment_volume`` on a LocalCluster started (model loaded in its workers) before timing;
  peak RSS = driver + every worker process. Includes tiling to Zarr, writing the mask and the report.
Volumes: the shipped sample CT, and the same CT tiled 2x2x2 (8x the voxels), 4x4x4 (64x) with ``--largest 4``.

    python bench/bench_volume.py [--model ct-organs] [--workers 2] [--repeats 2] [--largest 4]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, main, monai_in_memory, peak_rss_mb  # noqa: E402

SAMPLE = ROOT / "data" / "medical" / "example_ct_sm.nii.gz"


def make_volumes(directory: Path, largest: int) -> dict[str, Path]:
    """The sample CT and copies tiled n x n x n (n**3 times the voxels), for n = 2 .. ``largest``."""
    import nibabel as nib

    image = nib.load(SAMPLE)
    volumes = {"sample": SAMPLE}
    for n in range(2, largest + 1, 2):
        path = directory / f"ct_{n ** 3}x.nii.gz"
        nib.save(nib.Nifti1Image(np.tile(np.asanyarray(image.dataobj), (n, n, n)), image.affine, image.header), path)
        volumes[f"{n ** 3}x (tiled {n}x{n}x{n})"] = path
    return volumes


def run_monai(scan: Path, model_name: str, out: Path) -> dict[str, Any]:
    import nibabel as nib

    from pipeline import load_model

    model = load_model(model_name)
    start = time.perf_counter()
    image = nib.load(scan)
    labels, windows = monai_in_memory(model, model.preprocess(np.asanyarray(image.dataobj)[None]))
    nib.save(nib.Nifti1Image(labels, image.affine, image.header), out)
    return {"seconds": time.perf_counter() - start, "windows": windows, "peak_rss_mb": peak_rss_mb()}


def size_of(scan: Path) -> int:
    import nibabel as nib

    return int(np.prod(nib.load(scan).shape))


if __name__ == "__main__":
    main(__doc__, script=Path(__file__), default_model="ct-organs", section="volume-cpu", unit="vox",
         suffix=".nii.gz", heading="3D volumes", make_inputs=lambda tmp, args: make_volumes(tmp, args.largest),
         size_of=size_of, run_monai=run_monai, segment="pipeline.segment.volume:segment_volume",
         add_arguments=lambda parser: parser.add_argument(
             "--largest", type=int, default=2, help="largest tiling factor per axis (2: 8x, 4: 64x)"))
