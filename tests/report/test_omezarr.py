"""OME-Zarr (NGFF) output opens with ome-zarr's reader, with scale/translation from the NIfTI affine."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from pipeline.config.cards import Label
from pipeline.geometry import RasterGeometry, VolumeGeometry
from pipeline.io.omezarr import write_ome_zarr
from tests.factories import oblique_affine
from tests.report.conftest import make_store

LABELS = {0: Label(name="background", color=(0, 0, 0)), 1: Label(name="liver", color=(220, 120, 60)),
          2: Label(name="spleen", color=(150, 60, 200))}


def read(path: Path) -> tuple[Any, Any]:
    """(image node, label node) as ome-zarr's reader (what napari's plugin uses) sees them."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label as LabelSpec
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(path)))())
    image = next(n for n in nodes if n.data and n.load(LabelSpec) is None)
    label = next(n for n in nodes if n.load(LabelSpec) is not None)
    return image, label


def volume(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(-1000, 1000, size=shape, dtype=np.int16)
    labels = rng.integers(0, 3, size=shape, dtype=np.uint8)
    return image, labels


def test_volume_scale_and_translation_from_the_affine(tmp_path: Path) -> None:
    affine = np.array([[0.8, 0, 0, -120.5], [0, 1.1, 0, 33.25], [0, 0, 2.5, 71.0], [0, 0, 0, 1]])
    image, labels = volume((20, 24, 12))
    geometry = VolumeGeometry(shape=image.shape, affine=tuple(affine.ravel()), zooms=(0.8, 1.1, 2.5))
    group = make_store(tmp_path, image, labels, geometry.to_attrs(), (16, 16, 8))
    path = write_ome_zarr(group["image"], group["labels"], geometry, tmp_path / "v.ome.zarr", labels=LABELS,
                          window=(-1000.0, 1000.0))
    node, label = read(path)
    assert node.metadata["contrast_limits"] == [[-1000.0, 1000.0]]  # what napari's plugin opens the CT with
    transforms = node.metadata["coordinateTransformations"][0]
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
    assert transforms == [{"type": "scale", "scale": [2.5, 1.1, 0.8]},
                          {"type": "translation", "translation": [71.0, 33.25, -120.5]}]
    # a voxel (i, j, k) lands where the NIfTI affine puts it
    i, j, k = 3, 5, 7
    world_zyx = np.array([k, j, i]) * transforms[0]["scale"] + transforms[1]["translation"]
    assert np.allclose(world_zyx[::-1], (affine @ [i, j, k, 1])[:3])
    np.testing.assert_array_equal(np.asarray(node.data[0]), image.transpose(2, 1, 0))
    np.testing.assert_array_equal(np.asarray(label.data[0]), labels.transpose(2, 1, 0))
    assert label.metadata["properties"][1]["name"] == "liver"
    assert np.allclose(label.metadata["color"][1], np.array([220, 120, 60, 255]) / 255)
    assert label.metadata["coordinateTransformations"][0] == transforms


def test_oblique_affine_warns_and_keeps_the_exact_affine(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    affine = oblique_affine()
    image, labels = volume((8, 9, 10))
    geometry = VolumeGeometry(shape=image.shape, affine=tuple(affine.ravel()), zooms=(0.8, 1.1, 2.5))
    group = make_store(tmp_path, image, labels, geometry.to_attrs(), (8, 9, 10))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        path = write_ome_zarr(group["image"], group["labels"], geometry, tmp_path / "o.ome.zarr", labels=LABELS)
    assert "rotated, sheared or flipped" in caplog.text
    node, _ = read(path)
    assert np.allclose(node.metadata["coordinateTransformations"][0][0]["scale"], [2.5, 1.1, 0.8])
    attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    assert attrs["volseg"]["exact_transform"] is False
    assert np.allclose(attrs["volseg"]["geometry"]["affine"], affine.ravel())


def test_raster_with_nodata_and_pyramid(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    height, width = 600, 700
    group = zarr.open_group(zarr.storage.LocalStore(tmp_path / "w.zarr"), mode="w", zarr_format=3)
    image = rng.integers(0, 255, size=(3, height, width), dtype=np.uint8)
    labels = rng.integers(0, 3, size=(height, width), dtype=np.uint8)
    valid = np.ones((height, width), dtype=bool)
    valid[:10] = False
    for name, data in (("image", image), ("labels", labels), ("valid", valid)):
        group.create_array(name, shape=data.shape, chunks=(*data.shape[:-2], 256, 256), dtype=data.dtype)[:] = data
    geometry = RasterGeometry(height=height, width=width, count=3, crs="EPSG:32616",
                              transform=(0.5, 0.0, 500000.0, 0.0, -0.5, 3700000.0))
    path = write_ome_zarr(group["image"], group["labels"], geometry, tmp_path / "r.ome.zarr", labels=LABELS,
                          valid=group["valid"])
    node, label = read(path)
    assert [a["name"] for a in node.metadata["axes"]] == ["c", "y", "x"]
    levels = node.metadata["coordinateTransformations"]
    assert len(levels) == len(node.data) == 2  # 600 -> 300 >= 256: one extra level
    assert levels[0] == [{"type": "scale", "scale": [1.0, 0.5, 0.5]},
                         {"type": "translation", "translation": [0.0, 3700000.0, 500000.0]}]
    assert levels[1][0]["scale"] == [1.0, 1.0, 1.0]
    full = np.asarray(label.data[0])
    assert (full[:10] == 255).all()
    np.testing.assert_array_equal(full[10:], labels[10:])
    half = np.asarray(label.data[1])
    assert half.shape == (300, 350)
    np.testing.assert_array_equal(half, full[::2, ::2])  # never an interpolated (invented) label value
