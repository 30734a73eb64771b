"""Nodata in the network's input: which windows have anything to see.

Pure functions, no I/O. A raster's invalid pixels (nodata value, alpha, GDAL mask, NaN) reach
the network as :data:`pipeline.model.intensity.NEUTRAL`, set by the model's preprocessing, and a window
holding no valid pixel is not evaluated at all: every pixel it covers is nodata in the mask anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def windows_with_data(valid: np.ndarray, lo: Sequence[int], corners: Sequence[Sequence[int]],
                      roi: Sequence[int]) -> list[bool]:
    """For each window starting at ``corners`` (padded coordinates), whether it holds a valid pixel.

    ``valid`` covers the padded span starting at ``lo`` (False where the image is padded). A
    summed-area table answers every window in O(1), so the check costs one pass over the span.
    """
    mask = np.asarray(valid, dtype=bool)
    table = np.pad(mask.astype(np.int64), [(1, 0)] * mask.ndim)
    for axis in range(mask.ndim):
        table = table.cumsum(axis=axis)
    out = []
    for corner in corners:
        start = [c - o for c, o in zip(corner, lo, strict=True)]
        total = 0
        for bits in np.ndindex(*(2,) * mask.ndim):  # inclusion-exclusion over the box's 2^ndim corners
            index = tuple(s + r if b else s for s, r, b in zip(start, roi, bits, strict=True))
            total += (-1) ** (mask.ndim - sum(bits)) * int(table[index])
        out.append(total > 0)
    return out
