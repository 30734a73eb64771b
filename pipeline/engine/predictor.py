"""The predictor: evaluate one block task's windows and blend them (overlap-add).

Runs inside Dask workers. Returns the weighted sum of network outputs and the
sum of weights over the task's span; dividing is left to the merger, because a
voxel near a block border also receives windows from neighbouring tasks.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import queue
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.engine.alignment import WindowAlignment
from pipeline.engine.forward import forward_batch, window_forward
from pipeline.engine.tta import mirrored, scan_axes
from pipeline.engine.validity import windows_with_data

logger = logging.getLogger(__name__)

#: Windows this process has evaluated so far (read by benchmarks through ``client.run``).
_windows_evaluated = [0]


def windows_evaluated() -> int:
    """Windows evaluated by this process since it started: a measurement, not the plan."""
    return _windows_evaluated[0]


@dataclass(frozen=True, slots=True)
class InferenceSettings:
    """Everything about how windows are evaluated and blended, besides the data and network."""

    roi_size: tuple[int, ...]
    overlap: tuple[float, ...]
    mode: str = "gaussian"
    sigma_scale: float = 0.125
    sw_batch_size: int = 4
    device: str | None = None  #: None: CUDA when available, else CPU
    amp: bool | None = None  #: None: automatic mixed precision exactly when on CUDA
    #: maps each window (``roi_size`` in scan voxels) to the network's orientation and voxel size and back
    alignment: WindowAlignment | None = None
    #: the network's output channels: sizes the (empty) result of a task whose windows all hold only nodata
    out_channels: int | None = None
    #: CPU inference backend (:data:`pipeline.config.choices.BACKENDS`); only for networks known by a
    #: weights sha256 (a ``ModelRef``): a bare torch module always runs on torch
    backend: str = "auto"
    #: test-time mirroring (:mod:`pipeline.engine.tta`): the network's spatial axes whose 2^n mirrorings
    #: are averaged; () for none
    mirror_axes: tuple[int, ...] = ()
    #: OpenVINO streams to compile the network for: the block tasks one process runs at once, each calling
    #: on its own stream with the process's threads shared out (one task keeps every thread on one stream)
    streams: int = 1


@dataclass(frozen=True, slots=True)
class Partial:
    """A predict task's result: blended sums over padded span ``[lo, lo + shape)``."""

    lo: tuple[int, ...]
    sums: np.ndarray  #: (C_out + 1, *span): sum of importance * output per channel, then sum of importance
    n_windows: int

    @property
    def weighted(self) -> np.ndarray:
        return self.sums[:-1]

    @property
    def weights(self) -> np.ndarray:
        return self.sums[-1]


#: Network calls queued ahead of the one being blended (one OpenVINO call is one 3D window, ~3 MB of outputs).
CALLS_AHEAD = 3

#: Turns a batch of windows cut from a span as read (B, C, *roi) into the network's float32 input, given the
#: windows' boxes in the span: preprocessing per window, for a span kept in its stored type
#: (:class:`pipeline.engine.span_input.ImageSource`).
Prepare = Callable[[np.ndarray, list[tuple[slice, ...]]], np.ndarray]


def _pipelined(forward: Any, source: np.ndarray, batches: list[list[tuple[slice, ...]]],
               prepare: Prepare | None = None) -> Iterator[tuple[list[tuple[slice, ...]], np.ndarray]]:
    """Each batch's boxes and network outputs, in order, with the next :data:`CALLS_AHEAD` calls queued.

    The forward (OpenVINO or torch) releases the GIL, so blending one batch overlaps the network's
    next calls instead of waiting for them; the cores the network leaves idle between its layers do the
    blending. Queued calls keep the network busy through the consumer's pauses at a row's end (spills,
    labels): with one call ahead, a 138 Mvox CT's inference took ~10 % longer (bench/RESULTS.md). At most
    ``CALLS_AHEAD + 1`` calls' outputs are alive at once.

    Windows are cut and prepared here, by the consumer, when a call is queued, so the network thread
    only runs the network. A forward with an ``into(windows, out)`` method writes into an output array
    handed back from an earlier call: each yielded array is reused once the consumer asks for the next
    item: a fresh 3 MB output per 3D window cost ~1.5 ms of page faults (0.07 ms into a reused one).
    """
    def cut(boxes: list[tuple[slice, ...]]) -> np.ndarray:
        windows = np.stack([source[(slice(None), *box)] for box in boxes])
        return prepare(windows, boxes) if prepare is not None else windows

    into = getattr(forward, "into", None)
    spare: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()

    def run(windows: np.ndarray) -> np.ndarray:
        if into is None:
            return forward(windows)
        try:
            out = spare.get_nowait()
        except queue.Empty:
            out = None
        return into(windows, out)

    if len(batches) == 1:
        yield batches[0], run(cut(batches[0]))
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="volseg-forward") as pool:
        queued = collections.deque(pool.submit(run, cut(boxes)) for boxes in batches[:CALLS_AHEAD])
        for n, boxes in enumerate(batches):
            outputs = queued.popleft().result()
            if n + CALLS_AHEAD < len(batches):
                queued.append(pool.submit(run, cut(batches[n + CALLS_AHEAD])))
            yield boxes, outputs
            if into is not None:
                spare.put(outputs)


@functools.lru_cache(maxsize=8)
def importance_map(roi_size: tuple[int, ...], mode: str, sigma_scale: float | tuple[float, ...]) -> np.ndarray:
    """MONAI's importance map (``monai.data.utils.compute_importance_map``), the same float32 operations in
    NumPy (equal to a few ulps: the two libraries' ``exp`` differ), so blending matches MONAI's without importing it."""
    if mode == "constant":
        weight = np.ones(roi_size, dtype=np.float32)
    elif mode == "gaussian":
        scales = sigma_scale if isinstance(sigma_scale, tuple) else (sigma_scale,) * len(roi_size)
        weight = np.ones((), dtype=np.float32)
        for axis, (size, scale) in enumerate(zip(roi_size, scales, strict=True)):
            sigma = size * scale
            x = np.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1, dtype=np.float32)
            x = np.exp(x**2 / (-2 * sigma**2))  # NumPy 2 keeps float32 with a Python scalar, as torch does
            weight = weight[..., None] * x[(None,) * axis] if axis else x
    else:
        raise ValueError(f"unsupported blend mode {mode!r} (constant, gaussian)")
    return np.maximum(weight, max(float(weight.min()), 1e-3)).astype(np.float32)


def stream_axis(roi_size: tuple[int, ...], span: tuple[int, ...]) -> int:
    """The axis to blend along row by row: the one whose roi is the smallest part of the span (the last
    on ties), so the ring of sums kept alive (``roi`` deep on it, the whole span on the others) is smallest."""
    return min(range(len(roi_size)), key=lambda a: (roi_size[a] / max(span[a], 1), -a))


def window_corners(lo: tuple[int, ...], starts: tuple[tuple[int, ...], ...], roi_size: tuple[int, ...],
                   axis: int, valid: np.ndarray | None = None) -> list[tuple[int, ...]]:
    """The windows whose starts are the product of ``starts`` (padded coords), in rows along ``axis``; with
    ``valid`` (the span's mask from ``lo``, False where padded), only those holding a valid pixel."""
    order = [axis, *(a for a in range(len(starts)) if a != axis)]
    corners = [tuple(c[order.index(a)] for a in range(len(starts)))
               for c in itertools.product(*(starts[a] for a in order))]
    if valid is None:
        return corners
    return [c for c, keep in zip(corners, windows_with_data(valid, lo, corners, roi_size), strict=True) if keep]


def rows_along(axis: int, first: int, stop: int) -> tuple[slice, ...]:
    """The index of rows ``[first, stop)`` on spatial ``axis`` of a ``(C, *spatial)`` array."""
    return (slice(None),) * (axis + 1) + (slice(first, stop),)


class _Ring:
    """A task's sums on ``depth`` rows of ``axis`` from ``base`` (padded coordinates), all of the span on the
    other axes: blended into, and handed out a finished slab at a time."""

    def __init__(self, channels: int, span: tuple[int, ...], axis: int, depth: int, base: int) -> None:
        self.span, self.axis, self.depth, self.base = span, axis, depth, base
        self.sums = self.zeros(channels)

    def zeros(self, channels: int) -> np.ndarray:
        return np.zeros((channels, *self.span[:self.axis], self.depth, *self.span[self.axis + 1:]), np.float32)

    def rows(self, first: int, stop: int) -> tuple[slice, ...]:
        return rows_along(self.axis, first, stop)

    def advance(self, start: int) -> Iterator[tuple[int, np.ndarray]]:
        """A row of windows starts at ``start``: hand out the slab before it (finished), then move on."""
        done = min(start, self.base + self.depth) - self.base
        yield self.base, self.sums[self.rows(0, done)]
        for channel in self.sums:  # overlapping: NumPy copies through a temporary, a channel's only this way
            channel[self.rows(0, self.depth - done)[1:]] = channel[self.rows(done, self.depth)[1:]]
        self.sums[self.rows(self.depth - done, self.depth)] = 0
        yield from self.blank(self.base + self.depth, start, self.sums.shape[0])
        self.base = start

    def finish(self, end: int) -> Iterator[tuple[int, np.ndarray]]:
        yield self.base, self.sums[self.rows(0, min(self.depth, end - self.base))]
        yield from self.blank(self.base + self.depth, end, self.sums.shape[0])

    def blank(self, first: int, stop: int, channels: int) -> Iterator[tuple[int, np.ndarray]]:
        """Slabs no window reached (their windows held only nodata), at most ``depth`` thick each (fresh
        zeros each time: a consumer may add into what it is given)."""
        for at in range(first, stop, self.depth):
            yield at, self.zeros(channels)[self.rows(0, min(self.depth, stop - at))]


def blend_slabs(
    region: np.ndarray,
    lo: tuple[int, ...],
    corners: list[tuple[int, ...]],
    network: Any,
    settings: InferenceSettings,
    axis: int,
    prepare: Prepare | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Blend the windows starting at ``corners`` (padded coords, in rows along ``axis``: :func:`window_corners`).

    Yields ``(start, sums)``: the finished ``(C_out + 1, *span)`` sums (``Σ w·f(x)`` per channel, then
    ``Σ w``) of consecutive slabs along ``axis``, from ``lo[axis]`` to the span's end, ``start`` in padded
    coordinates. Windows are evaluated in rows along ``axis``; once a row is blended, the slab before the next
    row's start receives nothing more and is yielded. Only a ring ``roi[axis]`` deep is alive, not the whole
    span. Each yielded array is a view into that ring, valid until the next item is requested.

    ``region`` is the preprocessed input (C, *span) for the padded span starting at ``lo``, zeros where
    MONAI would pad; or, with ``prepare``, the input as stored, each batch of windows cut from it prepared.
    Slabs no window reaches (every window there held only nodata and was left out of ``corners``) are zeros:
    neither output nor weight.
    """
    weight = importance_map(settings.roi_size, settings.mode, settings.sigma_scale)
    span, roi = region.shape[1:], settings.roi_size[axis]
    end = lo[axis] + span[axis]
    _windows_evaluated[0] += len(corners)
    if not corners:
        assert settings.out_channels is not None, "skipping windows needs settings.out_channels"
        empty = _Ring(0, span, axis, min(roi, span[axis]), lo[axis])
        yield from empty.blank(lo[axis], end, settings.out_channels + 1)
        return
    source = region if prepare is not None else np.ascontiguousarray(region, dtype=np.float32)
    forward = window_forward(network, settings, in_channels=int(source.shape[0]))
    size = forward_batch(forward, settings.sw_batch_size)
    forward = mirrored(forward, scan_axes(settings.mirror_axes, settings.alignment))
    boxes = [tuple(slice(c - o, c - o + r) for c, o, r in zip(corner, lo, settings.roi_size, strict=True))
             for corner in corners]
    batches = [boxes[first : first + size] for first in range(0, len(boxes), size)]
    ring: _Ring | None = None
    for batch, outputs in _pipelined(forward, source, batches, prepare):
        ring = ring or _Ring(outputs.shape[1] + 1, span, axis, min(roi, span[axis]), lo[axis])
        for box, out in zip(batch, outputs, strict=True):
            start = box[axis].start + lo[axis]
            if start + roi > ring.base + ring.depth:  # a new row: the slab before it is finished
                yield from ring.advance(start)
            at = start - ring.base
            target = ring.sums[(slice(None), *box[:axis], slice(at, at + roi), *box[axis + 1:])]
            out = np.multiply(out, weight, out=out if out.flags.writeable else None)
            target[:-1] += out
            target[-1] += weight
    assert ring is not None
    yield from ring.finish(end)


def predict_group(
    region: np.ndarray,
    lo: tuple[int, ...],
    starts: tuple[tuple[int, ...], ...],
    network: Any,
    settings: InferenceSettings,
    valid: np.ndarray | None = None,
) -> Partial:
    """Evaluate every window whose start is in the product of ``starts`` (padded coords): the whole span's
    sums at once (:func:`blend_slabs`, gathered), for callers that keep partials in memory.

    With ``valid`` (*span, False where padded), windows holding no valid pixel are skipped.
    """
    span = region.shape[1:]
    axis = stream_axis(settings.roi_size, span)
    corners = window_corners(lo, starts, settings.roi_size, axis, valid)
    sums: np.ndarray | None = None
    for start, slab in blend_slabs(region, lo, corners, network, settings, axis):
        if sums is None:
            sums = np.empty((slab.shape[0], *span), dtype=np.float32)
        at = start - lo[axis]
        sums[rows_along(axis, at, at + slab.shape[axis + 1])] = slab
    assert sums is not None
    return Partial(lo=lo, sums=sums, n_windows=len(corners))
