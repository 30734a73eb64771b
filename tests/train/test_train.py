"""``pipeline train`` on tiny synthetic datasets: the loss falls, the card and weights are written and
load back, the sha256 matches, and a resumed run continues the epoch count to the same weights."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline import load_model
from pipeline.cli import app
from pipeline.config.catalog import load_catalog
from pipeline.errors import CatalogError, InputError
from pipeline.io.hashing import sha256_file
from pipeline.train.trainer import TrainSettings, train
from tests.factories import make_card, write_nifti

RECIPE = {"batch_size": 2, "steps_per_epoch": 6, "lr": 0.01, "flip_axes": [0]}


def synthetic_volume(directory: Path) -> tuple[Path, Path]:
    """A CT-like volume with a bright ball (source id 7 -> class 1) and a dark box (ids 3, 4 -> class 2)."""
    rng = np.random.default_rng(0)
    shape = (40, 36, 28)
    grid = np.indices(shape)
    ball = ((grid - np.array([20, 18, 14])[:, None, None, None]) ** 2).sum(axis=0) < 8**2
    box = np.zeros(shape, dtype=bool)
    box[4:12, 4:30, 2:26] = True
    image = rng.normal(0, 50, shape).astype(np.float32) + 600 * ball - 600 * box
    ids = np.zeros(shape, dtype=np.uint8)
    ids[ball] = 7
    ids[box] = 3
    ids[box & (grid[2] > 14)] = 4
    return (write_nifti(directory / "img.nii.gz", image), write_nifti(directory / "seg.nii.gz", ids))


def write_catalog(directory: Path, datasets: dict[str, Any]) -> Path:
    catalog = {"output_root": "out", "sources": [{"name": "x", "kind": "medical", "directory": ".", "model": "tiny"}],
               "datasets": datasets}
    path = directory / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    return path


@pytest.fixture
def volume_setup(tmp_path: Path) -> tuple[Path, Path]:
    """(catalog, card template) for a 3-class 3D dataset with slices k >= 20 held out."""
    image, labels = synthetic_volume(tmp_path)
    catalog = write_catalog(tmp_path, {"blobs": {
        "kind": "medical", "pairs": [{"image": image.name, "labels": labels.name}],
        "holdout": {"axis": 2, "start": 20}, "label_map": {1: [7], 2: ["3-4"]}}})
    (tmp_path / "cards").mkdir()
    card = make_card(tmp_path / "cards", name="blobs", roi_size=(16, 16, 16), training={"recipe": RECIPE},
                     preprocess={"kind": "window", "a_min": -1000, "a_max": 1000})
    return catalog, card


def test_train_writes_card_and_weights_and_loss_falls(volume_setup: tuple[Path, Path], tmp_path: Path) -> None:
    catalog, card = volume_setup
    out = tmp_path / "trained"
    out.mkdir()
    result = train("blobs", card, epochs=2, catalog=catalog, out_dir=out, settings=TrainSettings(seed=1))
    assert result.losses[1] < result.losses[0]
    written = yaml.safe_load(result.card.read_text())
    assert written["sha256"] == sha256_file(result.weights) == sha256_file(out / "blobs.pt")
    assert set(written["metrics"]["dice_heldout"]) == {"class0", "class1", "class2"}
    assert written["metrics"]["heldout"] == ["img.nii.gz k >= 20"]
    training = written["training"]
    assert training["epochs"] == 2
    assert training["seed"] == 1
    assert training["recipe"]["batch_size"] == 2
    assert training["dataset"] == "blobs"
    assert training["holdout"] == {"axis": 2, "start": 20}
    assert len(training["validation_dice_per_epoch"]) == 2
    assert training["code_version"]
    assert not list(out.glob(".*"))  # checkpoint removed after success
    model = load_model(result.card)  # the filled card validates and its weights load
    assert model.sha256 == written["sha256"]


def test_resume_continues_the_epoch_count_to_identical_weights(volume_setup: tuple[Path, Path],
                                                                tmp_path: Path) -> None:
    catalog, card = volume_setup
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    expected = train("blobs", card, epochs=2, catalog=catalog, out_dir=straight)

    def stop(epoch: int, loss: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("blobs", card, epochs=2, catalog=catalog, out_dir=resumed, on_epoch=stop)
    checkpoint = resumed / ".blobs.ckpt.pt"
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    assert not (resumed / "blobs.pt").exists()
    result = train("blobs", card, epochs=2, catalog=catalog, out_dir=resumed)
    assert result.resumed_from == 1
    assert len(result.losses) == 2
    assert result.losses == pytest.approx(expected.losses, abs=0)
    assert sha256_file(result.weights) == sha256_file(expected.weights)  # byte-identical, not just close
    assert not checkpoint.exists()


def test_checkpoint_from_other_arguments_is_not_resumed(volume_setup: tuple[Path, Path], tmp_path: Path) -> None:
    catalog, card = volume_setup
    out = tmp_path / "o"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        train("blobs", card, epochs=2, catalog=catalog, out_dir=out, on_epoch=lambda e, v: (_ for _ in ()).throw(
            KeyboardInterrupt))
    # other seed and epochs
    result = train("blobs", card, epochs=1, catalog=catalog, out_dir=out, settings=TrainSettings(seed=5))
    assert result.resumed_from == 0
    assert len(result.losses) == 1


def test_geotiff_with_vector_labels(tmp_path: Path) -> None:
    """Rasters: footprints (GeoJSON) are rasterised on the tile's grid; columns >= 48 are held out."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(2)
    data = rng.normal(200, 20, (64, 64)).astype(np.float32)
    squares = [(8, 8), (30, 20), (40, 50), (12, 44)]
    features = []
    for row, col in squares:
        data[row:row + 10, col:col + 10] += 700
        x0, y0 = 500000 + col, 4000000 - row
        ring = [[x0, y0], [x0 + 10, y0], [x0 + 10, y0 - 10], [x0, y0 - 10], [x0, y0]]
        features.append({"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}})
    with rasterio.open(tmp_path / "tile.tif", "w", driver="GTiff", height=64, width=64, count=1, dtype="float32",
                       crs="EPSG:32616", transform=from_origin(500000, 4000000, 1, 1)) as dst:
        dst.write(data, 1)
    (tmp_path / "fp.geojson").write_text(json.dumps({
        "type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32616"}},
        "features": features}))
    catalog = write_catalog(tmp_path, {"tiles": {
        "kind": "geo", "pairs": [{"image": "tile.tif", "labels": "fp.geojson"}], "bands": [1],
        "holdout": {"axis": 1, "start": 48}}})
    card = make_card(tmp_path, name="fp", spatial_dims=2, n_labels=2, roi_size=(32, 32), bands=[1],
                     preprocess={"kind": "window", "a_min": 0, "a_max": 1000},
                     training={"recipe": {"batch_size": 4, "steps_per_epoch": 4, "lr": 0.01, "rotate90": True}})
    out = tmp_path / "out"
    out.mkdir()
    result = train("tiles", card, epochs=1, catalog=catalog, out_dir=out)
    assert result.metrics["heldout"] == ["tile.tif column >= 48"]
    assert set(result.metrics["dice_heldout"]) == {"class0", "class1"}
    assert load_model(result.card).card.bands == (1,)


def test_catalog_datasets_are_validated(tmp_path: Path) -> None:
    catalog = load_catalog(write_catalog(tmp_path, {"a": {
        "kind": "medical", "pairs": [{"image": "i.nii.gz", "labels": "l.nii.gz"}],
        "validation": [{"image": "v.nii.gz", "labels": "w.nii.gz"}], "label_map": {1: [1, "3-5"]}}}))
    entry = catalog.dataset("a")
    assert entry.label_map == {1: [1, 3, 4, 5]}
    assert entry.pairs[0].image == tmp_path / "i.nii.gz"  # anchored at the catalog
    with pytest.raises(CatalogError, match="unknown dataset 'b'"):
        catalog.dataset("b")
    bad = {"kind": "medical", "pairs": [{"image": "i.nii.gz", "labels": "l.nii.gz"}]}
    with pytest.raises(CatalogError, match=r"datasets\.a: .*validation split"):
        load_catalog(write_catalog(tmp_path, {"a": bad}))
    with pytest.raises(CatalogError, match="label ids"):
        load_catalog(write_catalog(tmp_path, {"a": {**bad, "holdout": {"axis": 0, "start": 3},
                                                   "label_map": {1: ["x"]}}}))


def test_labels_the_card_cannot_predict_are_refused(volume_setup: tuple[Path, Path], tmp_path: Path) -> None:
    catalog, card = volume_setup
    data = yaml.safe_load(catalog.read_text())
    del data["datasets"]["blobs"]["label_map"]  # raw ids 3, 4, 7 for a 3-class card
    catalog.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match=re.escape("seg.nii.gz: label 3 is not one of the card's 3 classes")):
        train("blobs", card, epochs=1, catalog=catalog, out_dir=tmp_path)


def test_cli_train_errors_are_one_line(volume_setup: tuple[Path, Path], tmp_path: Path) -> None:
    catalog, card = volume_setup
    result = CliRunner().invoke(app, ["train", "--dataset", "blob", "--model-card", str(card), "--epochs", "1",
                                      "--catalog", str(catalog), "--out-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: ")
    assert "did you mean 'blobs'" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_on_cuda_with_amp(volume_setup: tuple[Path, Path], tmp_path: Path) -> None:
    catalog, card = volume_setup
    result = train("blobs", card, epochs=2, catalog=catalog, out_dir=tmp_path, settings=TrainSettings(device="cuda"))
    assert result.losses[1] < result.losses[0]
    assert yaml.safe_load(result.card.read_text())["training"]["device"] == "cuda + AMP"
    assert load_model(result.card).sha256 == sha256_file(result.weights)
