"""The merger: add up the partial sums that touch one output block, then normalise.

One merge task owns one output block (= one Zarr chunk), so no two tasks ever
write the same chunk, and the division by the weight sum happens only once
every window touching the block has been added: no seams.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.engine.predictor import Partial

Span = tuple[tuple[int, ...], tuple[int, ...]]  #: (lo, hi) in padded coordinates, hi exclusive


def overlap_slices(a: Span, b: Span) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Where the common part of spans ``a`` and ``b`` lies in each of them; None when they are disjoint."""
    in_a, in_b = [], []
    for a_lo, a_hi, b_lo, b_hi in zip(*a, *b, strict=True):
        lo, hi = max(a_lo, b_lo), min(a_hi, b_hi)
        if lo >= hi:
            return None
        in_a.append(slice(lo - a_lo, hi - a_lo))
        in_b.append(slice(lo - b_lo, hi - b_lo))
    return tuple(in_a), tuple(in_b)


def normalise(sums: np.ndarray) -> np.ndarray:
    """``(C + 1, *span)`` sums -> ``(C, *span)`` blended outputs: MONAI's ``output / count_map``, and 0
    where no window was evaluated (nodata only: see :mod:`pipeline.engine.validity`)."""
    weighted, weights = sums[:-1], sums[-1]
    return np.divide(weighted, weights, out=np.zeros_like(weighted), where=weights > 0)


def merge_block(partials: Sequence[Partial], lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
    """Blend the outputs for padded span ``[lo, hi)`` from the partials that overlap it.

    Returns float32 (C_out, *block) equal to MONAI's ``output / count_map`` on that span.
    """
    shape = tuple(h - l for l, h in zip(lo, hi, strict=True))
    sums = np.zeros((partials[0].sums.shape[0], *shape), dtype=np.float32)
    for part in partials:
        where = overlap_slices((part.lo, tuple(l + n for l, n in zip(part.lo, part.sums.shape[1:], strict=True))),
                               (lo, hi))
        if where is not None:
            sums[(slice(None), *where[1])] += part.sums[(slice(None), *where[0])]
    return normalise(sums)
