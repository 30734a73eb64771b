"""Plumbing shared by the benchmarks: child processes (own peak RSS), timing both sides, the table."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def counting(network: Any, windows: list[int]) -> Callable[[Any], Any]:
    """Wrap a network so MONAI's windows are counted as they are evaluated."""
    def run(x: Any) -> Any:
        windows[0] += int(x.shape[0])
        return network(x)
    return run


def monai_in_memory(model: Any, x: Any) -> tuple[Any, int]:
    """MONAI's sliding window on the whole preprocessed array x (C, *spatial); returns (labels, windows)."""
    import torch
    from monai.inferers import sliding_window_inference

    windows = [0]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.network.to(device)
    with torch.inference_mode(), torch.autocast(device, dtype=torch.float16, enabled=device == "cuda"):
        logits = sliding_window_inference(torch.from_numpy(x)[None].to(device), model.roi_size,
                                          model.card.sw_batch_size, counting(model.network, windows),
                                          model.overlap, mode="gaussian")
    return logits[0].argmax(0).to(torch.uint8).cpu().numpy(), windows[0]


def run_ours(segment: Callable[..., Any], source: Path, model_name: str, out: Path, workers: int) -> dict[str, Any]:
    """Our front end on a LocalCluster started (and the model loaded in its workers) before timing."""
    from pipeline import load_model
    from pipeline.cluster import ClusterSettings, dask_client, worker_peak_rss
    from pipeline.engine.infer import preload_model
    from pipeline.engine.predictor import windows_evaluated

    started = time.perf_counter()
    with dask_client(ClusterSettings(workers=workers)) as client:
        preload_model(client, load_model(model_name))  # as on MONAI's side, model loading is not timed
        startup = time.perf_counter() - started
        start = time.perf_counter()
        segment(source, model=model_name, output=out, client=client, overwrite=True)
        seconds = time.perf_counter() - start
        windows = sum(client.run(windows_evaluated).values())
        workers_mb = worker_peak_rss(client) / 2**20
    return {"seconds": seconds, "startup_seconds": startup, "windows": windows, "peak_rss_mb": peak_rss_mb() + workers_mb}


def child(script: Path, kind: str, source: Path, model: str, workers: int, suffix: str) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (so its peak RSS is its own); returns its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(script), "--child", kind, "--source", str(source), "--model", model,
               "--workers", str(workers), "--out", str(Path(tmp) / f"mask{suffix}")]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def best_of(repeats: int, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return min((measure() for _ in range(repeats)), key=lambda r: r["seconds"])


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) + " (CUDA, AMP)" if torch.cuda.is_available() else "CPU"


def table(rows: list[dict[str, Any]], *, unit: str, model: str, workers: int) -> str:
    """Markdown: throughput ratio, windows ratio and peak RSS, one row per input size."""
    lines = [
        f"Model `{model}`; device: {device_name()}; ours: LocalCluster with {workers} worker processes "
        f"({platform.machine()}, {os.cpu_count()} cores).",
        "",
        f"| input | {unit} | MONAI M{unit}/s | ours M{unit}/s | ratio ours/MONAI | MONAI windows | ours windows "
        "| windows ratio | MONAI peak RSS MB | ours peak RSS MB (driver+workers) | ours cluster start + model load s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, o, n = r["monai"], r["ours"], r["size"]
        mv, ov = n / m["seconds"] / 1e6, n / o["seconds"] / 1e6
        lines.append(f"| {r['name']} | {n:,} | {mv:.3f} | {ov:.3f} | {ov / mv:.2f} | {m['windows']} | "
                     f"{o['windows']} | {o['windows'] / m['windows']:.3f} | {m['peak_rss_mb']:.0f} | "
                     f"{o['peak_rss_mb']:.0f} | {o['startup_seconds']:.1f} |")
    first, last = rows[0], rows[-1]
    lines += ["", f"Peak RSS of `{last['name']}` / `{first['name']}`: ours "
              f"{last['ours']['peak_rss_mb'] / first['ours']['peak_rss_mb']:.2f}x, MONAI "
              f"{last['monai']['peak_rss_mb'] / first['monai']['peak_rss_mb']:.2f}x."]
    return "\n".join(lines)


def write_results(section: str, body: str) -> None:
    """Replace (or append) one marked section of bench/RESULTS.md."""
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = f"{begin}\n{body}\n{end}"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n{block}\n"
    path.write_text(text)


def main(doc: str, *, script: Path, default_model: str, section: str, unit: str, suffix: str, heading: str,
         make_inputs: Callable[[Path, Any], dict[str, Path]], size_of: Callable[[Path], int],
         run_monai: Callable[[Path, str, Path], dict[str, Any]], segment: str,
         add_arguments: Callable[[Any], None] | None = None) -> None:
    """The command line shared by the benchmarks: parent (loop, table, RESULTS.md) or one child measurement.

    ``segment`` names our front end as ``module:function``, imported only in the child that uses it.
    """
    import argparse
    import importlib

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="best of N per measurement")
    parser.add_argument("--section", default=section)
    parser.add_argument("--child", choices=["monai", "ours"])
    parser.add_argument("--source", type=Path)
    parser.add_argument("--out", type=Path)
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args()
    if args.child == "monai":
        print(json.dumps(run_monai(args.source, args.model, args.out)))
        return
    if args.child == "ours":
        module, function = segment.split(":")
        front_end = getattr(importlib.import_module(module), function)
        print(json.dumps(run_ours(front_end, args.source, args.model, args.out, args.workers)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, source in make_inputs(Path(tmp), args).items():
            best = {kind: best_of(args.repeats, lambda kind=kind: child(
                script, kind, source, args.model, args.workers, suffix)) for kind in ("monai", "ours")}
            rows.append({"name": name, "size": size_of(source), **best})
            print(name, json.dumps(best), flush=True)
    body = table(rows, unit=unit, model=args.model, workers=args.workers)
    print(body)
    command = " ".join(["python", f"bench/{script.name}", *sys.argv[1:]])
    write_results(args.section, f"### {heading}\n\nRun: `{command}` on {time.strftime('%Y-%m-%d')}.\n\n{body}")
