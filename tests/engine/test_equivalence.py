"""The Dask engine equals MONAI's in-memory sliding window, window for window."""

from __future__ import annotations

from typing import Any

import dask
import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from pipeline import sliding_window
from pipeline.engine import count_windows

RNG = np.random.default_rng(3)


class Counting(torch.nn.Module):
    """Wraps a network and counts the windows it sees (in-process schedulers only)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.windows = inner, 0
        self.out_channels = inner.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += int(x.shape[0])
        return self.inner(x)


class PlusOne(torch.nn.Module):
    """The identity-like predictor MONAI's own tests use: blending it must return x + 1 exactly."""

    out_channels = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


def unet(dims: int, seed: int = 0, in_channels: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    return UNet(dims, in_channels, 3, channels=(4, 8), strides=(2,), num_res_units=0).eval()


def monai(x: np.ndarray, net: torch.nn.Module, roi: Any, overlap: Any, mode: str = "gaussian") -> np.ndarray:
    with torch.inference_mode():
        return sliding_window_inference(torch.from_numpy(x)[None], roi, 4, net, overlap, mode=mode)[0].numpy()


def softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(axis=0, keepdims=True))
    return e / e.sum(axis=0)


CASES = [  # shape (spatial), roi, overlap, chunks
    ((40, 37, 29), (16, 16, 16), 0.25, 20),
    ((30, 12, 5), (16, 16, 8), 0.5, 8),  # roi larger than the image on two axes: MONAI pads
    ((24, 24, 1), (16, 16, 16), 0.25, 16),  # one voxel thick
    ((33, 47), (16, 32), (0.1, 0.7), 24),  # 2D, per-axis overlap
    ((129, 65), (32, 32), 0.0, 50),
    ((20, 20, 20), (0, 8, -1), 0.25, 7),  # roi <= 0 falls back to the image size
]


@pytest.mark.parametrize(("shape", "roi", "overlap", "chunks"), CASES)
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_equals_monai_in_memory(shape: tuple[int, ...], roi: Any, overlap: Any, chunks: int, mode: str) -> None:
    x = RNG.standard_normal((2, *shape)).astype(np.float32)
    net = unet(len(shape))
    ours_net, ref_net = Counting(net), Counting(net)
    ref = monai(x, ref_net, roi, overlap, mode)
    with dask.config.set(scheduler="synchronous"):
        ours = sliding_window(x, ours_net, roi, overlap, mode=mode, chunks=chunks).compute()
    assert ours.shape == ref.shape
    assert np.abs(softmax(ours) - softmax(ref)).max() < 1e-4
    assert np.abs(ours - ref).max() < 1e-4
    assert (ours.argmax(0) == ref.argmax(0)).mean() >= 0.9999
    assert ours_net.windows == ref_net.windows == count_windows(shape, roi, overlap)


@pytest.mark.parametrize(("shape", "roi"), [((19, 23, 11), (8, 8, 8)), ((50, 9), (16, 16))])
def test_plus_one_is_exact(shape: tuple[int, ...], roi: tuple[int, ...]) -> None:
    x = RNG.standard_normal((1, *shape)).astype(np.float32)
    with dask.config.set(scheduler="synchronous"):
        out = sliding_window(x, PlusOne(), roi, 0.5, chunks=6).compute()
    np.testing.assert_allclose(out, x + 1, atol=1e-5)


def test_accepts_zarr_and_dask_inputs(tmp_path: Any) -> None:
    import dask.array as da
    import zarr

    x = RNG.standard_normal((2, 35, 26, 18)).astype(np.float32)
    z = zarr.create_array(tmp_path / "x.zarr", shape=x.shape, chunks=(2, 16, 16, 16), dtype="float32")
    z[...] = x
    net = unet(3)
    ref = monai(x, net, (16, 16, 16), 0.25)
    with dask.config.set(scheduler="threads"):
        from_zarr = sliding_window(z, net, (16, 16, 16), chunks=(20, 13, 9)).compute()
        from_dask = sliding_window(da.from_array(x, chunks=(2, 10, 10, 10)), net, 16).compute()
    assert np.abs(from_zarr - ref).max() < 1e-4
    assert np.abs(from_dask - ref).max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("client_name", ["client1", "client2"])
def test_equals_monai_on_distributed_workers(client_name: str, request: pytest.FixtureRequest, data_dir: Any) -> None:
    """Real CT, real worker processes: the network is scattered once, results match MONAI."""
    import nibabel as nib

    client = request.getfixturevalue(client_name)
    ct = np.asanyarray(nib.load(data_dir / "medical" / "example_ct_sm.nii.gz").dataobj).astype(np.float32)
    x = (np.clip(ct, -1000, 1000)[None] + 1000) / 2000
    net = unet(3, seed=1, in_channels=1)
    ref = monai(x, net, (48, 48, 16), 0.25)
    # compute on the client the network was scattered to (two clusters live in this session)
    ours = client.compute(sliding_window(x, net, (48, 48, 16), 0.25, chunks=(64, 50, 16), client=client)).result()
    assert np.abs(softmax(ours) - softmax(ref)).max() < 1e-4
    assert (ours.argmax(0) == ref.argmax(0)).mean() >= 0.9999
