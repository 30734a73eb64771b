"""segment_raster end to end: real and synthetic scenes against MONAI in memory, reports, CLI failures."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
import torch
from monai.inferers import sliding_window_inference
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import rasterize, shapes
from rasterio.transform import Affine
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from pipeline import load_model
from pipeline.cli import app
from pipeline.evaluate.metrics import confusion, scores
from pipeline.segment.raster import segment_raster
from tests.factories import make_card, run_and_check_clean_failure
from tests.io.test_geotiff import crop, raw_geometry, tile_sample, truncated, write_raster, zero_bands

runner = CliRunner()


@pytest.fixture(scope="session")
def rgb_card(cards_dir: Path) -> Path:
    """Untrained seeded 2D UNet for 3 bands of 0..255."""
    return make_card(cards_dir, name="rgb", spatial_dims=2, in_channels=3, roi_size=(64, 64),
                     preprocess={"kind": "window", "a_min": 0, "a_max": 255})


@pytest.fixture(scope="session")
def gray_card(cards_dir: Path) -> Path:
    """Untrained seeded 2D UNet for one band of 0..1250 (the SpaceNet tile's range), 2 labels."""
    return make_card(cards_dir, name="gray", spatial_dims=2, in_channels=1, n_labels=2, roi_size=(64, 48),
                     preprocess={"kind": "window", "a_min": 0, "a_max": 1250}, seed=1)


def read(path: Path, bands: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All pixels of ``bands`` (non-finite -> 0, as the pipeline does) and the valid-pixel mask."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            indexes = list(bands) if bands else list(src.indexes)
            data, masks = src.read(indexes), src.read_masks(indexes)
    valid = masks.any(axis=0) & np.isfinite(data).all(axis=0)
    return np.nan_to_num(data, nan=0, posinf=0, neginf=0), valid


def monai_labels(scene: Path, card: Path | str, bands: Sequence[int] | None = None) -> np.ndarray:
    """argmax of MONAI's sliding_window_inference on the whole preprocessed scene, nodata neutral: what to match."""
    model = load_model(card)
    data, valid = read(scene, bands)
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(model.preprocess(data, valid))[None], model.roi_size, 4,
                                          model.network, model.overlap, mode="gaussian")[0]
    return logits.argmax(0).numpy()


def mask_of(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read(1)


def check_segmentation(scene: Path, result: Any, card: Path | str, bands: Sequence[int] | None = None) -> np.ndarray:
    """Equal to MONAI on valid pixels, 255 on the others, on the scene's exact grid, counted right."""
    mask = mask_of(result.mask)
    _, valid = read(scene, bands)
    expected = monai_labels(scene, card, bands)
    assert (mask[valid] == expected[valid]).mean() >= 0.9999
    assert (mask[~valid] == 255).all()
    assert raw_geometry(result.mask) == raw_geometry(scene)
    assert cog_validate(result.mask)[0]
    report = json.loads(result.report_json.read_text())
    counts = np.bincount(mask[valid], minlength=len(report["labels"]))
    assert [row["pixels"] for row in report["labels"]] == counts.tolist()
    assert report["input"]["valid_pixels"] == valid.sum()
    assert report["input"]["nodata_pixels"] == (~valid).sum()
    return mask


@pytest.mark.slow
def test_real_rgb_scene_with_band_order_and_nodata(tmp_path: Path, data_dir: Path, rgb_card: Path,
                                                  client2: Any) -> None:
    scene = data_dir / "geo" / "RGB.byte.tif"
    result = segment_raster(scene, model=rgb_card, output=tmp_path / "rgb_seg.tif", bands=(3, 2, 1), client=client2,
                            chunks=(256, 320))
    mask = check_segmentation(scene, result, rgb_card, (3, 2, 1))
    assert (mask == 255).sum() > 150_000  # the scene's nodata border
    report = result.report
    assert report["input"]["bands"] == [3, 2, 1]
    assert report["input"]["crs"] == "EPSG:32618"
    assert report["area_unit"] == "metre^2"
    assert report["pixel_accuracy"] is None
    row = report["labels"][1]
    assert row["area"] == pytest.approx(row["pixels"] * 300.0379266750948 * 300.041782729805)
    assert row["area_ha"] == pytest.approx(row["area"] / 1e4)
    header = "label,name,pixels,area,reference_pixels,reference_area,dice,iou,area_ha\n"
    assert result.report_csv.read_text().startswith(header)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb_seg.qml", "rgb_seg.report.csv", "rgb_seg.report.html",
                                                      "rgb_seg.report.json", "rgb_seg.tif"]


@pytest.mark.slow
def test_buildings_model_against_reference_footprints(tmp_path: Path, data_dir: Path, client2: Any) -> None:
    """The default model on its own tile, scored against the human-drawn footprints, with vectors out."""
    scene = data_dir / "geo" / "sample_geotiff.tif"
    footprints = data_dir / "geo" / "geotiff_labels.geojson"
    result = segment_raster(scene, output=tmp_path / "b.tif", reference=footprints, vectors=tmp_path / "b.gpkg",
                            client=client2)
    mask = mask_of(result.mask)
    _, valid = read(scene)
    _, _, wkb, _ = pyogrio.raw.read(footprints)
    truth = rasterize(shapely.from_wkb(wkb), out_shape=mask.shape, transform=raw_geometry(scene)["transform"])
    expected = scores(confusion(truth, mask, 2, valid=valid))
    report = result.report
    assert report["model"] == "buildings"
    assert report["reference"] == str(footprints)
    for row, want in zip(report["labels"], expected.labels, strict=True):
        assert row["dice"] == pytest.approx(want.dice, abs=1e-6)
        assert row["reference_pixels"] == want.reference
    assert report["pixel_accuracy"] == pytest.approx(expected.pixel_accuracy)
    assert report["mean_pixel_accuracy"] == pytest.approx(expected.mean_pixel_accuracy)
    assert 0.5 < report["labels"][1]["dice"] < 0.95  # card: 0.823 on 75% (train), 0.617 on 25% (held out)
    keep = valid & (mask == 1)
    whole = [shapely.geometry.shape(g) for g, _ in shapes(mask, mask=keep, transform=raw_geometry(scene)["transform"])]
    _meta, _, wkb, fields = pyogrio.raw.read(result.vectors)
    assert report["features"] == len(wkb) == len(whole) > 10
    assert set(fields[1].tolist()) == {"building"}
    assert sum(fields[2]) == pytest.approx(sum(p.area for p in whole))


def rotated(d: Path, data_dir: Path) -> Path:
    with rasterio.open(data_dir / "geo" / "sample_geotiff.tif") as src:
        data = src.read(window=Window(100, 200, 150, 130))
    return write_raster(d / "rot.tif", data, transform=Affine(0.5, 0.1, 733601.0, 0.05, -0.5, 3725139.0), nodata=0)


def nan_scene(d: Path, data_dir: Path) -> Path:
    with rasterio.open(data_dir / "geo" / "sample_geotiff.tif") as src:
        data = src.read(window=Window(300, 300, 171, 143)).astype(np.float32)
    data[0, 20:60, 30:100] = np.nan
    return write_raster(d / "nan.tif", data, nodata=float("nan"))


def tiled_scene(d: Path, data_dir: Path) -> Path:
    small = crop(data_dir / "geo" / "sample_geotiff.tif", d / "small.tif", Window(0, 0, 97, 83))
    return tile_sample(small, d / "tiled.tif", (3, 2), tiled=True, blockxsize=64, blockysize=32)


def no_georeference(d: Path, data_dir: Path) -> Path:
    with rasterio.open(data_dir / "geo" / "sample_geotiff.tif") as src:
        data = src.read(window=Window(450, 0, 120, 140))
    return write_raster(d / "plain.tif", data, crs=None, transform=None)


def geographic(d: Path, data_dir: Path) -> Path:
    return crop(data_dir / "geo" / "road_mask_input.tif", d / "road.tif", Window(600, 640, 130, 110))


@pytest.mark.slow
@pytest.mark.parametrize("make", [rotated, nan_scene, tiled_scene, no_georeference, geographic])
def test_synthetic_scenes_match_monai(tmp_path: Path, data_dir: Path, gray_card: Path, client2: Any, make: Any) -> None:
    """Rotated grid, float NaN nodata, a scene bigger than the chunk grid (tiled file), no georeference, degrees."""
    scene = make(tmp_path, data_dir)
    result = segment_raster(scene, model=gray_card, output=tmp_path / "out.tif", client=client2, chunks=(64, 96))
    mask = check_segmentation(scene, result, gray_card)
    if make is nan_scene:
        assert (mask[20:60, 30:100] == 255).all()
        assert (mask != 255).sum() == 171 * 143 - 40 * 70
    if make is no_georeference:
        assert raw_geometry(result.mask)["crs"] is None
        assert result.report["area_unit"] == "pixel^2"
        assert result.report["labels"][0]["area_ha"] is None
    if make is geographic:
        assert result.report["area_unit"] == "degree^2"
        assert result.report["labels"][1]["area_ha"] is None


@pytest.mark.slow
def test_reference_mask_scores_exclude_nodata(tmp_path: Path, data_dir: Path, gray_card: Path, client2: Any) -> None:
    scene = crop(data_dir / "geo" / "RGB.byte.tif", tmp_path / "s.tif", Window(0, 0, 180, 160))
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 2, (1, 160, 180)).astype(np.uint8)
    truth[0, :20] = 9  # the reference's own nodata
    with rasterio.open(scene) as src:
        ref = write_raster(tmp_path / "ref.tif", truth, crs=src.crs, transform=src.transform, nodata=9)
    result = segment_raster(scene, model=gray_card, bands=(2,), output=tmp_path / "m.tif", reference=ref,
                            client=client2)
    mask = mask_of(result.mask)
    _, valid = read(scene, (2,))
    keep = valid & (truth[0] != 9)
    expected = scores(confusion(np.where(keep, truth[0], 0), np.where(keep, mask, 0), 2, valid=keep))
    for row, want in zip(result.report["labels"], expected.labels, strict=True):
        assert row["reference_pixels"] == want.reference
        assert row["pixels"] == want.predicted
        assert row["iou"] == pytest.approx(want.iou, abs=1e-6)
    assert result.report["pixel_accuracy"] == pytest.approx(expected.pixel_accuracy)


# --- the command line ------------------------------------------------------------------------------

def make_case(name: str, d: Path, cards: dict[str, Path]) -> tuple[list[str], str]:
    scene = str(d / "scene.tif")
    rgb = ["-m", str(cards["rgb"])]
    if name == "missing":
        return [str(d / "nope.tif"), *rgb], "nope.tif: file not found"
    if name == "not_raster":
        (d / "notes.tif").write_text("not a raster")
        return [str(d / "notes.tif"), *rgb], "notes.tif: not a readable raster"
    if name == "truncated":
        return [str(truncated(d)), *rgb, "--bands", "1,1,1"], "cut.tif: cannot read its last block"
    if name == "zero_bands":
        return [str(zero_bands(d)), *rgb], "zero.tif: not a readable raster"
    if name == "band_count":
        write_raster(d / "rgbn.tif", np.ones((4, 40, 40), np.uint8))
        return [str(d / "rgbn.tif"), *rgb], "raster has 4 bands but model 'rgb' takes 3; choose them with --bands"
    if name == "band_range":
        return [scene, *rgb, "--bands", "3,2,5"], "band 5 does not exist; the raster has 3 band(s)"
    if name == "model_3d":
        return [scene, "-m", str(cards["tiny"])], "segment-raster needs a 2D model"
    if name == "reference_grid":
        write_raster(d / "ref.tif", np.zeros((1, 30, 30), np.uint8))
        return [scene, *rgb, "-r", str(d / "ref.tif")], "reference grid differs from the scene's (size 30x30 vs 64x48)"
    if name == "reference_crs":
        with rasterio.open(d / "scene.tif") as src:
            write_raster(d / "ref.tif", np.zeros((1, 48, 64), np.uint8), crs="EPSG:4326", transform=src.transform)
        return [scene, *rgb, "-r", str(d / "ref.tif")], "(CRS EPSG:4326 vs EPSG:32618)"
    if name == "reference_labels":
        with rasterio.open(d / "scene.tif") as src:
            write_raster(d / "ref.tif", np.full((1, 48, 64), 7, np.uint8), crs=src.crs, transform=src.transform)
        return [scene, *rgb, "-r", str(d / "ref.tif")], "reference has label 7 (rows 0..47), but the model only"
    if name == "vector_format":
        return [scene, *rgb, "--vectors", str(d / "v.shp")], "unknown vector format '.shp'"
    if name == "output_exists":
        (d / "scene_seg.tif").write_bytes(b"previous result")
        return [scene, *rgb], "scene_seg.tif: output exists; pass --overwrite"
    raise AssertionError(name)


CASES = ["missing", "not_raster", "truncated", "zero_bands", "band_count", "band_range", "model_3d", "reference_grid",
         "reference_crs", "reference_labels", "vector_format", "output_exists"]


@pytest.fixture
def case_dir(tmp_path: Path, data_dir: Path) -> Path:
    crop(data_dir / "geo" / "RGB.byte.tif", tmp_path / "scene.tif", Window(300, 300, 64, 48))
    return tmp_path


@pytest.mark.parametrize("name", CASES)
def test_bad_input_fails_cleanly(name: str, case_dir: Path, rgb_card: Path, tiny_card: Path) -> None:
    args, message = make_case(name, case_dir, {"rgb": rgb_card, "tiny": tiny_card})
    run_and_check_clean_failure(runner, app, ["segment-raster", *args, "--workers", "1"], case_dir, message)


def test_bands_usage_error(case_dir: Path, rgb_card: Path) -> None:
    args = ["segment-raster", str(case_dir / "scene.tif"), "-m", str(rgb_card), "--bands", "r,g,b"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "--bands must be comma-separated band numbers" in result.stderr


@pytest.mark.slow
def test_all_nodata_scene_gives_an_all_nodata_mask(tmp_path: Path, rgb_card: Path, client2: Any) -> None:
    scene = write_raster(tmp_path / "empty.tif", np.zeros((3, 70, 90), np.uint8), nodata=0)
    address = client2.scheduler.address
    result = runner.invoke(app, ["segment-raster", str(scene), "-m", str(rgb_card), "--dask-address", address,
                                 "--vectors", str(tmp_path / "empty.geojson")])
    assert result.exit_code == 0, result.output
    assert f"mask:   {tmp_path / 'empty_seg.tif'}" in result.stdout
    assert "(0 polygons)" in result.stdout
    assert (mask_of(tmp_path / "empty_seg.tif") == 255).all()
    assert cog_validate(tmp_path / "empty_seg.tif")[0]
    report = json.loads((tmp_path / "empty_seg.report.json").read_text())
    assert report["input"]["valid_pixels"] == 0
    assert report["run"]["windows"] == 0
    assert all(row["pixels"] == 0 for row in report["labels"])
    assert json.loads((tmp_path / "empty.geojson").read_text())["features"] == []


@pytest.mark.slow
def test_cli_end_to_end(tmp_path: Path, data_dir: Path, rgb_card: Path, client2: Any) -> None:
    scene = crop(data_dir / "geo" / "RGB.byte.tif", tmp_path / "s.tif", Window(200, 250, 150, 110))
    shutil.copy(scene, tmp_path / "again.tif")
    args = ["segment-raster", str(scene), "-m", str(rgb_card), "--bands", "3,2,1", "--chunk-size", "64",
            "--dask-address", client2.scheduler.address, "--vectors", str(tmp_path / "v.geojson")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "vectors: " in result.stdout
    assert "Mpx/s" in result.stdout and "Mvox/s" not in result.stdout  # pixels, not voxels
    features = json.loads((tmp_path / "v.geojson").read_text())
    assert features["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32618"
    assert len(features["features"]) == json.loads((tmp_path / "s_seg.report.json").read_text())["features"]
    assert runner.invoke(app, args).exit_code == 1  # outputs exist now
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
