"""--tta mirror equals MONAI's sliding window over the same flip-averaged network."""

from __future__ import annotations

import itertools
from typing import Any

import dask
import numpy as np
import pytest
import torch

from pipeline import sliding_window
from pipeline.engine.tta import mirror_axes, passes
from pipeline.errors import SettingsError
from tests.engine.test_equivalence import Counting, monai, unet

RNG = np.random.default_rng(11)


class FlipAveraged(torch.nn.Module):
    """nnU-Net's mirroring written out independently: the mean of net(x) and every flip(net(flip(x)))."""

    def __init__(self, inner: torch.nn.Module, dims: int) -> None:
        super().__init__()
        self.inner, self.dims = inner, dims
        self.out_channels = inner.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [self.inner(x)]
        for r in range(1, self.dims + 1):
            for axes in itertools.combinations(range(2, 2 + self.dims), r):
                outputs.append(self.inner(x.flip(axes)).flip(axes))
        return torch.stack(outputs).mean(0)


@pytest.mark.parametrize(("shape", "roi", "overlap", "chunks"), [
    ((40, 37, 29), (16, 16, 16), 0.25, 20),
    ((30, 12, 5), (16, 16, 8), 0.5, 8),  # roi larger than the image: padded before mirroring, as in MONAI
    ((33, 47), (16, 32), (0.1, 0.7), 24),
])
def test_mirror_equals_monai_with_flip_averaged_network(shape: tuple[int, ...], roi: Any, overlap: Any,
                                                         chunks: int) -> None:
    x = RNG.standard_normal((2, *shape)).astype(np.float32)
    net = unet(len(shape), seed=4)
    ref = monai(x, FlipAveraged(net, len(shape)), roi, overlap)
    counted = Counting(net)
    with dask.config.set(scheduler="synchronous"):
        ours = sliding_window(x, counted, roi, overlap, chunks=chunks, tta="mirror").compute()
        plain = sliding_window(x, net, roi, overlap, chunks=chunks).compute()
    assert np.abs(ours - ref).max() < 1e-4
    assert np.abs(plain - ref).max() > 1e-3  # mirroring changes the outputs of an untrained net
    windows = monai_windows(x, net, roi, overlap)
    assert counted.windows == passes("mirror", len(shape)) * windows


def monai_windows(x: np.ndarray, net: torch.nn.Module, roi: Any, overlap: Any) -> int:
    counted = Counting(net)
    monai(x, counted, roi, overlap)
    return counted.windows


def test_axes_and_passes() -> None:
    assert mirror_axes(2) == [(), (2,), (3,), (2, 3)]
    assert len(mirror_axes(3)) == passes("mirror", 3) == 8
    assert passes("none", 3) == 1


def test_unknown_mode_is_one_line() -> None:
    with pytest.raises(SettingsError, match=r"unknown --tta 'mirorr'; did you mean 'mirror'\?"):
        sliding_window(np.zeros((1, 8, 8), np.float32), torch.nn.Conv2d(1, 2, 1), 8, tta="mirorr")
