"""A forward may cap the windows per call (OpenVINO on a CPU: one 3D window, for a quarter of the buffers), and
the sums do not depend on it; the warm-up before the first block runs one blank call of that size, not counted."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.engine import forward as forward_module
from pipeline.engine import predictor, runner
from pipeline.engine.predictor import InferenceSettings, predict_group, windows_evaluated


class _Recording:
    """A fixed per-voxel function of each window, recording the batch sizes it was called with."""

    def __init__(self, batch: int | None) -> None:
        if batch is not None:
            self.max_batch = batch
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(tuple(x.shape))
        return np.concatenate([x, np.sin(x)], axis=1).astype(np.float32)


@pytest.mark.parametrize("batch", [None, 1, 2])
def test_sums_do_not_depend_on_the_forwards_batch(monkeypatch: pytest.MonkeyPatch, batch: int | None) -> None:
    settings = InferenceSettings(roi_size=(6, 5, 4), overlap=(0.5, 0.25, 0.25), sw_batch_size=3, out_channels=2)
    region = np.random.default_rng(0).random((1, 14, 13, 10), dtype=np.float32)
    starts = ((0, 3, 6, 8), (0, 4, 8), (0, 3, 6))
    reference = _Recording(None)
    monkeypatch.setattr(predictor, "window_forward", lambda network, settings, in_channels: reference)
    expected = predict_group(region, (0, 0, 0), starts, None, settings).sums
    asked = _Recording(batch)
    monkeypatch.setattr(predictor, "window_forward", lambda network, settings, in_channels: asked)
    got = predict_group(region, (0, 0, 0), starts, None, settings).sums
    np.testing.assert_array_equal(got, expected)
    sizes = [c[0] for c in asked.calls]
    assert sum(sizes) == 36
    assert max(sizes) == min(batch or 3, settings.sw_batch_size)
    assert {c[0] for c in reference.calls} == {3}


def test_the_forwards_cap_applies_to_the_cards_batch() -> None:
    assert forward_module.forward_batch(_Recording(1), 4) == 1
    assert forward_module.forward_batch(_Recording(8), 4) == 4
    assert forward_module.forward_batch(_Recording(None), 4) == 4
    assert forward_module.forward_batch(lambda x: x, 2) == 2


@pytest.mark.parametrize(("window", "cap"), [((64, 64, 32), 1), ((96, 96, 96), 1), ((128, 128), 4), ((64, 64), 16)])
def test_openvino_calls_hold_about_one_3d_window(window: tuple[int, ...], cap: int) -> None:
    class Compiled:
        shape = (1, *window)

    assert forward_module._NumpyForward(Compiled(), None).max_batch == cap  # type: ignore[arg-type]


@pytest.mark.parametrize(("cap", "windows"), [(None, 2), (1, 1)])
def test_warm_forward_runs_one_blank_call_uncounted(monkeypatch: pytest.MonkeyPatch, cap: int | None,
                                                     windows: int) -> None:
    seen = _Recording(cap)
    built: list[int] = []

    def build(network: object, settings: InferenceSettings, in_channels: int) -> _Recording:
        built.append(in_channels)
        return seen

    monkeypatch.setattr(runner, "window_forward", build)
    before = windows_evaluated()
    runner.warm_forward(None, InferenceSettings(roi_size=(8, 4), overlap=(0.25, 0.25), sw_batch_size=2), 3)
    assert built == [3]
    assert seen.calls == [(windows, 3, 8, 4)]
    assert windows_evaluated() == before


def test_calls_queue_ahead_in_order_and_no_further() -> None:
    calls: list[int] = []

    def forward(x: np.ndarray) -> np.ndarray:
        calls.append(int(x.ravel()[0]))
        return x * 2

    source = np.arange(10, dtype=np.float32).reshape(1, 10, 1)
    batches = [[(slice(i, i + 1), slice(0, 1))] for i in range(10)]
    for n, (boxes, outputs) in enumerate(predictor._pipelined(forward, source, batches)):
        assert boxes == batches[n]
        assert outputs[0, 0, 0, 0] == 2 * n
        assert len(calls) <= n + 1 + predictor.CALLS_AHEAD
    assert calls == list(range(10))


def test_outputs_are_written_into_arrays_the_consumer_has_finished_with() -> None:
    class Forward:
        def __init__(self) -> None:
            self.given: list[np.ndarray | None] = []

        def __call__(self, x: np.ndarray) -> np.ndarray:
            raise AssertionError("a forward with into() is called through it")

        def into(self, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
            self.given.append(out)
            out = np.empty_like(x) if out is None or out.shape != x.shape else out
            return np.multiply(x, 2, out=out)

    forward = Forward()
    source = np.arange(8, dtype=np.float32).reshape(1, 8, 1)
    batches = [[(slice(i, i + 1), slice(0, 1))] for i in range(8)]
    yielded: list[int] = []
    for n, (_, outputs) in enumerate(predictor._pipelined(forward, source, batches)):
        assert float(outputs.ravel()[0]) == 2.0 * n
        yielded.append(id(outputs))
        # not one of the arrays still queued or in the consumer's hands is handed to the network
        assert all(given is None or id(given) in yielded[:-1] for given in forward.given)
    reused = [given for given in forward.given if given is not None]
    assert reused and len({id(a) for a in reused}) <= predictor.CALLS_AHEAD + 1
