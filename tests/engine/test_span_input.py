"""A span stored narrower than float32 stays in its stored type and each batch of windows is preprocessed as it is
cut: the windows the network sees are the same values, bit for bit, as cut from the span preprocessed whole and
zero-padded (with nodata made neutral, and windows reaching into the padding on every side)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from pipeline.config.preprocess import WindowScale
from pipeline.engine.span_input import ImageSource
from pipeline.model.intensity import apply, neutralise

STEP = WindowScale(a_min=-300, a_max=500, b_min=0, b_max=1, clip=True)


def _preprocess(block: np.ndarray, statistics: Any, valid: np.ndarray | None = None) -> np.ndarray:
    return neutralise(apply(STEP, block, statistics), valid)


def _source(tmp_path: Path, values: np.ndarray, valid: np.ndarray | None) -> ImageSource:
    group = zarr.open_group(zarr.storage.LocalStore(tmp_path / "w.zarr"), mode="w", zarr_format=3)
    group.create_array("image", data=values, chunks=(1, 8, 8, 8))
    if valid is not None:
        group.create_array("valid", data=valid, chunks=(8, 8, 8))
    return ImageSource(store=str(tmp_path / "w.zarr"), name="image", pads=(3, 0, 2), preprocess=_preprocess,
                       statistics={}, valid="valid" if valid is not None else None)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
@pytest.mark.parametrize("nodata", [False, True])
def test_windows_are_the_same_values_as_from_the_whole_span(tmp_path: Path, dtype: type, nodata: bool) -> None:
    rng = np.random.default_rng(7)
    values = (rng.standard_normal((1, 13, 11, 9)) * 400 + 100).clip(-2000, 2000)
    values = values.clip(0, 255) if dtype is np.uint8 else values
    values = values.astype(dtype)
    valid = rng.random((13, 11, 9)) > 0.2 if nodata else None
    source = _source(tmp_path, values, valid)
    span = ((0, -1, 0), (19, 12, 13))  # padded coordinates: 3 before and 3 past the end on i, 2 before and 2 past on k
    region, got_valid, prepare = source.read(span)
    assert (prepare is None) == (np.dtype(dtype).itemsize >= 4)
    assert region.dtype == (np.float32 if prepare is None else dtype)

    expected = np.zeros((1, 19, 13, 13), np.float32)  # the span preprocessed whole, then zero-padded, by hand
    expected[:, 3:16, 1:12, 2:11] = _preprocess(values[:, :, 0:11, :], {}, None if valid is None else valid[:, 0:11, :])
    roi = (6, 5, 4)
    boxes = [tuple(slice(s, s + r) for s, r in zip(corner, roi, strict=True))
             for corner in itertools.product((0, 7, 13), (0, 4, 8), (0, 5, 9))]
    windows = np.stack([region[(slice(None), *box)] for box in boxes])
    shown = windows if prepare is None else prepare(windows, boxes)
    for box, window in zip(boxes, shown, strict=True):
        assert np.array_equal(window.view(np.uint32), expected[(slice(None), *box)].view(np.uint32)), box
    if valid is not None:
        assert got_valid is not None
        assert not got_valid[:3].any() and not got_valid[16:].any() and not got_valid[:, :, :2].any()
