"""The pointwise steps run in place, in a copy of the block (no block-sized temporaries): the same bits as each
step computed out of place, for stored integer and float blocks, and the caller's block is never modified."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config.preprocess import WindowScale, ZScore
from pipeline.model.intensity import _in_place, apply, apply_step

STEPS = [
    (WindowScale(a_min=-175, a_max=250, b_min=0, b_max=1, clip=True), {}),
    (WindowScale(a_min=-1000, a_max=1000, b_min=-1, b_max=1, clip=False), {}),
    (ZScore(nonzero=False, channel_wise=True), {"mean": [3.5, -2.25], "std": [401.3, 799.7]}),
    (ZScore(nonzero=False, channel_wise=False), {"mean": [3.5], "std": [401.3]}),
]


@pytest.mark.parametrize(("step", "values"), STEPS)
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_in_place_gives_the_same_bits(step: object, values: dict, dtype: type) -> None:
    block = (np.random.default_rng(3).standard_normal((2, 17, 9, 5)) * 900).astype(dtype)
    expected = apply_step(step, np.asarray(block, np.float32), values).astype(np.float32)
    data = np.array(block, np.float32)
    assert _in_place(step, data, values)
    assert np.array_equal(expected.view(np.uint32), data.view(np.uint32))


def test_steps_needing_the_original_values_are_left_to_apply_step() -> None:
    assert not _in_place(ZScore(nonzero=True), np.ones((1, 2, 2), np.float32), {"mean": [0.0], "std": [1.0]})


def test_apply_never_modifies_its_input() -> None:
    block = np.linspace(-2000, 2000, 2 * 6 * 7, dtype=np.float32).reshape(2, 6, 7)
    before = block.copy()
    out = apply(STEPS[0][0], block, {})
    assert out is not block
    assert np.array_equal(block, before)
    assert out.dtype == np.float32
    assert out.min() == 0
    assert out.max() == pytest.approx(1, abs=1e-6)
