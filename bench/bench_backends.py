"""Benchmark: one forward pass of a batch of real windows, torch eager vs OpenVINO (vs ONNX Runtime).

For each shipped model: a batch of ``--batch`` windows cut from its sample (``tests.factories.grid_windows``:
the windows the engine evaluates, preprocessed as the card says), timed on 1 and 2 threads, rounds
interleaved so load changes hit every backend alike; the conversion (empty disk cache: trace, convert, parity
check, save) and the cache load (a new process's first call: read + compile); and two concurrent predict
threads on one compiled network with 1 thread each vs one caller with 2 threads. ONNX Runtime is timed
only when it is installed (it is not a dependency).

    python bench/bench_backends.py [--models ct-organs,buildings,mr-brain] [--threads 1,2] [--rounds 15]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLES = {"ct-organs": "data/medical/example_ct_sm.nii.gz", "mr-brain": "data/medical/mni152_t1.nii.gz",
           "buildings": "data/geo/sample_geotiff.tif"}


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def onnxruntime_session(network: Any, x: Any, threads: int) -> Callable[[], Any] | None:
    """An ONNX Runtime session of ``network`` (dynamic batch), or None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import torch

    buffer = io.BytesIO()
    torch.onnx.export(network, (x,), buffer, input_names=["x"], output_names=["y"], dynamo=False,
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    array = x.numpy()
    return lambda: session.run(None, {"x": array})[0]


def concurrent(forward: Callable[[Any], Any], x: Any, calls: int, callers: int) -> float:
    """Seconds for ``calls`` forwards shared out to ``callers`` Python threads."""
    def work() -> None:
        for _ in range(calls // callers):
            forward(x)
    threads = [threading.Thread(target=work) for _ in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def bench_model(name: str, thread_counts: list[int], rounds: int, batch: int) -> list[str]:
    import torch

    from pipeline.engine import backends
    from pipeline.model.models import load_model
    from tests.factories import grid_windows

    model = load_model(name)
    network, window, channels = model.network, model.roi_size, model.card.in_channels
    x = grid_windows(model, ROOT / SAMPLES[name])[:batch].contiguous()
    kwargs = dict(backend="openvino", key=model.sha256, in_channels=channels, window=window, batch=batch)
    converted_before = backends.conversions[0]
    convert_s = timed(lambda: backends.compiled_forward(network, placement=backends.Placement(1), **kwargs))
    assert backends.conversions[0] == converted_before + 1, "the disk cache was not empty"
    backends.clear_cache()
    load_s = timed(lambda: backends.compiled_forward(network, placement=backends.Placement(1), **kwargs))
    rows = []
    with torch.inference_mode():
        expected = network(x).numpy()
    for threads in thread_counts:
        torch.set_num_threads(threads)
        ov = backends.compiled_forward(network, placement=backends.Placement(threads), **kwargs)
        assert isinstance(ov, backends.OpenVINOForward), "openvino fell back to torch"
        got = ov(x).numpy()
        diff = float(np.abs(backends.probabilities(got) - backends.probabilities(expected)).max())
        same = float((got.argmax(1) == expected.argmax(1)).mean())
        runs: dict[str, Callable[[], Any]] = {"torch": lambda: network(x), "openvino": lambda: ov(x)}  # noqa: B023
        ort = onnxruntime_session(network, x, threads)
        if ort is not None:
            runs["onnxruntime"] = ort
        times: dict[str, list[float]] = {k: [] for k in runs}
        with torch.inference_mode():
            for fn in runs.values():
                fn()  # warm-up
            for _ in range(rounds):
                for k, fn in runs.items():
                    times[k].append(timed(fn) * 1000)
        cells = [f"{statistics.median(times[k]):.0f} ({min(times[k]):.0f})" if k in times else "-"
                 for k in ("torch", "openvino", "onnxruntime")]
        speedup = statistics.median(times["torch"]) / statistics.median(times["openvino"])
        rows.append(f"| {name} | {threads} | {' | '.join(cells)} | {speedup:.2f}x | {diff:.1e} | {same:.6f} |")
    torch.set_num_threads(2)
    one = backends.compiled_forward(network, placement=backends.Placement(1), **kwargs)
    two = backends.compiled_forward(network, placement=backends.Placement(2), **kwargs)
    calls = 2 * max(rounds // 2, 2)
    pair = concurrent(one, x, calls, 2)
    single = concurrent(two, x, calls, 1)
    rows.append(f"| {name} | conversion {convert_s:.1f} s, cache load {load_s:.2f} s; {calls} batches: 2 threads x "
                f"1 OV thread {pair * 1000 / calls:.0f} ms/batch, 1 thread x 2 OV threads "
                f"{single * 1000 / calls:.0f} ms/batch |||||||")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ct-organs,buildings,mr-brain")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="volseg-bench-cache-") as cache:
        os.environ["VOLSEG_CACHE_DIR"] = cache  # conversions are timed from an empty cache
        print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
        print("| model | threads | torch ms median (min) | openvino | onnxruntime | torch / openvino "
              "| max prob diff | argmax equal |")
        print("|---|---|---|---|---|---|---|---|")
        for name in args.models.split(","):
            for row in bench_model(name, [int(t) for t in args.threads.split(",")], args.rounds, args.batch):
                print(row, flush=True)
        print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
