"""--tta mirror equals MONAI's sliding window over the same flip-averaged network."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import dask
import numpy as np
import pytest
import torch

from pipeline import sliding_window
from pipeline.config.cards import load_card
from pipeline.engine.api import blend
from pipeline.engine.predictor import InferenceSettings
from pipeline.engine.tta import combinations, mirror_axes, passes, trained_axes
from pipeline.engine.windows import parse_overlap
from pipeline.errors import SettingsError
from pipeline.model.models import resolve_card_path
from tests.engine.test_equivalence import Counting, monai, unet

RNG = np.random.default_rng(11)


class FlipAveraged(torch.nn.Module):
    """nnU-Net's mirroring written out independently: the mean of net(x) and every flip(net(flip(x)))."""

    def __init__(self, inner: torch.nn.Module, axes: Sequence[int]) -> None:
        super().__init__()
        self.inner, self.dims = inner, [2 + a for a in axes]
        self.out_channels = inner.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [self.inner(x)]
        for r in range(1, len(self.dims) + 1):
            for dims in itertools.combinations(self.dims, r):
                outputs.append(self.inner(x.flip(dims)).flip(dims))
        return torch.stack(outputs).mean(0)


def monai_windows(x: np.ndarray, net: torch.nn.Module, roi: Any, overlap: Any) -> int:
    counted = Counting(net)
    monai(x, counted, roi, overlap)
    return counted.windows


@pytest.mark.parametrize(("shape", "roi", "overlap", "chunks"), [
    ((40, 37, 29), (16, 16, 16), 0.25, 20),
    ((30, 12, 5), (16, 16, 8), 0.5, 8),  # roi larger than the image: padded before mirroring, as in MONAI
    ((33, 47), (16, 32), (0.1, 0.7), 24),
])
def test_mirror_equals_monai_with_flip_averaged_network(shape: tuple[int, ...], roi: Any, overlap: Any,
                                                         chunks: int) -> None:
    x = RNG.standard_normal((2, *shape)).astype(np.float32)
    net = unet(len(shape), seed=4)
    ref = monai(x, FlipAveraged(net, range(len(shape))), roi, overlap)
    counted = Counting(net)
    with dask.config.set(scheduler="synchronous"):
        ours = sliding_window(x, counted, roi, overlap, chunks=chunks, tta="mirror").compute()
        plain = sliding_window(x, net, roi, overlap, chunks=chunks).compute()
    assert np.abs(ours - ref).max() < 1e-4
    assert np.abs(plain - ref).max() > 1e-3  # mirroring changes the outputs of an untrained net
    assert counted.windows == 2 ** len(shape) * monai_windows(x, net, roi, overlap)


@pytest.mark.parametrize("axes", [(2,), (0, 2)])
def test_mirror_along_some_axes_equals_monai(axes: tuple[int, ...]) -> None:
    x = RNG.standard_normal((2, 40, 37, 29)).astype(np.float32)
    net = unet(3, seed=5)
    ref = monai(x, FlipAveraged(net, axes), (16, 16, 16), 0.25)
    settings = InferenceSettings(roi_size=(16, 16, 16), overlap=parse_overlap(0.25, 3), mirror_axes=axes)
    with dask.config.set(scheduler="synchronous"):
        ours = blend(x, net, settings, out_channels=3, chunks=(20, 20, 20)).compute()
    assert np.abs(ours - ref).max() < 1e-4


def test_axes_of_the_shipped_cards() -> None:
    """ct-organs flipped k only, mr-brain i only; buildings' quarter turns and flips give every mirroring."""
    cards = {name: load_card(resolve_card_path(name)) for name in ("ct-organs", "mr-brain", "buildings")}
    assert trained_axes(cards["ct-organs"], 3) == (2,)
    assert trained_axes(cards["mr-brain"], 3) == (0,)
    assert trained_axes(cards["buildings"], 2) == (0, 1)
    assert mirror_axes("mirror-all", 3, cards["ct-organs"]) == (0, 1, 2)
    assert mirror_axes("mirror", 3, None) == (0, 1, 2)  # no recipe: every axis
    assert mirror_axes("none", 3, cards["ct-organs"]) == ()


def test_combinations_and_passes() -> None:
    assert combinations((0, 1)) == [(), (2,), (3,), (2, 3)]
    assert len(combinations((0, 1, 2))) == passes((0, 1, 2)) == 8
    assert passes(()) == 1


def test_unknown_mode_is_one_line() -> None:
    with pytest.raises(SettingsError, match=r"^unknown --tta 'mirorr' \(choices: none, mirror, mirror-all\)$"):
        sliding_window(np.zeros((1, 8, 8), np.float32), torch.nn.Conv2d(1, 2, 1), 8, tta="mirorr")


def test_network_axes_map_to_scan_axes_through_the_alignment() -> None:
    """Windows reach the forward on the scan's grid: model axis m is scan axis perm[m]."""
    from pipeline.engine.alignment import WindowAlignment
    from pipeline.engine.tta import scan_axes

    align = WindowAlignment(perm=(2, 0, 1), flip=(True, False, False), roi_model=(8, 8, 8), roi_scan=(8, 8, 8))
    assert scan_axes((0,), align) == (2,)
    assert scan_axes((1, 2), align) == (0, 1)
    assert scan_axes((2,), None) == (2,)
    x = RNG.standard_normal((2, 1, 8, 8, 8)).astype(np.float32)
    model_view = align.to_model_array(x)
    # mirroring the scan window along scan axis perm[0] is mirroring the network's view along its axis 0
    np.testing.assert_array_equal(align.to_model_array(np.flip(x, 2 + 2)), np.flip(model_view, 2 + 0))
