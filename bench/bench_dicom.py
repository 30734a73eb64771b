"""Benchmark (DICOM): reading a series into the work store vs the same volume from NIfTI, and SEG writing.

The sample CT is written as a DICOM series of ``--slices`` slices (the sample's 30 repeated along k), and
as a NIfTI file of the same voxels. Measured in this process: tiling into a Zarr array (seconds; Python peak
allocations by tracemalloc, in a second run), and writing the ct-organs reference (tiled the same way) as a
BINARY and a LABELMAP DICOM SEG (seconds, size, frames), per 100 slices. Timings need a quiet machine.

    python bench/bench_dicom.py [--slices 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _volumes(slices: int) -> tuple[Any, np.ndarray, np.ndarray]:
    import nibabel as nib

    ct = nib.load(ROOT / "data" / "medical" / "example_ct_sm.nii.gz")
    ref = nib.load(ROOT / "data" / "medical" / "example_ct_sm_ct-organs_ref.nii.gz")
    repeat = -(-slices // ct.shape[2])
    values = np.concatenate([np.clip(np.asarray(ct.dataobj), -1024, None)] * repeat, axis=2)[:, :, :slices]
    labels = np.concatenate([np.asarray(ref.dataobj).astype(np.uint8)] * repeat, axis=2)[:, :, :slices]
    return ct.affine, values.astype(np.int16), labels


def _timed(call: Any) -> tuple[Any, float, float]:
    """(value, seconds of an untraced call, MiB peak of Python allocations in a second, traced call)."""
    started = time.perf_counter()
    value = call()
    seconds = time.perf_counter() - started
    tracemalloc.start()  # tracing slows allocation-heavy code many times over: never in the timed call
    call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return value, seconds, peak / 2**20


def run(slices: int, directory: Path) -> dict[str, Any]:
    import nibabel as nib
    import zarr

    from pipeline.io.dicom import open_series, stream_to_array
    from pipeline.io.dicom_seg import write_dicom_seg
    from pipeline.io.nifti import open_scan
    from pipeline.io.nifti import stream_to_array as nifti_stream
    from pipeline.model.models import load_model
    from tests.dicom.series import write_series

    affine, values, labels = _volumes(slices)
    write_series(values, affine, directory / "series")
    nib.save(nib.Nifti1Image(values, affine), directory / "volume.nii.gz")
    facts: dict[str, Any] = {"shape": list(values.shape)}
    for name, source, stream in (("dicom", open_series(directory / "series"), stream_to_array),
                                 ("nifti", open_scan(directory / "volume.nii.gz"), nifti_stream)):
        target = zarr.create_array(zarr.storage.LocalStore(directory / f"{name}.zarr"), shape=(1, *values.shape),
                                   chunks=(1, 128, 128, 64), dtype="float32")
        _, seconds, peak = _timed(lambda source=source, stream=stream, target=target: stream(source, target))
        facts[f"tile_{name}"] = {"seconds": round(seconds, 3), "python_peak_mb": round(peak, 2)}
    series, model = open_series(directory / "series"), load_model("ct-organs")
    for kind in ("binary", "labelmap"):
        seg, seconds, peak = _timed(lambda kind=kind: write_dicom_seg(labels, series, model, directory / f"{kind}.dcm",
                                                                      segmentation_type=kind))
        facts[f"seg_{kind}"] = {"seconds_per_100_slices": round(seconds * 100 / slices, 3),
                                "mb_per_100_slices": round(seg.bytes / 1e6 * 100 / slices, 3), "frames": seg.frames,
                                "python_peak_mb": round(peak, 1)}
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(args.slices, Path(tmp)), indent=2))


if __name__ == "__main__":
    main()
