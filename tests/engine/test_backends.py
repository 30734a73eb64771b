"""The OpenVINO CPU backend gives torch's results: parity on real windows, disk cache, fallback, threads."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.config.cards import ARCHITECTURES, ModelCard, load_card
from pipeline.engine import backends
from pipeline.errors import CardError, SettingsError
from pipeline.model.models import build_network, load_model
from tests.factories import grid_windows, make_card

ROOT = Path(__file__).resolve().parents[2]
CT = ROOT / "data" / "medical" / "example_ct_sm.nii.gz"
MNI = ROOT / "data" / "medical" / "mni152_t1.nii.gz"
TILE = ROOT / "data" / "geo" / "sample_geotiff.tif"
SHIPPED = {"ct-organs": CT, "mr-brain": MNI, "buildings": TILE}
BATCH = 4

#: A small random-weight network of every architecture a card may name, with the sample it runs on and its roi.
RANDOM: dict[str, tuple[int, dict[str, Any], tuple[int, ...]]] = {
    "UNet": (2, {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}, (64, 64)),
    "BasicUNet": (3, {"features": [8, 8, 16, 32, 64, 8]}, (32, 32, 32)),
    "SegResNet": (3, {"init_filters": 8, "blocks_down": [1, 2, 2], "blocks_up": [1, 1]}, (32, 32, 32)),
    "AttentionUnet": (2, {"channels": [8, 16, 32], "strides": [2, 2]}, (64, 64)),
    "SwinUNETR": (3, {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [3, 3, 3, 3]}, (64, 64, 32)),
    "UNETR": (3, {"img_size": [32, 32, 32], "feature_size": 8, "hidden_size": 96, "mlp_dim": 192, "num_heads": 4},
              (32, 32, 32)),
    "DynUNet": (3, {"kernel_size": [3, 3, 3], "strides": [1, 2, 2], "upsample_kernel_size": [2, 2]}, (32, 32, 32)),
}
#: MONAI builds these with einops, an optional dependency volseg does not install.
NEEDS_EINOPS = {"SwinUNETR", "UNETR"}


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One disk cache for the module (each network converts once), never the user's."""
    directory = tmp_path_factory.mktemp("volseg-cache")
    before = os.environ.get("VOLSEG_CACHE_DIR")
    os.environ["VOLSEG_CACHE_DIR"] = str(directory)
    backends.clear_cache()
    yield directory / "openvino"
    backends.clear_cache()
    if before is None:
        del os.environ["VOLSEG_CACHE_DIR"]
    else:
        os.environ["VOLSEG_CACHE_DIR"] = before


def assert_parity(network: Any, windows: torch.Tensor, forward: Any) -> None:
    """Probabilities within the tolerance and >= 99.99% equal labels, batch by batch (the last one smaller)."""
    assert isinstance(forward, backends.OpenVINOForward), "fell back to torch: nothing was compared"
    with torch.inference_mode():
        expected = network(windows).numpy()
    got = np.concatenate([forward(windows[i : i + BATCH]).numpy() for i in range(0, len(windows), BATCH)])
    assert got.shape == expected.shape
    diff = np.abs(backends.probabilities(got) - backends.probabilities(expected)).max()
    assert diff <= backends.PROB_TOLERANCE
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9999


def forward_for(network: Any, key: str, channels: int, window: tuple[int, ...], threads: int = 1,
                streams: int = 1) -> Any:
    return backends.compiled_forward(network, backend="openvino", key=key, in_channels=channels, window=window,
                                     batch=BATCH, placement=backends.Placement(threads, streams))


def tiny_network(seed: int = 0, act: str = "PRELU") -> torch.nn.Module:
    """A 2-level UNet small enough to convert in seconds (``CHILD`` builds the same one with seed 0)."""
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    return UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(8, 16), strides=(2,), act=act).eval()


def ct_windows(window: tuple[int, ...]) -> torch.Tensor:
    """Real CT windows (ct-organs' grid and preprocessing) cut down to ``window``."""
    windows = grid_windows(load_model("ct-organs"), CT)
    return windows[(slice(None), slice(None), *(slice(0, s) for s in window))].contiguous()


# ---------------------------------------------------------------- choosing a backend


def test_auto_is_openvino_on_cpu_and_torch_on_cuda() -> None:
    assert backends.resolve_backend("auto", torch.device("cpu")) == "openvino"
    assert backends.resolve_backend("auto", torch.device("cuda")) == "torch"
    assert backends.resolve_backend("torch", torch.device("cpu")) == "torch"
    assert backends.resolve_backend("openvino", torch.device("cuda")) == "openvino"  # forced is forced


def test_unknown_backend_is_refused_with_a_suggestion() -> None:
    with pytest.raises(SettingsError, match=r"unknown backend 'openvno'; did you mean 'openvino'\?"):
        backends.resolve_backend("openvno", torch.device("cpu"))


def test_without_openvino_auto_is_torch_and_forcing_it_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    assert backends.resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(SettingsError, match="not installed"):
        backends.resolve_backend("openvino", torch.device("cpu"))


def test_a_card_may_force_a_backend(tmp_path: Path) -> None:
    forced = make_card(tmp_path, name="forced", backend="torch")
    assert load_card(forced).backend == "torch"
    assert load_card(make_card(tmp_path, name="plain")).backend == "auto"
    forced.write_text(forced.read_text().replace("backend: torch", "backend: openvno"))
    with pytest.raises(CardError, match=r"forced.yaml: backend: unknown backend 'openvno'; did you mean 'openvino'"):
        load_card(forced)


def test_torch_backend_is_the_network_itself() -> None:
    network = tiny_network()
    assert backends.compiled_forward(network, backend="torch", key="k", in_channels=1, window=(16, 16, 16),
                                     batch=BATCH) is network


# ---------------------------------------------------------------- parity


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_models_match_torch_on_their_samples(name: str) -> None:
    model = load_model(name)
    windows = grid_windows(model, SHIPPED[name])
    forward = forward_for(model.network, model.sha256, model.card.in_channels, model.roi_size)
    assert_parity(model.network, windows, forward)


def test_every_architecture_has_a_parity_case() -> None:
    assert set(RANDOM) == set(ARCHITECTURES)


@pytest.mark.slow
@pytest.mark.parametrize("architecture", sorted(RANDOM))
def test_random_weight_networks_match_torch(architecture: str) -> None:
    if architecture in NEEDS_EINOPS:
        pytest.importorskip("einops", reason=f"MONAI builds {architecture} with einops, which is not installed")
    dims, kwargs, roi = RANDOM[architecture]
    card = ModelCard.model_validate({
        "name": "random", "architecture": architecture, "kwargs": kwargs, "spatial_dims": dims, "in_channels": 1,
        "labels": {i: {"name": f"class{i}"} for i in range(4)}, "roi_size": list(roi),
        "preprocess": {"kind": "window", "a_min": -1000, "a_max": 1000}, "weights": "random.pt", "sha256": "0" * 64})
    torch.manual_seed(0)
    network = build_network(card).eval()
    if dims == 3:
        windows = ct_windows(roi)
    else:
        windows = grid_windows(load_model("buildings"), TILE)[:10, :, : roi[0], : roi[1]].contiguous()
    assert_parity(network, windows, forward_for(network, f"random-{architecture}", 1, roi))


# ---------------------------------------------------------------- disk cache


CHILD = """
import json, torch
from pipeline.engine import backends
from monai.networks.nets import UNet
torch.manual_seed(0)
network = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(8, 16), strides=(2,)).eval()
forward = backends.compiled_forward(network, backend="openvino", key="tiny", in_channels=1, window=(16, 16, 16),
                                    batch=4, placement=backends.Placement(1))
x = torch.linspace(-1, 1, 3 * 16 ** 3).reshape(3, 1, 16, 16, 16)
print(json.dumps({"conversions": backends.conversions[0], "openvino": forward is not network,
                   "out": forward(x).flatten()[:50].tolist()}))
"""


@pytest.mark.slow
def test_a_new_process_loads_the_conversion_from_disk(cache: Path) -> None:
    import json

    def child() -> dict[str, Any]:
        env = {**os.environ, "VOLSEG_CACHE_DIR": str(cache.parent), "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                              env=env, check=True, timeout=600)
        return json.loads(done.stdout.strip().splitlines()[-1])

    first, second = child(), child()
    assert first["openvino"] and second["openvino"]
    assert (first["conversions"], second["conversions"]) == (1, 0)
    assert second["out"] == first["out"]
    entries = [p for p in cache.iterdir() if p.is_dir() and p.name.startswith("tiny-")]
    assert len(entries) == 1 and {p.name for p in entries[0].iterdir()} == {"model.xml", "model.bin"}
    assert not list(cache.glob(".*.partial"))  # the temporary directory was renamed into place


@pytest.mark.slow
def test_same_weights_key_with_another_structure_is_converted_again() -> None:
    """The key names weights; layers without weights (the activation) are part of the network too."""
    prelu, relu = tiny_network(act="PRELU"), tiny_network(act="RELU")
    windows = ct_windows((16, 16, 16))
    before = backends.conversions[0]
    assert_parity(prelu, windows, forward_for(prelu, "same-key", 1, (16, 16, 16)))
    backends.clear_cache()
    assert_parity(relu, windows, forward_for(relu, "same-key", 1, (16, 16, 16)))
    assert backends.conversions[0] == before + 2


@pytest.mark.slow
def test_a_damaged_cache_entry_is_converted_again(cache: Path) -> None:
    network = tiny_network(seed=3)
    windows = ct_windows((16, 16, 16))
    forward_for(network, "damaged", 1, (16, 16, 16))
    (entry,) = [p for p in cache.iterdir() if p.is_dir() and p.name.startswith("damaged-")]
    (entry / "model.xml").write_text("<net>")  # truncated
    backends.clear_cache()
    before = backends.conversions[0]
    assert_parity(network, windows, forward_for(network, "damaged", 1, (16, 16, 16)))
    assert backends.conversions[0] == before + 1


# ---------------------------------------------------------------- fallback


class BranchOnData(torch.nn.Module):
    """Tracing bakes in the branch taken for the zero example, so the conversion is wrong for other inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * 4 if bool((x > 0).any()) else y


def fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == backends.__name__ and r.levelno == logging.WARNING]


@pytest.mark.slow
def test_a_conversion_that_differs_from_torch_falls_back_with_one_warning(caplog: pytest.LogCaptureFixture,
                                                                            cache: Path) -> None:
    torch.manual_seed(0)
    network = BranchOnData().eval()
    x = ct_windows((16, 16, 16))[:BATCH]
    with caplog.at_level(logging.WARNING):
        for threads in (1, 1, 2):  # another thread count is another compile, not another warning
            forward = forward_for(network, "branch", 1, (16, 16, 16), threads=threads)
            assert forward is network
            with torch.inference_mode():
                assert torch.equal(forward(x), network(x))
    (warning,) = fallback_warnings(caplog)
    assert "BranchOnData" in warning.getMessage() and "probabilities differ from torch" in warning.getMessage()
    assert not [p for p in cache.iterdir() if p.is_dir() and p.name.startswith("branch-")]  # nothing cached

    caplog.clear()
    backends.clear_cache()  # as a new process: the recorded failure is not converted again, but warned once
    before = backends.conversions[0]
    with caplog.at_level(logging.WARNING):
        assert forward_for(network, "branch", 1, (16, 16, 16)) is network
    assert backends.conversions[0] == before
    assert len(fallback_warnings(caplog)) == 1


@pytest.mark.slow
def test_a_converter_error_falls_back_with_one_warning(caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import openvino

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Couldn't get TorchScript module by tracing.\nmany more lines")

    monkeypatch.setattr(openvino, "convert_model", broken)
    network = tiny_network(seed=7)
    with caplog.at_level(logging.WARNING):
        assert forward_for(network, "broken", 1, (16, 16, 16)) is network
        assert forward_for(network, "broken", 1, (16, 16, 16)) is network
    (warning,) = fallback_warnings(caplog)
    assert warning.getMessage() == ("openvino cannot run UNet (RuntimeError: Couldn't get TorchScript module by "
                                    "tracing.); using torch for it")


# ---------------------------------------------------------------- threads


@pytest.mark.slow
def test_two_threads_at_once_get_their_own_results() -> None:
    network = tiny_network(seed=5)
    forward = forward_for(network, "threads", 1, (16, 16, 16))
    windows = ct_windows((16, 16, 16))
    inputs = [windows[:BATCH], torch.flip(windows[:BATCH], dims=(2,)), windows[1 : BATCH + 1]]
    expected = [forward(x) for x in inputs]
    results: dict[int, list[bool]] = {}

    def work(i: int) -> None:
        results[i] = [torch.equal(forward(inputs[(i + n) % 3]), expected[(i + n) % 3]) for n in range(12)]

    workers = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert all(all(r) for r in results.values()) and len(results) == 3


def test_streams_are_at_most_one_per_thread_and_reach_the_compile_config() -> None:
    assert backends.Placement(2, 5).resolved() == (2, 2)
    assert backends.Placement(4, 0).resolved() == (4, 1)
    assert backends._compile_config(2, 2)["NUM_STREAMS"] == 2
    assert backends._compile_config(2)["NUM_STREAMS"] == 1


@pytest.mark.slow
def test_two_streams_are_compiled_apart_and_give_the_same_outputs() -> None:
    network = tiny_network(seed=7)
    one = forward_for(network, "streams", 1, (16, 16, 16), threads=2, streams=1)
    two = forward_for(network, "streams", 1, (16, 16, 16), threads=2, streams=2)
    assert isinstance(two, backends.OpenVINOForward)
    assert one is not two
    assert int(two.compiled.get_property("NUM_STREAMS")) == 2
    assert int(one.compiled.get_property("NUM_STREAMS")) == 1
    windows = ct_windows((16, 16, 16))[:BATCH].numpy()
    np.testing.assert_allclose(two.run(windows), one.run(windows), rtol=0, atol=1e-4)


def test_outputs_go_into_a_buffer_of_their_shape_and_a_new_array_otherwise() -> None:
    network = tiny_network(seed=6)
    forward = forward_for(network, "into", 1, (16, 16, 16), threads=2)
    windows = ct_windows((16, 16, 16))[:2].numpy()
    expected = forward.run(windows)
    buffer = np.full_like(expected, np.nan)
    assert forward.run(windows, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, expected)
    wrong = np.zeros((1, *expected.shape[1:]), np.float32)
    got = forward.run(windows, out=wrong)
    assert got is not wrong and not wrong.any()
    np.testing.assert_array_equal(got, expected)
    first = forward.run(windows[:1])
    kept = first.copy()
    forward.run(windows[1:])  # the request's own buffer now holds another window's outputs
    np.testing.assert_array_equal(first, kept)
    assert not np.array_equal(first, forward.run(windows[1:]))

