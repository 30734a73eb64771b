"""The merger: add up the partial sums that touch one output block, then normalise.

One merge task owns one output block (= one Zarr chunk), so no two tasks ever
write the same chunk, and the division by the weight sum happens only once
every window touching the block has been added: no seams.
"""

from __future__ import annotations

import math
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


#: Voxels per step of :func:`labels_from_sums`: a few channel rows of this size stay in the L2 cache.
_LABEL_STEP = 1 << 15


def labels_from_sums(sums: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """``argmax(normalise(sums), axis=0)`` as ``dtype``, without the (C, *span) float32 temporary.

    The same numbers and the same ties (the first largest class wins, and 0 where no window was
    evaluated): each class is divided by the weights exactly as :func:`normalise` does, and compared in
    cache-sized steps, class after class. NumPy's ``argmax`` over the outer axis of a C-order array
    walks it with a stride of the whole span and costs about as much again as the division.
    """
    if sums.ndim > 2 and not sums[0].flags.c_contiguous:  # a strided view (a streamed slab's own part):
        pieces: np.ndarray = np.empty(sums.shape[1:], dtype=dtype)  # copy it in pieces, never whole
        rows = max(1, _LABEL_STEP // max(1, math.prod(sums.shape[2:])))
        for first in range(0, sums.shape[1], rows):
            pieces[first:first + rows] = labels_from_sums(np.ascontiguousarray(sums[:, first:first + rows]), dtype)
        return pieces
    classes = sums.shape[0] - 1
    flat = sums.reshape(sums.shape[0], -1)
    size = flat.shape[1]
    labels = np.zeros(size, dtype=dtype)
    step = min(_LABEL_STEP, max(size, 1))
    best, value = np.empty(step, np.float32), np.empty(step, np.float32)
    better, evaluated = np.empty(step, bool), np.empty(step, bool)
    for lo in range(0, size, step):
        hi = min(size, lo + step)
        n = hi - lo
        weights, out = flat[-1, lo:hi], labels[lo:hi]
        np.greater(weights, 0, out=evaluated[:n])
        where = None if evaluated[:n].all() else evaluated[:n]
        _divided(flat[0, lo:hi], weights, where, best[:n])
        for c in range(1, classes):
            _divided(flat[c, lo:hi], weights, where, value[:n])
            np.greater(value[:n], best[:n], out=better[:n])
            np.copyto(out, c, where=better[:n], casting="unsafe")
            np.maximum(best[:n], value[:n], out=best[:n])
    return labels.reshape(sums.shape[1:])


def _divided(weighted: np.ndarray, weights: np.ndarray, evaluated: np.ndarray | None, out: np.ndarray) -> None:
    """``out = weighted / weights`` where evaluated (None: everywhere), else 0 (as :func:`normalise`)."""
    if evaluated is None:
        np.divide(weighted, weights, out=out)
        return
    out.fill(0)
    np.divide(weighted, weights, out=out, where=evaluated)
