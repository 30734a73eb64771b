"""Benchmark: this engine vs MONAI in-memory sliding window, same model, same volumes, one run.

Each measurement runs in its own child process so its peak RSS is its own:
- ``monai``: nibabel load -> preprocess -> ``sliding_window_inference`` on the whole volume -> argmax -> save.
- ``ours``: ``segment_volume`` on a LocalCluster started beforehand (cluster start-up is timed separately);
  peak RSS = driver + every worker process.
Volumes: the shipped sample CT, and the same CT tiled 2x2x2 (8x the voxels).
Writes a Markdown table to ``bench/RESULTS.md`` (section between markers) and prints it.

    python bench/bench_volume.py [--model ct-organs] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "medical" / "example_ct_sm.nii.gz"


def make_volumes(directory: Path) -> dict[str, Path]:
    """The sample CT and an 8x version (tiled 2x2x2, same voxel size)."""
    import nibabel as nib

    image = nib.load(SAMPLE)
    big = np.tile(np.asanyarray(image.dataobj), (2, 2, 2))
    path = directory / "ct_8x.nii.gz"
    nib.save(nib.Nifti1Image(big, image.affine, image.header), path)
    return {"sample": SAMPLE, "8x": path}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_monai(scan: Path, model_name: str, out: Path) -> dict[str, Any]:
    import nibabel as nib
    import torch
    from monai.inferers import sliding_window_inference

    from pipeline import load_model

    model = load_model(model_name)
    windows = [0]

    def counted(x: torch.Tensor) -> torch.Tensor:
        windows[0] += int(x.shape[0])
        return model.network(x)

    start = time.perf_counter()
    image = nib.load(scan)
    x = torch.from_numpy(model.preprocess(np.asanyarray(image.dataobj)[None]))[None]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.network.to(device)
    with torch.inference_mode(), torch.autocast(device, dtype=torch.float16, enabled=device == "cuda"):
        logits = sliding_window_inference(x.to(device), model.roi_size, model.card.sw_batch_size, counted,
                                          model.overlap, mode="gaussian")
    labels = logits[0].argmax(0).to(torch.uint8).cpu().numpy()
    nib.save(nib.Nifti1Image(labels, image.affine, image.header), out)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "voxels": int(np.prod(image.shape)), "windows": windows[0], "peak_rss_mb": peak_rss_mb()}


def run_ours(scan: Path, model_name: str, out: Path, workers: int) -> dict[str, Any]:
    from pipeline.cluster import ClusterSettings, dask_client, worker_peak_rss
    from pipeline import load_model
    from pipeline.engine.predictor import windows_evaluated
    from pipeline.infer import preload_model
    from pipeline.segment import segment_volume

    started = time.perf_counter()
    with dask_client(ClusterSettings(workers=workers)) as client:
        preload_model(client, load_model(model_name))  # as MONAI's side, model loading is not timed
        startup = time.perf_counter() - started
        start = time.perf_counter()
        result = segment_volume(scan, model=model_name, output=out, client=client, overwrite=True)
        seconds = time.perf_counter() - start
        windows = sum(client.run(windows_evaluated).values())
        workers_mb = worker_peak_rss(client) / 2**20
    return {"seconds": seconds, "startup_seconds": startup, "voxels": int(np.prod(result.report["input"]["shape"])),
            "windows": windows, "peak_rss_mb": peak_rss_mb() + workers_mb}


def child(kind: str, scan: Path, model: str, workers: int) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; returns its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", kind, "--scan", str(scan), "--model", model,
               "--workers", str(workers), "--out", str(Path(tmp) / "mask.nii.gz")]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]], device: str, model: str, workers: int) -> str:
    lines = [
        f"Model `{model}`; device: {device}; ours: LocalCluster with {workers} worker processes "
        f"({platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores).",
        "",
        "| volume | voxels | MONAI Mvox/s | ours Mvox/s | ratio ours/MONAI | MONAI windows | ours windows "
        "| windows ratio | MONAI peak RSS MB | ours peak RSS MB (driver+workers) | ours cluster start + model load s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, o = r["monai"], r["ours"]
        mv, ov = m["voxels"] / m["seconds"] / 1e6, o["voxels"] / o["seconds"] / 1e6
        lines.append(f"| {r['name']} | {m['voxels']:,} | {mv:.3f} | {ov:.3f} | {ov / mv:.2f} | {m['windows']} | "
                     f"{o['windows']} | {o['windows'] / m['windows']:.3f} | {m['peak_rss_mb']:.0f} | "
                     f"{o['peak_rss_mb']:.0f} | {o['startup_seconds']:.1f} |")
    small, big = rows[0]["ours"]["peak_rss_mb"], rows[-1]["ours"]["peak_rss_mb"]
    lines += ["", f"Ours: peak RSS of the {rows[-1]['name']} volume / {rows[0]['name']}: {big / small:.2f}x "
              f"(MONAI: {rows[-1]['monai']['peak_rss_mb'] / rows[0]['monai']['peak_rss_mb']:.2f}x)."]
    return "\n".join(lines)


def write_results(section: str, body: str) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = f"{begin}\n{body}\n{end}"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n{block}\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ct-organs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="best of N per measurement")
    parser.add_argument("--child", choices=["monai", "ours"])
    parser.add_argument("--scan", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--section", default="volume-cpu")
    args = parser.parse_args()
    if args.child:
        run = run_monai(args.scan, args.model, args.out) if args.child == "monai" else \
            run_ours(args.scan, args.model, args.out, args.workers)
        print(json.dumps(run))
        return
    import torch

    device = torch.cuda.get_device_name(0) + " (CUDA, AMP)" if torch.cuda.is_available() else "CPU"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, scan in make_volumes(Path(tmp)).items():
            best = {k: min((child(k, scan, args.model, args.workers) for _ in range(args.repeats)),
                           key=lambda r: r["seconds"]) for k in ("monai", "ours")}
            rows.append({"name": name, **best})
            print(name, json.dumps(best), flush=True)
    body = table(rows, device, args.model, args.workers)
    print(body)
    write_results(args.section, f"Run: `python bench/bench_volume.py --model {args.model} --workers {args.workers} "
                                f"--repeats {args.repeats}` on {time.strftime('%Y-%m-%d')}.\n\n{body}")


if __name__ == "__main__":
    main()
