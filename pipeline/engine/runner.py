"""The out-of-core runner: one task per output block, with the overlap spilled through disk.

MONAI's windows reach at most ``roi - 1`` voxels past the block that owns them (the one
holding their start), and only forward. So block ``b``'s task evaluates its own windows
and blends them over its span (block + forward halo), then:

1. writes the *spills* (the parts of that span lying in forward neighbours ``d``) as small
   files ``spill/<d>/<b>@<first>-<stop>.npy`` in the work directory, one per finished slab
   (:mod:`pipeline.engine.spills`);
2. adds the spills its backward neighbours wrote for it, divides by the weights, argmaxes
   and writes its label chunk (one writer per chunk), records the block as done, and
   deletes the spills it consumed.

Both happen slab by slab: the task blends its windows in rows along one axis
(:func:`pipeline.engine.predictor.blend_slabs`), so only a ring of sums ``roi`` deep on that
axis is alive.

A block is started only when every block that spills into it is done, so its sums are
complete when it divides: no seams, and every window is evaluated exactly once. Memory
holds only the tasks in flight (each: that ring of ``(classes + 1)`` float32 sums and its input), never a
front of the volume: the front lives on disk as spills, and spills are deleted as soon as
they are consumed. See DESIGN.md ("Memory") for the bound.

Resume: a block's spills are written before its record, and consumed spills are deleted
only after the consumer's record, so a rerun finds every spill an unfinished block needs
from finished ones and recomputes only unfinished blocks.
"""

from __future__ import annotations

import heapq
import itertools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.device import trim_freed_memory
from pipeline.engine.forward import forward_batch, window_forward
from pipeline.engine.merger import Span, labels_from_sums, normalise, overlap_slices
from pipeline.engine.predictor import InferenceSettings, blend_slabs, stream_axis, window_corners
from pipeline.engine.span_input import ImageSource, open_array
from pipeline.engine.spills import SpillRows, save_slab
from pipeline.engine.windows import BlockPlan

Index = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BlockJob:
    """Everything one block task needs to know about the plan (no arrays)."""

    index: Index  #: block position per axis
    region: tuple[slice, ...]  #: the output block, image coordinates
    span: Span  #: the output block, padded coordinates
    windows: tuple[Span, tuple[tuple[int, ...], ...]] | None  #: owned windows: their span and starts per axis
    sources: tuple[tuple[Index, Span], ...]  #: blocks whose windows spill into this one, with their spans
    targets: tuple[tuple[Index, Span], ...]  #: forward blocks this one's windows spill into, with their spans
    axis: int = 0  #: the axis every task blends along, row by row (the same for the whole plan: spill files' layout)


def block_jobs(plan: BlockPlan) -> list[BlockJob]:
    """One job per output block of ``plan``, in raster order."""
    pads = tuple(a.grid.pad_before for a in plan.axes)
    owned = [{g.index: g for g in a.groups} for a in plan.axes]

    def block_span(index: Index) -> Span:
        return (tuple(a.blocks[i][0] + p for a, i, p in zip(plan.axes, index, pads, strict=True)),
                tuple(a.blocks[i][1] + p for a, i, p in zip(plan.axes, index, pads, strict=True)))

    def window_span(index: Index) -> Span:
        groups = [o[i] for o, i in zip(owned, index, strict=True)]
        return tuple(g.lo for g in groups), tuple(g.hi for g in groups)

    def reached(axis: int, block: int) -> list[int]:
        """Blocks on ``axis`` that the windows owned by ``block`` touch."""
        group = owned[axis][block]
        pad = pads[axis]
        return [j for j, (lo, hi) in enumerate(plan.axes[axis].blocks) if lo + pad < group.hi and hi + pad > group.lo]

    axis = stream_axis(tuple(a.grid.roi for a in plan.axes),
                       tuple(max(hi - lo for lo, hi in a.blocks) for a in plan.axes))
    jobs = []
    for index in plan.block_keys():
        has_windows = all(i in o for o, i in zip(owned, index, strict=True))
        contributors = itertools.product(*(
            [a.groups[p].index for p in a.contributors(i)] for a, i in zip(plan.axes, index, strict=True)))
        sources = tuple((s, window_span(s)) for s in contributors if s != index)
        targets: tuple[tuple[Index, Span], ...] = ()
        if has_windows:
            forward = itertools.product(*(reached(axis, i) for axis, i in enumerate(index)))
            targets = tuple((t, block_span(t)) for t in forward if t != index)
        windows = None
        if has_windows:
            groups = [o[i] for o, i in zip(owned, index, strict=True)]
            windows = (window_span(index), tuple(g.starts for g in groups))
        jobs.append(BlockJob(index=index, region=tuple(slice(lo - p, hi - p) for lo, hi, p in
                                                        zip(*block_span(index), pads, strict=True)),
                             span=block_span(index), windows=windows, sources=sources, targets=targets,
                             axis=axis))
    return jobs


@dataclass(frozen=True)
class BlockSink:
    """Where block results go: label (and probability) chunks, spills, completion records."""

    store: str
    spill_dir: str
    dtype: str
    out_channels: int
    probabilities: bool = False
    ledger: Any = None  #: has ``mark_block(region)`` (a :class:`pipeline.io.store.Ledger`), or None

    def spill_folder(self, target: Index) -> str:
        return os.path.join(self.spill_dir, _name(target))

    def save_spill(self, target: Index, source: Index, first: int, stop: int, piece: np.ndarray) -> int:
        """Rows ``[first, stop)`` (padded coordinates on the streamed axis) of ``source``'s spill into ``target``."""
        return save_slab(self.spill_folder(target), _name(source), first, stop, piece)

    def drop_spills(self, target: Index) -> None:
        folder = self.spill_folder(target)
        if os.path.isdir(folder):
            for entry in os.scandir(folder):
                os.unlink(entry.path)
            os.rmdir(folder)

    def done(self, region: tuple[slice, ...]) -> bool:
        """Whether this block's record exists (written after its chunks, by rename)."""
        return self.ledger is not None and self.ledger.has_block(region)

    def outputs(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        """Empty label (and probability) arrays for one block, filled slab by slab by :meth:`fill`."""
        labels = np.zeros(shape, dtype=self.dtype)
        return labels, (np.zeros((self.out_channels, *shape), np.float16) if self.probabilities else None)

    def fill(self, where: tuple[slice, ...], sums: np.ndarray, labels: np.ndarray,
             probabilities: np.ndarray | None) -> None:
        """The labels (and probabilities) at ``where`` in the block from their complete ``(classes + 1, ...)`` sums."""
        labels[where] = labels_from_sums(sums, self.dtype)
        if probabilities is not None:
            logits = normalise(sums)
            shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
            probabilities[(slice(None), *where)] = (shifted / shifted.sum(axis=0)).astype(np.float16)

    def write(self, region: tuple[slice, ...], labels: np.ndarray, probabilities: np.ndarray | None) -> None:
        """The block's label (and probability) chunks, then its record."""
        open_array(self.store, "labels", "r+")[region] = labels
        if probabilities is not None:
            open_array(self.store, "probabilities", "r+")[(slice(None), *region)] = probabilities
        if self.ledger is not None:
            self.ledger.mark_block(region)


def _name(index: Index) -> str:
    return "-".join(map(str, index))


@dataclass(frozen=True, slots=True)
class BlockDone:
    windows: int
    spill_bytes: int


def run_block(job: BlockJob, source: ImageSource, network: Any, settings: InferenceSettings,
              sink: BlockSink) -> BlockDone:
    """The task for one block: predict its windows, spill forward, gather backward spills, write it.

    Streamed along ``job.axis``: each slab the blender finishes goes at once to the spill files of the
    forward neighbours it lies in, and its part in this block, plus the backward spills' rows there, is
    divided and argmaxed into the block's labels; so neither the span's sums nor the spills are ever
    whole in memory.

    Idempotent: Dask reruns a task whose result was lost with a killed worker, possibly after the task had
    written and recorded its block and deleted the spills it consumed. A recorded block is therefore not
    computed again (its forward spills, written before its record, stay for their consumers).
    """
    if sink.done(job.region):
        sink.drop_spills(job.index)
        return BlockDone(windows=0, spill_bytes=0)
    trim_freed_memory()  # what tiling, model loading or the last task freed is not this task's peak
    block = _BlockOutput(job, sink)
    windows = spilled = 0
    if job.windows is not None:
        span, starts = job.windows
        region, valid, prepare = source.read(span)
        trim_freed_memory()  # the store's decoders free ~20 MB in their threads' arenas (11 Mvox CT, 128^3 blocks)
        corners = window_corners(span[0], starts, settings.roi_size, job.axis, valid)
        del valid
        windows = len(corners)
        for start, slab in blend_slabs(region, span[0], corners, network, settings, job.axis, prepare):
            slab_span = _along(span, job.axis, start, start + slab.shape[job.axis + 1])
            for target, target_span in job.targets:
                cut = overlap_slices(slab_span, target_span)
                if cut is not None:
                    rows = cut[0][job.axis]
                    spilled += sink.save_spill(target, job.index, start + rows.start, start + rows.stop,
                                               slab[(slice(None), *cut[0])])
            block.add(slab_span, slab)
        del region
    block.finish()
    sink.drop_spills(job.index)
    return BlockDone(windows=windows, spill_bytes=spilled)


def warm_forward(network: Any, settings: InferenceSettings, in_channels: int) -> None:
    """Build this process's forward now and run one blank call through it (as many windows as a task's calls
    take), then trim.

    Compiling (OpenVINO packs weights on its first call) leaves ~40 MB of freed but resident memory; inside
    the first block task that sat on top of the task's own peak and made it the run's. The blank windows are
    not counted as evaluated (the counter is the blender's).
    """
    forward = window_forward(network, settings, in_channels=in_channels)
    windows = forward_batch(forward, settings.sw_batch_size)
    forward(np.zeros((windows, in_channels, *settings.roi_size), np.float32))
    trim_freed_memory()


def _along(span: Span, axis: int, lo: int, hi: int) -> Span:
    """``span`` cut to ``[lo, hi)`` on ``axis``."""
    return _with(span[0], axis, lo), _with(span[1], axis, hi)


class _BlockOutput:
    """One block's labels, assembled in rows along ``job.axis``: its own sums plus its backward spills."""

    def __init__(self, job: BlockJob, sink: BlockSink) -> None:
        self.job, self.sink, self.axis = job, sink, job.axis
        self.shape = tuple(h - l for l, h in zip(*job.span, strict=True))
        self.labels, self.probabilities = sink.outputs(self.shape)
        self.row = 0  #: rows of the block (along ``axis``) done
        self.spills = [(_name(s), where[1]) for s, source_span in job.sources
                       if (where := overlap_slices(source_span, job.span)) is not None]
        self.waiting = SpillRows(sink.spill_folder(job.index)) if self.spills else None

    def add(self, slab_span: Span, slab: np.ndarray) -> None:
        """A finished slab of the task's own sums (padded coordinates ``slab_span``)."""
        where = overlap_slices(slab_span, self.job.span)
        if where is None:
            return
        rows = where[1][self.axis]
        self._blank_until(rows.start)
        own = slab[(slice(None), *where[0])]
        if any(w.start != 0 or w.stop != n for a, (w, n) in enumerate(zip(where[1], self.shape, strict=True))
               if a != self.axis):  # the span does not cover the block's cross-section: place it in zeros
            full = np.zeros((own.shape[0], *_with(self.shape, self.axis, rows.stop - rows.start)), np.float32)
            full[(slice(None), *_with(where[1], self.axis, slice(None)))] = own
            own = full
        self._rows(rows.start, rows.stop, own)

    def finish(self) -> None:
        """The rows no own slab reached, then the chunks and the record."""
        self._blank_until(self.shape[self.axis])
        self.sink.write(self.job.region, self.labels, self.probabilities)

    def _blank_until(self, stop: int) -> None:
        """Rows ``[row, stop)`` hold no own windows: their sums are the backward spills alone."""
        if stop > self.row:
            sums = np.zeros((self.sink.out_channels + 1, *_with(self.shape, self.axis, stop - self.row)), np.float32)
            self._rows(self.row, stop, sums)

    def _rows(self, first: int, stop: int, sums: np.ndarray) -> None:
        """Rows ``[first, stop)`` of the block from ``sums`` (the own part, added into in place)."""
        assert first == self.row, "rows arrive in order"
        origin = self.job.span[0][self.axis]  # padded coordinate of the block's first row
        for source, box in self.spills:
            lo, hi = max(first, box[self.axis].start), min(stop, box[self.axis].stop)
            if lo < hi:
                assert self.waiting is not None
                into = sums[(slice(None), *_with(box, self.axis, slice(lo - first, hi - first)))]
                self.waiting.add(source, self.axis, origin + lo, origin + hi, into)
        where = _with(tuple(slice(None) for _ in self.shape), self.axis, slice(first, stop))
        self.sink.fill(where, sums, self.labels, self.probabilities)
        self.row = stop


def _with(items: tuple[Any, ...], axis: int, value: Any) -> tuple[Any, ...]:
    """``items`` with ``items[axis]`` replaced by ``value``."""
    return tuple(value if a == axis else x for a, x in enumerate(items))


@dataclass
class Progress:
    """What the driver saw: counts, and the peak bytes of spills alive on disk (an upper bound)."""

    windows: int = 0
    blocks: int = 0
    spill_bytes_peak: int = 0


def run_jobs(client: Any, jobs: Sequence[BlockJob], task: Callable[[BlockJob], Any], *,
             finished: set[Index], in_flight: int) -> Iterator[Progress]:
    """Run ``task`` for every job not in ``finished``, each once its sources are done; yield after each.

    Ready blocks start in raster order, at most ``in_flight`` at a time, so the spills alive on disk
    stay a thin front and memory holds only the running tasks.
    """
    from distributed import as_completed

    todo = {job.index: job for job in jobs if job.index not in finished}
    waiting = {i: {s for s, _ in job.sources if s not in finished} for i, job in todo.items()}
    ready = [i for i, w in waiting.items() if not w]
    heapq.heapify(ready)
    waiting = {i: w for i, w in waiting.items() if w}
    running = as_completed()
    keys: dict[str, Index] = {}
    alive: dict[Index, list[int]] = {}  # source -> [spill bytes on disk, targets not yet done]
    progress = Progress()

    def submit() -> None:
        while ready and running.count() < in_flight:
            index = heapq.heappop(ready)
            future = client.submit(task, todo[index], pure=False,
                                   key=f"volseg-block-{_name(index)}-{time.time_ns()}")
            keys[future.key] = index
            running.add(future)

    submit()
    for future in running:
        done: BlockDone = future.result()
        index = keys.pop(future.key)
        job = todo.pop(index)
        progress.windows += done.windows
        progress.blocks += 1
        pending_targets = sum(t in todo for t, _ in job.targets)
        if done.spill_bytes and pending_targets:
            alive[index] = [done.spill_bytes, pending_targets]
        for source, _ in job.sources:  # this block consumed (and deleted) its sources' spills
            if source in alive:
                alive[source][1] -= 1
                if alive[source][1] <= 0:
                    del alive[source]
        for target, _ in job.targets:
            if target in waiting:
                waiting[target].discard(index)
                if not waiting[target]:
                    del waiting[target]
                    heapq.heappush(ready, target)
        progress.spill_bytes_peak = max(progress.spill_bytes_peak, sum(a[0] for a in alive.values()))
        submit()
        yield progress
