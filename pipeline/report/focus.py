"""Where the report looks: the largest predicted structure, found on a coarse strided read of the labels."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.io.outputs import (
    NODATA_LABEL,
)

#: Elements read (strided) to find the largest structure.
FOCUS_BUDGET = 2_000_000


def strided_step(shape: Sequence[int], budget: int = FOCUS_BUDGET) -> int:
    """Stride per axis so that a strided read holds about ``budget`` elements."""
    return max(1, math.ceil((math.prod(shape) / budget) ** (1 / len(shape))))


def largest_label(rows: Sequence[Mapping[str, Any]], count_key: str) -> int | None:
    """The non-background label with the most predicted voxels/pixels (None if all are empty)."""
    counts = [(row[count_key] or 0, row["label"]) for row in rows if row["label"] != 0]
    best = max(counts, default=(0, None))
    return best[1] if best[0] > 0 else None


@dataclass(frozen=True)
class Focus:
    """Where to look: a point inside the largest structure and the extent of the foreground."""

    point: tuple[int, ...]
    low: tuple[int, ...]
    high: tuple[int, ...]  #: inclusive


def find_focus(labels: Any, label: int | None, budget: int = FOCUS_BUDGET) -> Focus:
    """The labelled voxel nearest to the centroid of ``label`` (on a strided grid), and the foreground extent.

    Falls back to the centre (and the whole array) when nothing is labelled or the grid misses it.
    """
    shape = tuple(labels.shape)
    centre = Focus(tuple(n // 2 for n in shape), (0,) * len(shape), tuple(n - 1 for n in shape))
    if label is None:
        return centre
    step = strided_step(shape, budget)
    coarse = np.asarray(labels[tuple(slice(None, None, step) for _ in shape)])
    where = np.argwhere(coarse == label)
    if where.size == 0:
        return centre
    centroid = where.mean(axis=0)
    nearest = where[np.argmin(((where - centroid) ** 2).sum(axis=1))]
    fg = np.argwhere((coarse > 0) & (coarse != NODATA_LABEL))
    clip = [n - 1 for n in shape]
    return Focus(point=tuple(int(min(v * step, c)) for v, c in zip(nearest, clip, strict=True)),
                 low=tuple(int(v * step) for v in fg.min(axis=0)),
                 high=tuple(int(min(v * step + step - 1, c)) for v, c in zip(fg.max(axis=0), clip, strict=True)))
