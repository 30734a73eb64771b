"""What a run will cost, from its plan alone, before any byte is read or written.

A pure estimate from the image shape, the block and window sizes, the class count and the worker
count: peak memory per worker and in all, the number of Dask tasks, and the work store's size.
:func:`check_plan` refuses a run that cannot fit (one line, with the estimate) instead of letting
it swap, be killed, fill the disk or spend minutes scheduling tiny blocks.

The memory model follows the engine (``pipeline/engine/runner.py``, DESIGN.md "Memory"): one block
task per worker thread is in flight, each holding its input span, its float32 sums over the span,
its own block's sums and one spill piece at a time. It is an upper bound for the arrays; the
per-process base (Python, torch, MONAI, the model) is measured. The spills live on disk: about one
layer of blocks' worth at once, counted in the work store's size.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.engine.infer import tasks_at_once
from pipeline.engine.windows import balanced_chunks, plan_axis, window_grid
from pipeline.errors import SettingsError
from pipeline.segment.domain import PlanInputs

#: Resident memory of one worker process with torch, MONAI and a small model loaded, and of the driver.
WORKER_BASE = 450 * 2**20
DRIVER_BASE = 600 * 2**20
#: Refuse plans with more tasks than this: the driver and scheduler hold every task of the graph.
MAX_TASKS = 250_000
#: ... or with more blocks per window than this: then the run is all per-task overhead (measured:
#: ``--chunk-size 1`` on a 24x24x16 scan, 9216 blocks for 4 windows, ran past 150 s; the default, 3 s).
MAX_BLOCKS_PER_WINDOW = 8
#: Block tasks per worker thread the default blocks aim for (as in infer.py).
TASKS_PER_WORKER = 4


@dataclass(frozen=True)
class PlanEstimate:
    """The cost of one run's plan."""

    chunks: tuple[int, ...]  #: the inference blocks the engine will use
    blocks: int
    windows: int
    tasks: int  #: block tasks
    worker_bytes: int  #: peak resident memory of one worker process, or of the in-process worker (upper bound)
    peak_bytes: int  #: driver + all workers
    store_bytes: int  #: the work store, uncompressed (upper bound)

    def describe(self) -> str:
        return (f"{self.blocks} blocks of {'x'.join(map(str, self.chunks))}, {self.tasks} tasks, "
                f"~{_size(self.worker_bytes)} per worker, ~{_size(self.peak_bytes)} in all, "
                f"work store up to {_size(self.store_bytes)}")


def _size(n: int) -> str:
    from dask.utils import format_bytes

    return format_bytes(n)


def clip_chunks(chunks: Sequence[int] | None, shape: Sequence[int]) -> tuple[int, ...] | None:
    """Blocks no larger than the image: a 700-voxel block on a 24-voxel axis is a 24-voxel block."""
    if chunks is None:
        return None
    if len(chunks) != len(shape) or min(chunks) < 1:
        raise SettingsError(f"chunks must be {len(shape)} positive integers, got {tuple(chunks)}")
    return tuple(min(int(c), int(s)) for c, s in zip(chunks, shape, strict=True))


@dataclass(frozen=True, slots=True)
class Tiling:
    """How the engine will cut the image: the model's window, its overlap and the blocks."""

    roi: Sequence[int]  #: the window in the image's pixels or voxels
    overlap: Sequence[float]  #: per axis
    chunks: Sequence[int] | None  #: the blocks asked for; None: ``default`` balanced over the workers
    default: Sequence[int]  #: the engine's default blocks for this window


def estimate_plan(shape: Sequence[int], tiling: Tiling, inputs: PlanInputs, *, classes: int, workers: int,
                  processes: int = 0, probabilities: bool = False, adaptive: int = 0) -> PlanEstimate:
    """Estimate a run's plan (pure). ``workers``: task slots (worker threads in all); ``processes``: local
    worker processes (0: the in-process runtime); ``probabilities``: the work store also holds them;
    ``adaptive``: the default runtime's most tasks at once (0: another runtime), counted as if the network
    ran on OpenVINO, the backend that runs them (an upper bound)."""
    shape = tuple(int(n) for n in shape)
    in_channels, itemsize, valid_mask = inputs.in_channels, inputs.itemsize, inputs.valid_mask
    slots = max(1, workers)
    grid = window_grid(shape, tuple(tiling.roi), tuple(tiling.overlap))
    block = tuple(tiling.chunks) if tiling.chunks else balanced_chunks(grid, tiling.default, TASKS_PER_WORKER * slots)
    plans = [plan_axis(axis, side) for axis, side in zip(grid.axes, block, strict=True)]
    blocks = math.prod(len(p.blocks) for p in plans)
    span = math.prod(max(g.hi - g.lo for g in p.groups) for p in plans)
    side = math.prod(min(b, s) for b, s in zip(block, shape, strict=True))
    sums = 4 * (classes + 1) * span
    own = 4 * (2 * classes + 1) * side + 2 * side  # own sums, quotient, labels
    task = sums + own + 4 * in_channels * span + max(sums - 4 * (classes + 1) * side, 0)  # + one spill piece
    in_flight = max(slots, tasks_at_once(blocks, adaptive, "openvino") if adaptive else 0)
    per_process = max(1, math.ceil(in_flight / max(processes, 1)))
    worker = WORKER_BASE + per_process * task
    peak = DRIVER_BASE + processes * WORKER_BASE + in_flight * task
    voxels = math.prod(shape)
    layer = blocks // max(1, len(plans[0].blocks))  # spills alive: about one layer of blocks
    spills = layer * max(sums - 4 * (classes + 1) * side, 0)
    store = voxels * (in_channels * itemsize + 2 + (1 if valid_mask else 0) + (2 * classes if probabilities else 0))
    return PlanEstimate(chunks=block, blocks=blocks, windows=grid.n_windows, tasks=blocks,
                        worker_bytes=worker, peak_bytes=peak, store_bytes=store + spills)


def check_plan(estimate: PlanEstimate, *, source: Path, work_root: Path, memory_limit: int | None,
               ram: int | None) -> None:
    """Refuse a plan that cannot fit: the task ceilings, the per-worker ``memory_limit``, the machine's
    ``ram`` (for a local cluster), the free disk under the work root. None: not known, not checked.

    Raises
    ------
    SettingsError
        With the estimate, and what to change.
    """
    what = estimate.describe()
    if estimate.tasks > MAX_TASKS:
        raise SettingsError(f"{source}: {what}: more than {MAX_TASKS} tasks; use a larger --chunk-size")
    if estimate.blocks > MAX_BLOCKS_PER_WINDOW * max(estimate.windows, 1) and estimate.blocks > 64:
        raise SettingsError(f"{source}: {what}: {estimate.blocks} blocks for {estimate.windows} windows would be "
                            "all scheduling overhead; use a larger --chunk-size (at least the model's window)")
    if memory_limit is not None and estimate.worker_bytes > memory_limit:
        raise SettingsError(f"{source}: {what}: a worker needs more than its memory limit of {_size(memory_limit)}; "
                            "use a smaller --chunk-size, fewer --workers or a larger --memory-limit")
    if ram is not None and estimate.peak_bytes > ram:
        raise SettingsError(f"{source}: {what}: more than this machine's {_size(ram)} of RAM; "
                            "use a smaller --chunk-size or fewer --workers")
    free = shutil.disk_usage(_existing(work_root)).free
    if estimate.store_bytes > free:
        raise SettingsError(f"{source}: {what}: only {_size(free)} free under {work_root}; "
                            "use --work-dir on a larger disk")


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (the work root may not exist yet)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
