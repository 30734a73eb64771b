"""Polygons out, reference polygons in: merged across chunk borders, exactly as from the whole mask."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
from rasterio.features import rasterize, shapes
from rasterio.transform import Affine

from pipeline.errors import GridMismatchError, InputError, OutputError
from pipeline.geometry import RasterGeometry, block_slices
from pipeline.io.geotiff import open_raster
from pipeline.io.store import create_array, open_work_group
from pipeline.io.vectors import (
    check_vector_output,
    merge_border,
    polygonize_window,
    read_reference_vectors,
)
from pipeline.tiling.polygons import write_vectors
from tests.io.test_geotiff import NAMES, UTM

CHUNKS = (32, 40)


def work_store(tmp_path: Path, labels: np.ndarray, valid: np.ndarray | None = None) -> str:
    group = open_work_group(tmp_path / "w.zarr", overwrite=True)
    create_array(group, "labels", shape=labels.shape, chunks=CHUNKS, dtype=np.uint8, channel_axis=False)[...] = labels
    mask = np.ones(labels.shape, bool) if valid is None else valid
    create_array(group, "valid", shape=labels.shape, chunks=CHUNKS, dtype=bool, channel_axis=False)[...] = mask
    return str(tmp_path / "w.zarr")


def polygons(store: str, geometry: RasterGeometry) -> list[tuple[int, Any]]:
    """What ``write_vectors`` writes, without Dask: every chunk, then the merged border pieces."""
    done, border = [], []
    for rows, cols in block_slices(geometry.shape, CHUNKS):
        finished, pieces = polygonize_window(store, rows, cols, geometry)
        done += finished
        border += pieces
    return done + merge_border(border, geometry.transform)


def whole_image(labels: np.ndarray, valid: np.ndarray, transform: Affine) -> list[tuple[int, Any]]:
    keep = valid & (labels != 0)
    return [(int(v), shapely.geometry.shape(g)) for g, v in shapes(labels, mask=keep, transform=transform)]


def assert_same_polygons(ours: list[tuple[int, Any]], reference: list[tuple[int, Any]]) -> None:
    assert len(ours) == len(reference)
    key = lambda item: (item[0], *np.round(item[1].bounds, 6), round(item[1].area, 6))  # noqa: E731
    for (v1, g1), (v2, g2) in zip(sorted(ours, key=key), sorted(reference, key=key), strict=True):
        assert v1 == v2
        assert shapely.equals_exact(shapely.normalize(g1), shapely.normalize(g2), tolerance=1e-6)


def test_square_across_four_chunks_is_one_polygon(tmp_path: Path) -> None:
    labels = np.zeros((70, 90), np.uint8)
    labels[20:45, 30:50] = 1  # straddles the row border at 32 and the column border at 40
    geometry = RasterGeometry(height=70, width=90, crs="EPSG:32616", transform=tuple(UTM)[:6])
    found = polygons(work_store(tmp_path, labels), geometry)
    assert len(found) == 1
    value, polygon = found[0]
    assert value == 1
    assert polygon.area == pytest.approx(25 * 20 * 0.25)
    assert len(polygon.exterior.coords) == 5  # a rectangle: no vertices left on the chunk borders
    assert polygon.bounds == pytest.approx((733601 + 15, 3725139 - 22.5, 733601 + 25, 3725139 - 10))


@pytest.mark.parametrize("transform", [Affine.identity(), UTM, Affine(0.5, 0.2, 10.0, 0.1, -0.5, 20.0)])
def test_chunked_polygons_equal_whole_mask_polygons(tmp_path: Path, transform: Affine) -> None:
    """Random classes (rings, holes, diagonal contacts) and a nodata patch, on plain and rotated grids."""
    rng = np.random.default_rng(0)
    labels = (rng.random((13, 17)) * 3).astype(np.uint8).repeat(6, axis=0).repeat(6, axis=1)[:75, :97]
    valid = np.ones(labels.shape, bool)
    valid[40:55, 10:70] = False
    geometry = RasterGeometry(height=75, width=97, transform=tuple(transform)[:6])
    ours = polygons(work_store(tmp_path, labels, valid), geometry)
    assert_same_polygons(ours, whole_image(labels, valid, transform))


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_write_vectors_on_dask(tmp_path: Path, client2: Any, suffix: str) -> None:
    labels = np.zeros((70, 90), np.uint8)
    labels[20:45, 30:50] = 1
    labels[2:5, 2:5] = 2
    labels[60:70, 0:90] = 2  # touches the scene's edge, crosses two column borders
    geometry = RasterGeometry(height=70, width=90, crs="EPSG:32616", transform=tuple(UTM)[:6])
    out = tmp_path / f"v{suffix}"
    count = write_vectors(work_store(tmp_path, labels), geometry, CHUNKS, out, names=NAMES, client=client2)
    assert count == 3
    meta, _, wkb, fields = pyogrio.raw.read(out)
    assert rasterio.crs.CRS.from_user_input(meta["crs"]) == rasterio.crs.CRS.from_epsg(32616)
    assert list(meta["fields"]) == ["label", "name", "area"]
    rows = sorted(zip(fields[0].tolist(), fields[1].tolist(), fields[2].tolist(), strict=True), key=lambda r: r[2])
    assert rows == [(2, "road", 9 * 0.25), (1, "building", 500 * 0.25), (2, "road", 900 * 0.25)]
    assert_same_polygons([(int(v), shapely.from_wkb(g)) for v, g in zip(fields[0], wkb, strict=True)],
                         whole_image(labels, np.ones(labels.shape, bool), UTM))


def test_vector_formats_come_from_one_registry() -> None:
    check_vector_output(Path("a.GPKG"))
    with pytest.raises(OutputError, match=r"unknown vector format '.shp' \(choices: .gpkg, .geojson\)"):
        check_vector_output(Path("a.shp"))


# --- reference vectors -----------------------------------------------------------------------------

def test_reference_vectors_rasterise_window_by_window(data_dir: Path) -> None:
    scene = open_raster(data_dir / "geo" / "sample_geotiff.tif").geometry
    ref = read_reference_vectors(data_dir / "geo" / "geotiff_labels.geojson", scene, {k: NAMES[k] for k in (0, 1)})
    whole = rasterize(ref.geometries, out_shape=scene.shape, transform=Affine(*scene.transform))
    pieced = np.zeros(scene.shape, np.int64)
    for rows, cols in block_slices(scene.shape, (256, 300)):
        pieced[rows, cols], valid = ref.rasterize(rows, cols, scene)
        assert valid.all()
    np.testing.assert_array_equal(pieced, whole)
    assert 0.02 < pieced.mean() < 0.5
    assert len(ref.values) == 43
    assert set(ref.values.tolist()) == {1}


def test_reference_vectors_are_reprojected(tmp_path: Path, data_dir: Path) -> None:
    """The same footprints stored in EPSG:4326 land on (almost) the same pixels."""
    from rasterio.warp import transform_geom

    source = data_dir / "geo" / "geotiff_labels.geojson"
    scene = open_raster(data_dir / "geo" / "sample_geotiff.tif").geometry
    labels = {k: NAMES[k] for k in (0, 1)}
    direct = read_reference_vectors(source, scene, labels)
    wgs84 = [transform_geom("EPSG:32616", "EPSG:4326", shapely.geometry.mapping(g)) for g in direct.geometries]
    moved = tmp_path / "wgs84.geojson"
    moved.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"class": "building"}, "geometry": g} for g in wgs84]}))
    back = read_reference_vectors(moved, scene, labels)
    a = rasterize(direct.geometries, out_shape=scene.shape, transform=Affine(*scene.transform))
    b = rasterize(back.geometries, out_shape=scene.shape, transform=Affine(*scene.transform))
    assert (a == b).mean() > 0.999


def write_features(path: Path, properties: list[dict[str, Any]]) -> Path:
    square = {"type": "Polygon", "coordinates": [[[0, 0], [0, 5], [5, 5], [5, 0], [0, 0]]]}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": p, "geometry": square} for p in properties]}))
    return path


@pytest.mark.parametrize(("properties", "labels", "message"), [
    ([{"label": 7}], NAMES, "reference has label 7, but the model only predicts 0..2"),
    ([{"class": "lake"}], NAMES, "class 'lake' is not one of the model's labels"),
    ([{"other": 1}], NAMES, "need an integer 'label' or a 'class' name field for a model with 3 labels"),
])
def test_reference_vector_labels_are_checked(tmp_path: Path, properties: list[dict[str, Any]],
                                             labels: dict[int, Any], message: str) -> None:
    scene = RasterGeometry(height=10, width=10, crs="EPSG:4326", transform=(1.0, 0.0, 0.0, 0.0, -1.0, 10.0))
    with pytest.raises(InputError, match=message):
        read_reference_vectors(write_features(tmp_path / "r.geojson", properties), scene, labels)


def test_reference_vectors_cannot_be_placed_on_a_scene_without_crs(tmp_path: Path) -> None:
    scene = RasterGeometry(height=10, width=10)
    path = write_features(tmp_path / "r.geojson", [{"label": 1}])  # GeoJSON without "crs" is WGS 84
    with pytest.raises(GridMismatchError, match="the scene has no CRS"):
        read_reference_vectors(path, scene, NAMES)


def test_unreadable_reference_vectors(tmp_path: Path) -> None:
    path = tmp_path / "x.geojson"
    path.write_text("{nope")
    with pytest.raises(InputError, match=r"x\.geojson: not readable vectors"):
        read_reference_vectors(path, RasterGeometry(height=10, width=10), NAMES)
