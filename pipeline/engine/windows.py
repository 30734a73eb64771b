"""The splitter: MONAI's window grid, and how its windows are shared out to blocks.

Pure functions of shapes, no arrays. Coordinates are "padded" coordinates: MONAI
pads an axis that is shorter than the roi (``diff // 2`` before, the rest after)
and lays the window grid over the padded image. We reproduce that grid window for
window, then give every window to exactly one block task (the block that holds
the window's start), so each window is evaluated once. A block task's outputs
reach at most ``roi - 1`` voxels past its block; the merger adds them up.

Everything is separable per axis: a plan is the product of per-axis plans.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pipeline.errors import SettingsError


def scan_interval(size: int, roi: int, overlap: float) -> int:
    """Step between window starts on one axis, MONAI's rule (``int(roi * (1 - overlap))``, at least 1)."""
    if roi == size:
        return roi
    return max(int(roi * (1 - overlap)), 1)


def window_starts(size: int, roi: int, interval: int) -> tuple[int, ...]:
    """Window starts on one axis, as ``monai.data.utils.dense_patch_slices`` lays them.

    The last window is pulled back to end at the border, so every start is in
    ``[0, size - roi]``.
    """
    count = next(d for d in range(math.ceil(size / interval)) if d * interval + roi >= size) + 1
    return tuple(i * interval - max(i * interval + roi - size, 0) for i in range(count))


@dataclass(frozen=True, slots=True)
class AxisGrid:
    """MONAI's windows on one axis, in padded coordinates."""

    size: int  #: image length (unpadded)
    roi: int
    pad_before: int  #: zeros MONAI adds before the image when ``size < roi``
    starts: tuple[int, ...]
    step: int = 0  #: MONAI's scan interval; 0: unknown (then the first two starts)

    @property
    def padded_size(self) -> int:
        return max(self.size, self.roi)


@dataclass(frozen=True, slots=True)
class WindowGrid:
    """MONAI's full window grid: one :class:`AxisGrid` per spatial axis."""

    axes: tuple[AxisGrid, ...]

    @property
    def roi_size(self) -> tuple[int, ...]:
        return tuple(a.roi for a in self.axes)

    @property
    def n_windows(self) -> int:
        return math.prod(len(a.starts) for a in self.axes)


def parse_roi_size(roi_size: int | Sequence[int], image_shape: Sequence[int]) -> tuple[int, ...]:
    """MONAI's ``fall_back_tuple``: an int applies to every axis; a side <= 0 means the image size."""
    sides = (roi_size,) * len(image_shape) if isinstance(roi_size, int) else tuple(roi_size)
    if len(sides) != len(image_shape):
        raise SettingsError(f"roi_size must have {len(image_shape)} sides, got {tuple(sides)}")
    return tuple(int(s) if s is not None and s > 0 else int(n) for s, n in zip(sides, image_shape, strict=True))


def parse_overlap(overlap: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    values = (overlap,) * ndim if isinstance(overlap, int | float) else tuple(overlap)
    if len(values) != ndim or any(not 0 <= o < 1 for o in values):
        raise SettingsError(f"overlap must be >= 0 and < 1 (one value or one per axis), got {overlap}")
    return tuple(float(o) for o in values)


def window_grid(image_shape: Sequence[int], roi_size: Sequence[int], overlap: Sequence[float]) -> WindowGrid:
    """The window grid MONAI's ``sliding_window_inference`` evaluates on an image of ``image_shape``."""
    if any(n < 1 for n in image_shape):
        raise SettingsError(f"image has an empty axis: shape {tuple(image_shape)}")
    axes = []
    for size, roi, ovl in zip(image_shape, roi_size, overlap, strict=True):
        padded = max(size, roi)
        step = scan_interval(padded, roi, ovl)
        starts = window_starts(padded, roi, step)
        axes.append(AxisGrid(size=size, roi=roi, pad_before=(padded - size) // 2, starts=starts, step=step))
    return WindowGrid(tuple(axes))


def padded_index(shape: Sequence[int], lo: Sequence[int], hi: Sequence[int],
                 pads: Sequence[int]) -> tuple[tuple[slice, ...], list[tuple[int, int]]]:
    """For padded span ``[lo, hi)`` over spatial ``shape``: the image slices under it, and the zero padding
    (before, after) per axis that completes them to the span (MONAI pads ``pads`` before each axis)."""
    index, padding = [], []
    for l, h, pad, size in zip(lo, hi, pads, shape, strict=True):
        start, stop = max(l - pad, 0), min(h - pad, size)
        index.append(slice(start, stop))
        padding.append((start - (l - pad), (h - pad) - stop))
    return tuple(index), padding


@dataclass(frozen=True, slots=True)
class AxisGroup:
    """Windows on one axis owned by one block: their starts and the span they cover (padded coords)."""

    index: int
    starts: tuple[int, ...]
    lo: int
    hi: int  #: exclusive


@dataclass(frozen=True, slots=True)
class AxisPlan:
    """On one axis: window groups (one per block that owns windows) and output blocks."""

    grid: AxisGrid
    groups: tuple[AxisGroup, ...]
    blocks: tuple[tuple[int, int], ...]  #: output block spans, unpadded coords, [lo, hi)

    def contributors(self, block: int) -> tuple[int, ...]:
        """Positions in ``groups`` whose windows touch output block ``block``."""
        lo, hi = (b + self.grid.pad_before for b in self.blocks[block])
        return tuple(i for i, g in enumerate(self.groups) if g.lo < hi and g.hi > lo)


def plan_axis(grid: AxisGrid, chunk: int) -> AxisPlan:
    """Share one axis's windows out to blocks of length ``chunk`` (by window start)."""
    if chunk < 1:
        raise SettingsError(f"chunk size must be >= 1, got {chunk}")
    owner: dict[int, list[int]] = {}
    for start in grid.starts:
        owner.setdefault(max(start - grid.pad_before, 0) // chunk, []).append(start)
    groups = tuple(AxisGroup(i, tuple(s), s[0], s[-1] + grid.roi) for i, s in sorted(owner.items()))
    blocks = tuple((lo, min(lo + chunk, grid.size)) for lo in range(0, grid.size, chunk))
    return AxisPlan(grid=grid, groups=groups, blocks=blocks)


@dataclass(frozen=True, slots=True)
class BlockPlan:
    """The whole plan: per-axis plans, combined by product."""

    axes: tuple[AxisPlan, ...]

    @property
    def n_windows(self) -> int:
        return math.prod(sum(len(g.starts) for g in a.groups) for a in self.axes)

    def group_keys(self) -> Iterator[tuple[int, ...]]:
        """Positions (per axis) of every window group, i.e. every predict task."""
        return itertools.product(*(range(len(a.groups)) for a in self.axes))

    def block_keys(self) -> Iterator[tuple[int, ...]]:
        """Index of every output block."""
        return itertools.product(*(range(len(a.blocks)) for a in self.axes))


def plan_blocks(grid: WindowGrid, chunks: Sequence[int]) -> BlockPlan:
    """Plan predict tasks (window groups) and merge tasks (output blocks) for ``grid``."""
    if len(chunks) != len(grid.axes):
        raise SettingsError(f"chunks must have {len(grid.axes)} sides, got {tuple(chunks)}")
    return BlockPlan(tuple(plan_axis(a, c) for a, c in zip(grid.axes, chunks, strict=True)))


def _regular_step(axis: AxisGrid) -> int:
    """The distance between window starts before the last window is pulled back (the axis length if one)."""
    if len(axis.starts) < 2:
        return axis.padded_size
    return axis.step or axis.starts[1] - axis.starts[0]


def balanced_chunks(grid: WindowGrid, chunks: Sequence[int], min_tasks: int) -> tuple[int, ...]:
    """Shrink ``chunks`` (halving the axis with the most windows per block) until the plan has at
    least ``min_tasks`` predict tasks, or blocks are down to one window step.

    Small volumes then still keep every worker busy; each window is still evaluated once. The step is the
    grid's regular one (the first two starts), not a gap to a last window pulled back to the border: on an
    axis of two windows (starts 0 and 3 for a roi of 48 on 51 voxels) that gap would cut blocks of 3 voxels,
    a plan of all scheduling overhead.
    """
    sides = list(chunks)
    steps = [_regular_step(a) for a in grid.axes]

    def tasks() -> int:
        return math.prod(len(plan_axis(a, c).groups) for a, c in zip(grid.axes, sides, strict=True))

    while tasks() < min_tasks:
        shrinkable = [i for i, a in enumerate(grid.axes) if sides[i] > steps[i] and len(a.starts) > 1]
        if not shrinkable:
            break
        axis = max(shrinkable, key=lambda i: len(plan_axis(grid.axes[i], sides[i]).groups[0].starts))
        sides[axis] = max(steps[axis], sides[axis] // 2)
    return tuple(sides)
