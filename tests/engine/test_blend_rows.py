"""Blending row by row (a ring ``roi`` deep on one axis) gives the sums of blending the whole span at once.

Whatever the streamed axis, with windows skipped (a whole row of them too: its slab is zeros) and with
steps that do or do not divide the span. The network is a fixed function of each window's content, so a
window blended at the wrong place would show.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.engine import predictor
from pipeline.engine.predictor import InferenceSettings, blend_slabs, importance_map, window_corners


def _network(x: np.ndarray) -> np.ndarray:
    """(B, 1, *roi) -> (B, 3, *roi): per-voxel functions of the window, plus a window-wide term."""
    mean = x.mean(axis=tuple(range(1, x.ndim)), keepdims=True)
    return np.concatenate([x, x * x, np.broadcast_to(mean, x.shape)], axis=1).astype(np.float32)


def _whole_span(region: np.ndarray, lo: tuple[int, ...], corners: list[tuple[int, ...]],
                settings: InferenceSettings) -> np.ndarray:
    weight = importance_map(settings.roi_size, settings.mode, settings.sigma_scale)
    sums = np.zeros((4, *region.shape[1:]), np.float32)
    for corner in corners:
        box = tuple(slice(c - o, c - o + r) for c, o, r in zip(corner, lo, settings.roi_size, strict=True))
        out = _network(region[(slice(None), *box)][None])[0]
        sums[(slice(None), *box)][:-1] += out * weight
        sums[(slice(None), *box)][-1] += weight
    return sums


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("skip", ["none", "some", "a row"])
def test_rows_along_any_axis_equal_the_whole_span(monkeypatch: pytest.MonkeyPatch, axis: int, skip: str) -> None:
    monkeypatch.setattr(predictor, "window_forward", lambda network, settings, in_channels: _network)
    settings = InferenceSettings(roi_size=(8, 6, 4), overlap=(0.25, 0.5, 0.0), sw_batch_size=3, out_channels=3)
    lo = (5, 0, 12)
    starts = ((5, 11, 15), (0, 3, 6, 9), (12, 16, 20, 24))  # the last step on axis 0 is shorter, as MONAI's
    span = (15 + 8 - 5, 9 + 6, 24 + 4 - 12)
    region = np.random.default_rng(axis).random((1, *span), dtype=np.float32)
    corners = window_corners(lo, starts, settings.roi_size, axis)
    if skip == "some":
        corners = corners[::3]
    elif skip == "a row":  # every window starting at the second start on the streamed axis
        corners = [c for c in corners if c[axis] != starts[axis][1]]
    got = np.full((4, *span), np.nan, np.float32)
    rows = 0
    for start, slab in blend_slabs(region, lo, corners, None, settings, axis):
        at = start - lo[axis]
        assert at == rows, "slabs arrive in order, without gaps"
        got[(slice(None),) * (axis + 1) + (slice(at, at + slab.shape[axis + 1]),)] = slab
        rows += slab.shape[axis + 1]
    assert rows == span[axis]
    np.testing.assert_allclose(got, _whole_span(region, lo, corners, settings), rtol=1e-5, atol=1e-6)


def test_corners_are_in_rows_along_the_axis_and_all_there() -> None:
    starts = ((0, 4), (0, 2, 5), (1, 3))
    for axis in range(3):
        corners = window_corners((0, 0, 0), starts, (4, 4, 4), axis)
        assert sorted(corners) == sorted(itertools.product(*starts))
        assert [c[axis] for c in corners] == sorted(c[axis] for c in corners)
