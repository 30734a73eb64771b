"""The merger's label step equals argmax of the normalised sums, ties and unevaluated voxels included."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.engine import merger
from pipeline.engine.merger import labels_from_sums, normalise


def _sums(rng: np.random.Generator, classes: int, shape: tuple[int, ...]) -> np.ndarray:
    sums = rng.random((classes + 1, *shape), dtype=np.float32) + np.float32(1e-3)
    flat = sums.reshape(classes + 1, -1)
    flat[-1, : flat.shape[1] // 7] = 0  # no window evaluated there (nodata): every class 0, label 0
    flat[1:classes, 100:300] = flat[0, 100:300]  # exact ties: the first largest class wins, as in np.argmax
    flat[:-1, 400:450] = 0  # all classes 0 under a positive weight
    return sums


@pytest.mark.parametrize(("classes", "shape", "dtype"), [(6, (37, 41, 29), np.uint8), (2, (301, 257), np.uint8),
                                                         (300, (9, 11, 5), np.uint16), (1, (50, 40), np.uint8)])
def test_labels_from_sums_equal_argmax_of_normalised(classes: int, shape: tuple[int, ...],
                                                     dtype: type[np.integer]) -> None:
    sums = _sums(np.random.default_rng(classes), classes, shape)
    expected = np.argmax(normalise(sums), axis=0).astype(dtype)
    got = labels_from_sums(sums, dtype)
    assert got.dtype == dtype and got.shape == shape
    np.testing.assert_array_equal(got, expected)


def test_labels_from_sums_across_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step boundary inside the block changes nothing (steps of 1000 voxels over 43,911)."""
    monkeypatch.setattr(merger, "_LABEL_STEP", 1000)
    sums = _sums(np.random.default_rng(1), 5, (31, 39, 36))
    sums[-1, 10:20] = 0  # unevaluated voxels in some steps only
    np.testing.assert_array_equal(labels_from_sums(sums, np.uint8), np.argmax(normalise(sums), axis=0))


@pytest.mark.parametrize("step", [1000, 1 << 15])
def test_labels_from_sums_of_a_strided_slab(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """A streamed slab's own part is a strided view of the ring: labelled in contiguous pieces, same labels."""
    monkeypatch.setattr(merger, "_LABEL_STEP", step)
    ring = _sums(np.random.default_rng(2), 6, (40, 44, 32))
    view = ring[:, 3:37, 5:41, 0:24]
    assert not view[0].flags.c_contiguous
    np.testing.assert_array_equal(labels_from_sums(view, np.uint8), np.argmax(normalise(view), axis=0))
