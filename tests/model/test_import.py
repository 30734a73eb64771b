"""MONAI bundles and TorchScript files load through ``load_model`` and run through the same engine,
giving the native card's outputs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from pipeline import load_model, segment_volume, sliding_window
from pipeline.errors import CardError, ModelError
from pipeline.io.hashing import sha256_file
from tests.factories import make_card, write_nifti

ROI = (16, 16, 16)
KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [8, 16, 32], "strides": [2, 2],
          "num_res_units": 1}


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded untrained card (random weights are enough to compare outputs)."""
    directory = tmp_path_factory.mktemp("native")
    return make_card(directory, name="native", roi_size=ROI, seed=3)


def make_bundle(root: Path, weights: Path, *, network_def: dict[str, Any] | str | None = None,
                aligned: list[dict[str, Any]] | None = None) -> Path:
    """A minimal MONAI bundle: configs/inference.json + metadata.json + models/model.pt (``aligned``:
    extra geometric preprocessing steps, e.g. Orientationd / Spacingd)."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    shutil.copy(weights, root / "models" / "model.pt")
    inference = {
        "bundle_root": ".",
        "network_def": network_def or {"_target_": "UNet", **KWARGS},
        "network": "$@network_def.to('cpu')",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            *(aligned or []),
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 1000,
             "b_min": 0.0, "b_max": 1.0, "clip": True}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(ROI), "sw_batch_size": 4, "overlap": 0.25},
    }
    metadata = {"name": "Tiny Test Bundle", "version": "0.1.0", "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": list(ROI)}},
        "outputs": {"pred": {"type": "image", "num_channels": 3,
                             "channel_def": {"0": "background", "1": "organ", "2": "lesion"}}}}}
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    return root


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(-1000, 1000, size=(1, 37, 29, 21)).astype(np.float32)


def logits(model: Any, volume: np.ndarray) -> np.ndarray:
    x = model.preprocess(volume)
    # in-process on purpose: a session Dask client may exist, and a ScriptModule cannot be pickled to it
    # (workers get models by ModelRef instead, tested below)
    lazy = sliding_window(x, model.network, model.roi_size, model.overlap)
    return np.asarray(lazy.compute(scheduler="synchronous"))


def test_bundle_directory_equals_native(native: Path, tmp_path: Path, volume: np.ndarray) -> None:
    reference = load_model(native)
    bundle = make_bundle(tmp_path / "tiny_bundle", native.parent / "native.pt")
    model = load_model(bundle)
    assert model.card.architecture == "bundle"
    assert model.name == "tiny-test-bundle"
    assert model.roi_size == ROI
    assert [label.name for label in model.labels.values()] == ["background", "organ", "lesion"]
    assert model.card.preprocess == reference.card.preprocess
    assert model.sha256 == sha256_file(bundle / "models" / "model.pt")
    np.testing.assert_array_equal(logits(model, volume), logits(reference, volume))


def test_bundle_orientation_and_spacing_become_card_fields(native: Path, tmp_path: Path) -> None:
    """A bundle that reorients and resamples its input: its windows get the same treatment."""
    steps = [{"_target_": "Orientationd", "keys": "image", "axcodes": "ras"},
             {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"}]
    model = load_model(make_bundle(tmp_path / "b", native.parent / "native.pt", aligned=steps))
    assert (model.card.orientation, model.card.spacing) == ("RAS", (1.5, 1.5, 2.0))
    assert load_model(make_bundle(tmp_path / "plain", native.parent / "native.pt")).card.orientation is None


def test_card_beside_bundle_wins(native: Path, tmp_path: Path) -> None:
    make_bundle(tmp_path / "b", native.parent / "native.pt")
    card = yaml.safe_load(native.read_text())
    card.update(name="carded", architecture="bundle", kwargs={}, weights="b/models/model.pt", roi_size=[32, 32, 16])
    (tmp_path / "carded.yaml").write_text(yaml.safe_dump(card))
    model = load_model(tmp_path / "carded.yaml")
    assert model.roi_size == (32, 32, 16)  # the card's, not the bundle's inferer roi
    assert [label.name for label in model.labels.values()] == ["class0", "class1", "class2"]


def test_bundle_refuses_code_outside_monai_unless_trusted(native: Path, tmp_path: Path, volume: np.ndarray) -> None:
    expression = f"$monai.networks.nets.UNet(**{KWARGS!r})"
    bundle = make_bundle(tmp_path / "expr", native.parent / "native.pt", network_def=expression)
    with pytest.raises(ModelError, match=r"outside monai.*expression"):
        load_model(bundle)
    trusted = load_model(bundle, trust=True)
    assert trusted.ref.trust
    np.testing.assert_array_equal(logits(trusted, volume), logits(load_model(native), volume))

    foreign = make_bundle(tmp_path / "foreign", native.parent / "native.pt",
                          network_def={"_target_": "torch.nn.Identity"})
    with pytest.raises(ModelError, match=re.escape("_target_ 'torch.nn.Identity'")):
        load_model(foreign)


def test_bundle_with_wrong_weights_fails_cleanly(native: Path, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "wrong", native.parent / "native.pt",
                         network_def={"_target_": "UNet", **KWARGS, "channels": [4, 8, 16]})
    with pytest.raises(ModelError, match="weights do not fit"):
        load_model(bundle)


def torchscript_card(native: Path, directory: Path) -> Path:
    network = load_model(native).network
    scripted = torch.jit.script(network)
    path = directory / "scripted.ts"
    scripted.save(str(path))
    card = yaml.safe_load(native.read_text())
    card.update(name="scripted", architecture="torchscript", kwargs={}, weights=path.name, sha256=sha256_file(path))
    (directory / "scripted.yaml").write_text(yaml.safe_dump(card))
    return path


def test_torchscript_equals_native(native: Path, tmp_path: Path, volume: np.ndarray) -> None:
    path = torchscript_card(native, tmp_path)
    by_file, by_card = load_model(path), load_model(tmp_path / "scripted.yaml")
    assert isinstance(by_file.network, torch.jit.ScriptModule)
    expected = logits(load_model(native), volume)
    np.testing.assert_allclose(logits(by_file, volume), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(logits(by_card, volume), expected, rtol=0, atol=1e-5)


def test_torchscript_checksum_and_missing_card(native: Path, tmp_path: Path) -> None:
    path = torchscript_card(native, tmp_path)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelError, match="sha256"):
        load_model(path)
    lone = tmp_path / "lone.ts"
    shutil.copy(path, lone)
    with pytest.raises(CardError, match="needs a card beside it"):
        load_model(lone)


@pytest.mark.slow
def test_imported_models_segment_like_native_on_workers(native: Path, tmp_path: Path, client2: Any) -> None:
    """Dask workers load bundles and TorchScript by ModelRef, and the masks equal the native card's."""
    rng = np.random.default_rng(1)
    scan = write_nifti(tmp_path / "scan.nii.gz", rng.uniform(-1000, 1000, size=(40, 36, 20)).astype(np.float32))
    bundle = make_bundle(tmp_path / "bundle", native.parent / "native.pt")
    ts = torchscript_card(native, tmp_path)
    masks = {}
    for name, model in {"native": native, "bundle": bundle, "ts": ts}.items():
        out = tmp_path / f"{name}.nii.gz"
        segment_volume(scan, model=model, output=out, client=client2, chunks=(24, 24, 24))
        masks[name] = np.asarray(nib.load(out).dataobj)
    assert len(np.unique(masks["native"])) > 1
    np.testing.assert_array_equal(masks["bundle"], masks["native"])
    np.testing.assert_array_equal(masks["ts"], masks["native"])


def test_cli_models_show_bundle_and_list_fields(native: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    bundle = make_bundle(tmp_path / "bundle", native.parent / "native.pt")
    shown = CliRunner().invoke(app, ["models", "show", str(bundle)])
    assert shown.exit_code == 0, shown.output
    card = json.loads(shown.stdout)
    assert card["name"] == "tiny-test-bundle"
    assert card["roi_size"] == list(ROI)
    monkeypatch.setenv("PIPELINE_MODELS_DIR", str(native.parent))
    listed = CliRunner().invoke(app, ["models", "list"])
    assert listed.exit_code == 0
    assert f"sha256 {sha256_file(native.parent / 'native.pt')[:12]}" in listed.stdout
