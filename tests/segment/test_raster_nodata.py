"""Raster nodata never reaches a statistic or a network window (issue 14.1).

Scenes are real ones (the SpaceNet tile, the Landsat RGB scene) with nodata written in every way
GDAL knows: a nodata value (int16 -9999, uint16 65535 and 0, float32 NaN and -3.4e38), an alpha
band, a per-dataset mask. Under alpha and masks the pixels keep a bright junk value, so a leak shows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window
from scipy import ndimage
from skimage.filters import threshold_otsu
from typer.testing import CliRunner

from pipeline import load_model
from pipeline.cli import app
from pipeline.config.cards import load_card
from pipeline.config.classical import KMeansParams, OtsuParams
from pipeline.engine import predictor
from pipeline.engine.classical import kmeans_centres, kmeans_statistics, otsu_block, otsu_statistics
from pipeline.engine.validity import windows_with_data
from pipeline.engine.windows import window_grid
from pipeline.io.geotiff import read_bands
from pipeline.model.intensity import NEUTRAL, neutralise
from pipeline.model.models import apply_preprocess, intensity_statistics
from pipeline.segment.raster import segment_raster
from tests.factories import make_card
from tests.segment.test_segment_raster import check_segmentation, mask_of

runner = CliRunner()
#: A custom Albers equal-area projection (no EPSG code), as national Landsat products use.
ALBERS = ("+proj=aea +lat_0=23 +lon_0=-96 +lat_1=29.5 +lat_2=45.5 +x_0=0 +y_0=0 +datum=NAD83 +units=m +no_defs")
JUNK = 65535  #: what sits under an alpha band or a mask: white after any window preprocessing
F32_MIN = float(np.finfo(np.float32).min)  # -3.4028235e38, GDAL's usual float nodata


def sample_crop(data_dir: Path, rows: slice, cols: slice) -> tuple[np.ndarray, dict[str, Any]]:
    """A window of the SpaceNet tile (uint16, no zero pixel) and its georeference."""
    with rasterio.open(data_dir / "geo" / "sample_geotiff.tif") as src:
        window = Window.from_slices(rows, cols)
        return src.read(window=window), {"crs": src.crs,
                                         "transform": src.transform @ Affine.translation(cols.start, rows.start)}


def write(path: Path, data: np.ndarray, *, alpha: np.ndarray | None = None, mask: np.ndarray | None = None,
          **profile: Any) -> Path:
    keys = {"driver": "GTiff", "count": data.shape[0] + (alpha is not None), "height": data.shape[1],
            "width": data.shape[2], "dtype": data.dtype.name, **profile}
    if alpha is not None:
        keys["alpha"] = "YES"  # GTiff creation option: the last band is an (unassociated) alpha band
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **keys) as dst:
        dst.write(data, indexes=list(range(1, data.shape[0] + 1)))
        if alpha is not None:
            dst.write(alpha.astype(data.dtype), data.shape[0] + 1)
        if mask is not None:
            dst.write_mask(mask.astype(np.uint8) * 255)
    return path


def _valued(dtype: str, nodata: float) -> Callable[[Path, np.ndarray, np.ndarray, dict[str, Any]], Path]:
    def make(path: Path, data: np.ndarray, invalid: np.ndarray, geo: dict[str, Any]) -> Path:
        out = data.astype(dtype)
        out[:, invalid] = nodata
        return write(path, out, nodata=nodata, **geo)
    return make


def _alpha(path: Path, data: np.ndarray, invalid: np.ndarray, geo: dict[str, Any]) -> Path:
    out = data.copy()
    out[:, invalid] = JUNK
    return write(path, out, alpha=np.where(invalid, 0, 65535), **geo)


def _dataset_mask(path: Path, data: np.ndarray, invalid: np.ndarray, geo: dict[str, Any]) -> Path:
    out = data.copy()
    out[:, invalid] = JUNK
    return write(path, out, mask=~invalid, **geo)


#: Every way a scene can say "no data here": name -> writer(path, uint16 data, invalid, georeference).
ENCODINGS = {
    "int16 -9999": _valued("int16", -9999),
    "uint16 65535": _valued("uint16", 65535),
    "uint16 0": _valued("uint16", 0),
    "float32 nan": _valued("float32", float("nan")),
    "float32 -3.4e38": _valued("float32", F32_MIN),
    "alpha band": _alpha,
    "dataset mask": _dataset_mask,
}


def edge_and_corner(shape: tuple[int, int], strip: int, corner: int) -> np.ndarray:
    """Nodata along the left edge and in a triangle at the bottom-right corner, as scenes cut from a swath."""
    rows, cols = np.indices(shape)
    return (cols < strip) | ((shape[0] - 1 - rows) + (shape[1] - 1 - cols) < corner)


# --- the pure parts ---------------------------------------------------------------------------------

def test_windows_with_data_matches_a_direct_check() -> None:
    rng = np.random.default_rng(0)
    valid = rng.random((37, 29)) < 0.02
    valid[:, :11] = False
    lo, roi = (5, 3), (8, 6)
    corners = [(r, c) for r in range(5, 5 + 37 - 8 + 1, 3) for c in range(3, 3 + 29 - 6 + 1, 2)]
    direct = [bool(valid[r - 5 : r - 5 + 8, c - 3 : c - 3 + 6].any()) for r, c in corners]
    assert windows_with_data(valid, lo, corners, roi) == direct
    assert 0 < sum(direct) < len(direct)
    volume = rng.random((9, 10, 11)) < 0.01
    boxes = [(z, y, x) for z in range(0, 6) for y in range(0, 7) for x in range(0, 8)]
    assert windows_with_data(volume, (0, 0, 0), boxes, (4, 4, 4)) == [
        bool(volume[z : z + 4, y : y + 4, x : x + 4].any()) for z, y, x in boxes]


def test_preprocessing_gives_invalid_pixels_one_neutral_value(cards_dir: Path) -> None:
    card = load_card(make_card(cards_dir, name="window16", spatial_dims=2, roi_size=(16, 16),
                               preprocess={"kind": "window", "a_min": 0, "a_max": 1250, "b_min": -1, "b_max": 1}))
    block = np.array([[[65535, 100, -9999], [625, 0, 1250]]], dtype=np.float32)
    valid = np.array([[False, True, False], [True, True, True]])
    out = apply_preprocess(card, block, {}, valid)
    assert (out[:, ~valid] == NEUTRAL).all()
    np.testing.assert_array_equal(out[:, valid], apply_preprocess(card, block, {})[:, valid])
    assert block[0, 0, 0] == 65535  # the input block is not modified
    assert neutralise(out.copy(), None).tolist() == out.tolist()


# --- statistics over valid pixels only --------------------------------------------------------------

@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """Each encoding of one 150 x 170 crop with nodata along an edge and in a corner."""
    directory = tmp_path_factory.mktemp("encodings")
    data, geo = sample_crop(data_dir, slice(300, 450), slice(200, 370))
    invalid = edge_and_corner(data.shape[1:], strip=40, corner=60)
    return {name: (make(directory / f"{name.replace(' ', '_')}.tif", data, invalid, geo), ~invalid)
            for name, make in ENCODINGS.items()}


def read_all(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(path) as src:
        return read_bands(path, (1,), src.dtypes[0], slice(0, src.height), slice(0, src.width))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_validity_of_every_encoding(scenes: dict[str, tuple[Path, np.ndarray]], encoding: str) -> None:
    path, expected = scenes[encoding]
    _, valid = read_all(path)
    np.testing.assert_array_equal(valid, expected)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_statistics_equal_whole_array_values_over_valid_pixels(scenes: dict[str, tuple[Path, np.ndarray]],
                                                               cards_dir: Path, encoding: str) -> None:
    """Otsu, k-means and z-score on odd chunks equal NumPy/scikit-image on ``x[valid]`` alone."""
    path, _ = scenes[encoding]
    data, valid = read_all(path)
    chunks = (37, 53)
    x, mask = da.from_array(data[0], chunks=chunks), da.from_array(valid, chunks=chunks)
    inside = data[0][valid].astype(np.float64)

    otsu = OtsuParams(bins=256)
    assert otsu_statistics(x, otsu, mask)["threshold"] == threshold_otsu(inside, nbins=256)

    every = KMeansParams(k=3, sample=10**6)  # more than the scene: the sample is every valid pixel
    found = kmeans_statistics(x, every, mask)
    assert found["sample_size"] == valid.sum()
    np.testing.assert_array_equal(found["centres"], kmeans_centres(inside, every))
    some = kmeans_statistics(x, KMeansParams(k=3, sample=5000), mask)
    assert inside.min() <= min(some["centres"]) and max(some["centres"]) <= inside.max()
    assert 4000 < some["sample_size"] < 6000

    for threshold in (None, 400.0):
        card = load_card(make_card(cards_dir, name="z", spatial_dims=2, roi_size=(16, 16),
                                   preprocess={"kind": "zscore", "threshold": threshold}))
        (stats,) = intensity_statistics(card, da.from_array(data, chunks=(1, *chunks)), mask)["steps"]
        kept = inside if threshold is None else inside[inside > threshold]
        assert stats["mean"] == pytest.approx([kept.mean()], rel=1e-12)
        assert stats["std"] == pytest.approx([kept.std()], rel=1e-9)


# --- end to end -------------------------------------------------------------------------------------

def landsat_like(directory: Path, data_dir: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The Landsat RGB scene as 3-band int16 at 30 m in a custom Albers projection, nodata -9999 on its
    own nodata border, along one edge and in a corner."""
    with rasterio.open(data_dir / "geo" / "RGB.byte.tif") as src:
        data, own = src.read().astype(np.int16), src.dataset_mask() == 0
    invalid = own | edge_and_corner(own.shape, strip=90, corner=150)
    data[:, invalid] = -9999
    path = write(directory / "landsat.tif", data, nodata=-9999, crs=CRS.from_proj4(ALBERS),
                 transform=Affine(30.0, 0.0, -1_200_000.0, 0.0, -30.0, 2_400_000.0))
    return path, data, ~invalid


@pytest.mark.slow
def test_otsu_on_a_landsat_like_scene_ignores_nodata(tmp_path: Path, data_dir: Path, client2: Any) -> None:
    """The issue's case through the CLI: Otsu's threshold and the mask are those of the valid pixels."""
    scene, data, valid = landsat_like(tmp_path, data_dir)
    result = runner.invoke(app, ["segment-raster", str(scene), "-m", "otsu-foreground", "--bands", "1",
                                 "--dask-address", client2.scheduler.address, "--no-html"])
    assert result.exit_code == 0, result.output
    threshold = threshold_otsu(data[0][valid].astype(np.float64), nbins=256)
    params = load_model("otsu-foreground").card.classical.params
    expected = otsu_block(data[0], params, {"threshold": threshold})
    mask = mask_of(tmp_path / "landsat_seg.tif")
    np.testing.assert_array_equal(mask[valid], expected[valid])
    assert (mask[~valid] == 255).all()
    assert 0.05 < expected[valid].mean() < 0.95  # a real split, not "everything is foreground"
    report = json.loads((tmp_path / "landsat_seg.report.json").read_text())
    assert report["input"]["valid_pixels"] == valid.sum()


def evaluated(client: Any) -> int:
    return sum(client.run(predictor.windows_evaluated).values())


@pytest.mark.slow
def test_unet_labels_do_not_depend_on_how_nodata_is_written(tmp_path: Path, data_dir: Path, client2: Any) -> None:
    """The buildings U-Net, an edge strip (58% of the scene) turned into nodata in every encoding: one mask
    for all, equal to MONAI on the neutralised input, unchanged beyond one roi of the strip, and windows
    holding only nodata never evaluated."""
    data, geo = sample_crop(data_dir, slice(0, 300), slice(300, 700))
    strip = 230
    invalid = np.zeros(data.shape[1:], dtype=bool)
    invalid[:, :strip] = True
    model = load_model("buildings")
    roi = model.roi_size
    grid = window_grid(data.shape[1:], roi, (model.overlap,) * 2)
    corners = [(r, c) for r in grid.axes[0].starts for c in grid.axes[1].starts]
    with_data = sum(windows_with_data(~invalid, (0, 0), corners, roi))
    assert 0 < with_data < len(corners)

    whole = write(tmp_path / "whole.tif", data, **geo)
    untouched = mask_of(segment_raster(whole, output=tmp_path / "whole_seg.tif", client=client2, html=False).mask)
    far = ~ndimage.maximum_filter(invalid, size=[2 * r - 1 for r in roi], mode="constant", cval=0)
    assert far.sum() > 10_000

    masks, scenes = {}, {}
    for name, make in ENCODINGS.items():
        scene = make(tmp_path / f"{name.replace(' ', '_')}.tif", data, invalid, geo)
        before = evaluated(client2)
        result = segment_raster(scene, output=tmp_path / f"{scene.stem}_seg.tif", client=client2, html=False)
        assert evaluated(client2) - before == with_data, name
        masks[name], scenes[name] = mask_of(result.mask), (scene, result)
    first = check_segmentation(*scenes["int16 -9999"], "buildings")  # MONAI on the neutralised scene
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask, first, err_msg=name)
    assert (first[:, :strip] == 255).all()
    # Beyond one roi of the strip every window is the same as without it (batched differently, hence
    # MONAI's own tolerance in check_segmentation, not bit equality).
    assert (first[far] == untouched[far]).mean() >= 0.9999
