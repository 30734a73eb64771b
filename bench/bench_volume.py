"""Benchmark (3D): this engine vs MONAI in-memory sliding window, same model and volumes, one run.

Each measurement runs in its own child process so its peak RSS is its own:
- ``monai``: nibabel load -> preprocess -> ``sliding_window_inference`` on the whole volume -> argmax -> save.
- ``ours``: ``segment_volume`` on a LocalCluster started (model loaded in its workers) before timing;
  peak RSS = driver + every worker process. Includes tiling to Zarr, writing the mask and the report.
Volumes: the shipped sample CT, and the same CT tiled 2x2x2 (8x the voxels), 4x4x4 (64x) with ``--largest 4``.

    python bench/bench_volume.py [--model ct-organs] [--workers 2] [--repeats 2] [--largest 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, best_of, child, monai_in_memory, peak_rss_mb, run_ours, table, write_results  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ct-organs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="best of N per measurement")
    parser.add_argument("--section", default="volume-cpu")
    parser.add_argument("--largest", type=int, default=2, help="largest tiling factor per axis (2: 8x, 4: 64x)")
    parser.add_argument("--child", choices=["monai", "ours"])
    parser.add_argument("--source", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child == "monai":
        print(json.dumps(run_monai(args.source, args.model, args.out)))
        return
    if args.child == "ours":
        from pipeline.segment import segment_volume

        print(json.dumps(run_ours(segment_volume, args.source, args.model, args.out, args.workers)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, scan in make_volumes(Path(tmp), args.largest).items():
            import nibabel as nib

            best = {kind: best_of(args.repeats, lambda kind=kind: child(
                Path(__file__), kind, scan, args.model, args.workers, ".nii.gz")) for kind in ("monai", "ours")}
            rows.append({"name": name, "size": int(np.prod(nib.load(scan).shape)), **best})
            print(name, json.dumps(best), flush=True)
    body = table(rows, unit="vox", model=args.model, workers=args.workers)
    print(body)
    write_results(args.section, f"### 3D volumes\n\nRun: `python bench/bench_volume.py --model {args.model} "
                                f"--workers {args.workers} --repeats {args.repeats} --largest {args.largest}` on {time.strftime('%Y-%m-%d')}."
                                f"\n\n{body}")


if __name__ == "__main__":
    main()
