"""The merger: add up the partial sums that touch one output block, then normalise.

One merge task owns one output block (= one Zarr chunk), so no two tasks ever
write the same chunk, and the division by the weight sum happens only once
every window touching the block has been added: no seams.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.engine.predictor import Partial


def merge_block(partials: Sequence[Partial], lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
    """Blend the outputs for padded span ``[lo, hi)`` from the partials that overlap it.

    Returns float32 (C_out, *block) equal to MONAI's ``output / count_map`` on that span, and 0
    where no window was evaluated (nodata only: see :mod:`pipeline.engine.validity`).
    """
    shape = tuple(h - l for l, h in zip(lo, hi, strict=True))
    channels = partials[0].weighted.shape[0]
    weighted = np.zeros((channels, *shape), dtype=np.float32)
    weights = np.zeros(shape, dtype=np.float32)
    for part in partials:
        src, dst = [], []
        for p_lo, p_len, b_lo, b_hi in zip(part.lo, part.weights.shape, lo, hi, strict=True):
            start, stop = max(p_lo, b_lo), min(p_lo + p_len, b_hi)
            src.append(slice(start - p_lo, stop - p_lo))
            dst.append(slice(start - b_lo, stop - b_lo))
        weighted[(slice(None), *dst)] += part.weighted[(slice(None), *src)]
        weights[tuple(dst)] += part.weights[tuple(src)]
    return np.divide(weighted, weights, out=np.zeros_like(weighted), where=weights > 0)
