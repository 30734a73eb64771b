"""Windows per OpenVINO call: time per window and resident memory, each call size in a fresh process.

    python bench/call_size.py [--model ct-organs] [--sizes 1,2,4] [--repeats 2] [--windows 96]

For each size (alternating, ``--repeats`` rounds): a child process loads the card's checked conversion (run
``pipeline segment-volume`` once first, which converts), compiles it on every core, runs one call of random
windows and then ``--windows`` windows in calls of that size, and prints ms per window and its RSS after
compiling, after the first call and at the end. OpenVINO keeps buffers for the largest call it has seen, so
the RSS growth is what that call size costs (``pipeline/engine/forward.py``, ``OPENVINO_BATCH_VOXELS``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
from pipeline.engine import backends
from pipeline.model.models import load_model

size, windows, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 1e6
model = load_model(name)
forward = backends.card_forward(model.ref.identity(), in_channels=model.card.in_channels,
                                window=tuple(model.roi_size))
if forward is None:
    sys.exit(f"no checked OpenVINO conversion of {name} yet: run pipeline segment-volume once first")
compiled = rss()
x = np.random.default_rng(0).standard_normal((size, model.card.in_channels, *model.roi_size), dtype=np.float32)
forward.run(x)
first = rss()
start, done = time.perf_counter(), 0
while done < windows:
    forward.run(x)
    done += size
print(json.dumps({"size": size, "ms_per_window": (time.perf_counter() - start) / done * 1000,
                  "rss_compiled_mb": compiled, "rss_first_mb": first, "rss_end_mb": rss()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ct-organs")
    parser.add_argument("--sizes", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--windows", type=int, default=96)
    args = parser.parse_args()
    print("| windows per call | ms per window | RSS compiled MB | RSS after first call MB | RSS at end MB |")
    print("|---|---|---|---|---|")
    for _ in range(args.repeats):
        for size in (int(s) for s in args.sizes.split(",")):
            out = subprocess.run([sys.executable, "-c", CHILD, str(size), str(args.windows), args.model],
                                 check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            print(f"| {size} | {row['ms_per_window']:.1f} | {row['rss_compiled_mb']:.0f} | "
                  f"{row['rss_first_mb']:.0f} | {row['rss_end_mb']:.0f} |")


if __name__ == "__main__":
    main()
