"""Nodata in the network's input: one neutral value, and which windows have anything to see.

Pure functions, no I/O. A raster's invalid pixels (nodata value, alpha, GDAL mask, NaN) reach
the network as :data:`NEUTRAL`, set *after* intensity preprocessing, and a window holding no
valid pixel is not evaluated at all: every pixel it covers is nodata in the mask anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The network-input value of an invalid pixel: 0, the value MONAI's ``sliding_window_inference``
#: (and this engine) pads with beyond the image, and training pads with (``training.recipe.pad``),
#: so nodata reads as "outside the scene", which is what it is. For ``zscore`` 0 is also the mean.
NEUTRAL = 0.0


def neutralise(block: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """``block`` (C, *spatial), preprocessed, with every invalid pixel set to :data:`NEUTRAL` (in place)."""
    if valid is not None:
        block[:, ~np.asarray(valid, dtype=bool)] = NEUTRAL
    return block


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
