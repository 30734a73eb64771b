"""The tiled axis reversal gives exactly NumPy's Fortran-order bytes, for any shape, dtype and tile."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.io.transpose import reversed_axes


@pytest.mark.parametrize("shape", [(1, 1, 1), (33, 7, 65), (64, 64, 64), (5, 300, 2), (97, 1, 31)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_bytes_are_fortran_order(shape: tuple[int, ...], dtype: type) -> None:
    array = np.random.default_rng(0).integers(0, 255, size=shape).astype(dtype)
    out = reversed_axes(array, tile=16)
    assert out.flags.c_contiguous and out.shape == shape[::-1] and out.dtype == array.dtype
    assert out.tobytes() == array.tobytes(order="F")


def test_tile_larger_than_the_array_and_strided_input() -> None:
    array = np.arange(4 * 6 * 10, dtype=np.int32).reshape(4, 6, 10)[:, ::2, 1:]
    assert reversed_axes(array, tile=1000).tobytes() == array.tobytes(order="F")
    assert reversed_axes(array, tile=1).tobytes() == array.tobytes(order="F")


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4, 5)])
def test_other_ranks_reverse_too(shape: tuple[int, ...]) -> None:
    array = np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape)
    assert reversed_axes(array).tobytes() == array.tobytes(order="F")
