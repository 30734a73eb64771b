"""A 2D bundle for rasters: ``SimpleInferer`` (the whole image at once) after ``Resized``. volseg slides the network
over the raster in windows of the ``Resized`` size, the input size it was trained on (a scene is far too big to
resize whole, and resizing would change its ground resolution)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline import load_model

ROOT = Path(__file__).resolve().parents[2]
SCENE = ROOT / "data" / "geo" / "sample_geotiff.tif"
SIZE = [128, 128]


def simple_bundle(root: Path) -> Path:
    """A 2D UNet bundle as MONAI's 2D tutorials write them, with random weights from its own network_def."""
    from monai.bundle import ConfigParser

    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    inference = {
        "image_key": "image", "spatial_size": SIZE,
        "network_def": {"_target_": "UNet", "spatial_dims": "$len(@spatial_size)", "in_channels": 1, "out_channels": 2,
                        "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "@image_key"},
            {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
            {"_target_": "Resized", "keys": "@image_key", "spatial_size": "@spatial_size"},
            {"_target_": "ScaleIntensityd", "keys": "@image_key"}]},
        "inferer": {"_target_": "SimpleInferer"},
    }
    metadata = {"name": "Tiny 2D Roofs", "version": "0.0.1", "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1}},
        "outputs": {"pred": {"type": "image", "num_channels": 2, "channel_def": {"0": "background", "1": "roof"}}}}}
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    return root


def test_simple_inferer_bundle_uses_its_resized_size_as_roi(tmp_path: Path) -> None:
    model = load_model(simple_bundle(tmp_path / "roofs"))
    assert (model.card.spatial_dims, model.card.domain, model.roi_size) == (2, "geo", tuple(SIZE))
    assert model.card.preprocess is not None and model.card.preprocess.kind == "minmax"
    assert [label.name for label in model.labels.values()] == ["background", "roof"]


@pytest.mark.slow
def test_simple_inferer_bundle_segments_the_real_raster(tmp_path: Path, client1: Any) -> None:
    import rasterio

    from pipeline.segment.raster import segment_raster

    bundle = simple_bundle(tmp_path / "roofs")
    result = segment_raster(SCENE, model=bundle, output=tmp_path / "scene_seg.tif", client=client1, html=False)
    with rasterio.open(SCENE) as scene, rasterio.open(result.mask) as mask:
        assert (mask.crs, mask.transform, mask.shape) == (scene.crs, scene.transform, scene.shape)
        labels = mask.read(1)
    assert set(np.unique(labels)) <= {0, 1, 255}
    assert result.report["run"]["windows"] > 1  # slid over the scene, not resized whole
