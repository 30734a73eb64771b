"""What a segmentation run of the engine returns, whichever way it ran (network windows or a classical method).

Its own module so that :mod:`pipeline.engine.infer` (which dispatches) and :mod:`pipeline.engine.classical`
(one of the ways) both use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import zarr


@dataclass(frozen=True)
class InferenceResult:
    labels: zarr.Array
    probabilities: zarr.Array | None
    seconds: float
    windows: int
    blocks: int
    chunks: tuple[int, ...]
    blocks_resumed: int = 0  #: blocks a previous, interrupted run had finished (not recomputed)
    spill_bytes_peak: int = 0  #: most bytes of block overlaps (spills) alive in the work directory at once
    backend: str = "torch"  #: what ran the network: torch, openvino, or "classical" (no network)
    tasks_at_once: int = 1  #: block tasks the run kept in flight (the default runtime picks it per plan)
