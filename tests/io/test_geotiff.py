"""Rasters in and masks out: geometry kept exactly, nodata respected, COGs valid, memory bounded."""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import zarr
from rasterio.control import GroundControlPoint
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

from pipeline.config.cards import Label
from pipeline.errors import GridMismatchError, InputError, InputNotFoundError
from pipeline.geometry import RasterGeometry, block_slices
from pipeline.io.geotiff import (
    copy_window,
    open_raster,
    open_reference,
    raster_chunks,
    read_bands,
    read_windows,
    select_bands,
    write_mask,
)
from pipeline.io.outputs import NODATA_LABEL
from pipeline.io.store import create_array, open_work_group
from pipeline.tiling.raster import tile_to_store

REAL = ["sample_geotiff.tif", "RGB.byte.tif", "road_mask_input.tif", "sample_fp_mask.tif",
        "sample_road_raster_mask.tif"]
UTM = Affine(0.5, 0.0, 733601.0, 0.0, -0.5, 3725139.0)
NAMES = {0: Label(name="background", color=(0, 0, 0)), 1: Label(name="building", color=(230, 60, 60)),
         2: Label(name="road", color=(250, 250, 0))}


def write_raster(path: Path, data: np.ndarray, *, crs: str | None = "EPSG:32616", transform: Affine | None = UTM,
                 **profile: Any) -> Path:
    """Save (C, H, W) ``data`` as a GeoTIFF; ``transform=None`` and ``crs=None`` give no georeference."""
    keys: dict[str, Any] = {"driver": "GTiff", "count": data.shape[0], "height": data.shape[1],
                            "width": data.shape[2], "dtype": data.dtype.name, **profile}
    if crs is not None:
        keys["crs"] = crs
    if transform is not None:
        keys["transform"] = transform
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **keys) as dst:
            dst.write(data)
    return path


def crop(source: Path, target: Path, window: Window) -> Path:
    """A real raster's window, with its georeference and nodata."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(source) as src:
            profile = {**src.profile, "width": int(window.width), "height": int(window.height),
                       "transform": src.transform @ Affine.translation(window.col_off, window.row_off)}
            profile.pop("blockxsize", None), profile.pop("blockysize", None), profile.pop("tiled", None)
            with rasterio.open(target, "w", **profile) as dst:
                dst.write(src.read(window=window))
    return target


def tile_sample(source: Path, target: Path, reps: tuple[int, int], **profile: Any) -> Path:
    """A larger scene made by repeating a real one (same origin and pixel size)."""
    with rasterio.open(source) as src:
        data, crs, transform, nodata = src.read(), src.crs, src.transform, src.nodata
    return write_raster(target, np.tile(data, (1, *reps)), crs=crs, transform=transform, nodata=nodata, **profile)


def raw_geometry(path: Path) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return {"crs": src.crs, "transform": src.transform, "shape": src.shape, "gcps": src.gcps[0]}


# --- RasterGeometry: a value, checked when built --------------------------------------------------

GEOMETRIES = [
    RasterGeometry(height=900, width=900, crs="EPSG:32616", transform=tuple(UTM)[:6], nodata=0.0, dtype="uint16"),
    RasterGeometry(height=7, width=13, count=2, nodata=float("nan"), dtype="float32", descriptions=("red", None)),
    RasterGeometry(height=5, width=3, transform=(0.5, 0.2, 10.0, 0.1, -0.5, 20.0), nodata=-float("inf")),
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_geometry_round_trips_through_strict_json(geometry: RasterGeometry) -> None:
    text = json.dumps(geometry.to_attrs(), allow_nan=False)
    back = RasterGeometry.from_attrs(json.loads(text))
    assert back == geometry
    assert hash(back) == hash(geometry)
    assert pickle.loads(pickle.dumps(geometry)) == geometry


def test_geometry_grid_comparison() -> None:
    from rasterio.crs import CRS

    base = GEOMETRIES[0]
    wkt = RasterGeometry(height=900, width=900, crs=CRS.from_epsg(32616).to_wkt(), transform=base.transform)
    assert base.same_grid(wkt)  # same CRS spelled differently; nodata and dtype are not the grid
    assert not base.same_grid(RasterGeometry(height=900, width=901, crs=base.crs, transform=base.transform))
    assert not base.same_grid(RasterGeometry(height=900, width=900, crs="EPSG:4326", transform=base.transform))
    assert not base.same_grid(RasterGeometry(height=900, width=900, transform=base.transform))
    shifted = (*base.transform[:2], base.transform[2] + 0.01, *base.transform[3:])
    assert not base.same_grid(RasterGeometry(height=900, width=900, crs=base.crs, transform=shifted))
    assert base.pixel_area == 0.25
    assert not base.is_rotated
    assert base.is_georeferenced
    assert GEOMETRIES[2].pixel_area == pytest.approx(0.27)
    assert GEOMETRIES[2].is_rotated
    assert not GEOMETRIES[1].is_georeferenced


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"height": 0, "width": 3}, "must be >= 1"),
    ({"height": 3, "width": 3, "transform": (1.0, 2.0, 0.0, 2.0, 4.0, 0.0)}, "not invertible"),
    ({"height": 3, "width": 3, "transform": (1.0, 0.0, 0.0)}, "6 finite numbers"),
    ({"height": 3, "width": 3, "count": 2, "descriptions": ("a",)}, "one entry per band"),
])
def test_geometry_refuses_impossible_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        RasterGeometry(**kwargs)


def test_block_slices_and_read_windows_cover_the_array_once() -> None:
    shape, chunks = (1000, 2300), (256, 512)
    cover = np.zeros(shape, np.int64)
    for rows, cols in read_windows(shape, chunks, bytes_per_pixel=4, max_bytes=3 * 256 * 512 * 4):
        cover[rows, cols] += 1
        assert cols.start % 512 == 0
        assert rows.start % 256 == 0
        assert cols.stop - cols.start <= 3 * 512
    assert (cover == 1).all()
    assert len(list(block_slices(shape, chunks))) == 4 * 5


def test_chunks_align_to_tiles_not_strips() -> None:
    tiled = RasterGeometry(height=5000, width=5000, block_size=(384, 384))
    striped = RasterGeometry(height=5000, width=5000, block_size=(3, 5000))
    assert raster_chunks(tiled, (1024, 1024)) == (1152, 1152)
    assert raster_chunks(striped, (1024, 1024)) == (1024, 1024)


# --- reading ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", REAL)
def test_open_real_rasters_keeps_their_geometry(name: str, data_dir: Path) -> None:
    path = data_dir / "geo" / name
    raster = open_raster(path)
    raw = raw_geometry(path)
    g = raster.geometry
    assert (g.height, g.width) == raw["shape"]
    assert Affine(*g.transform) == raw["transform"]
    assert (g.crs is None) == (raw["crs"] is None)
    if raw["crs"] is not None:
        assert rasterio.crs.CRS.from_wkt(g.crs) == raw["crs"]


@contextlib.contextmanager
def logged(name: str = "pipeline") -> Iterator[list[str]]:
    """Messages logged under ``name`` (works without pytest's logging plugin)."""
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_no_georeference_is_reported_not_invented(data_dir: Path) -> None:
    with logged() as messages:
        g = open_raster(data_dir / "geo" / "sample_fp_mask.tif").geometry
    assert g.crs is None
    assert not g.is_georeferenced
    assert any("no CRS and no transform; the mask will have none either" in m for m in messages)


@pytest.mark.parametrize(("make", "error", "message"), [
    (lambda d: d / "nope.tif", InputNotFoundError, "file not found"),
    (lambda d: (d / "notes.tif").write_text("not a raster") and d / "notes.tif", InputError, "not a readable raster"),
    (lambda d: truncated(d), InputError, "truncated or corrupt"),
    (lambda d: zero_bands(d), InputError, "not a readable raster"),
    (lambda d: gcps_only(d), InputError, "placed by GCPs/RPCs only"),
    (lambda d: write_raster(d / "c.tif", np.zeros((1, 4, 4), np.complex64)), InputError, "not a real number"),
])
def test_bad_rasters_are_refused(tmp_path: Path, make: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        open_raster(make(tmp_path))


def truncated(d: Path, name: str = "cut.tif") -> Path:
    data = np.arange(300 * 200, dtype=np.uint16).reshape(1, 300, 200)
    full = write_raster(d / "full.tif", data).read_bytes()
    (d / name).write_bytes(full[: len(full) // 2])
    (d / "full.tif").unlink()
    return d / name


def zero_bands(d: Path, name: str = "zero.tif") -> Path:
    """A TIFF whose SamplesPerPixel is 0: the nearest thing to a zero-band raster GDAL can meet."""
    import struct

    raw = bytearray(write_raster(d / "one.tif", np.ones((1, 10, 10), np.uint8)).read_bytes())
    (d / "one.tif").unlink()
    first = struct.unpack_from("<I", raw, 4)[0]
    for i in range(struct.unpack_from("<H", raw, first)[0]):
        entry = first + 2 + 12 * i
        if struct.unpack_from("<H", raw, entry)[0] == 277:  # SamplesPerPixel
            struct.pack_into("<H", raw, entry + 8, 0)
    (d / name).write_bytes(bytes(raw))
    return d / name


def gcps_only(d: Path) -> Path:
    path = write_raster(d / "gcps.tif", np.ones((1, 8, 8), np.uint8), crs=None, transform=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "r+") as dst:
            dst.gcps = ([GroundControlPoint(0, 0, 733601.0, 3725139.0), GroundControlPoint(8, 8, 733605.0, 3725135.0),
                         GroundControlPoint(0, 8, 733601.0, 3725135.0)], rasterio.crs.CRS.from_epsg(32616))
    return path


def four_band(tmp_path: Path) -> Any:
    return open_raster(write_raster(tmp_path / "rgbn.tif", np.ones((4, 9, 9), np.uint8)))


def test_band_selection(tmp_path: Path) -> None:
    raster = four_band(tmp_path)
    assert select_bands(raster, (3, 2, 1), 3, model="rgb") == (3, 2, 1)
    assert select_bands(raster, (4, 4, 4), 3, model="rgb") == (4, 4, 4)
    assert select_bands(raster, None, 4, model="rgbn") == (1, 2, 3, 4)
    with pytest.raises(InputError, match=r"raster has 4 bands but model 'rgb' takes 3; choose them with --bands"):
        select_bands(raster, None, 3, model="rgb")
    with pytest.raises(InputError, match="band 5 does not exist; the raster has 4 band"):
        select_bands(raster, (5, 1, 2), 3, model="rgb")
    with pytest.raises(InputError, match="band 0 does not exist"):
        select_bands(raster, (0, 1, 2), 3, model="rgb")
    with pytest.raises(InputError, match=r"model 'rgb' takes 3 band\(s\), got 2"):
        select_bands(raster, (1, 2), 3, model="rgb")


def test_validity_follows_gdal_masks(data_dir: Path) -> None:
    path = data_dir / "geo" / "RGB.byte.tif"
    data, valid = read_bands(path, (1, 2, 3), "uint8", slice(0, 718), slice(0, 791))
    with rasterio.open(path) as src:
        np.testing.assert_array_equal(data, src.read())
        np.testing.assert_array_equal(valid, src.dataset_mask() > 0)  # nodata only where all bands are 0
    _, one_band = read_bands(path, (1,), "uint8", slice(0, 718), slice(0, 791))
    assert one_band.sum() < valid.sum()


def test_non_finite_pixels_are_invalid_and_zeroed(tmp_path: Path) -> None:
    data = np.arange(2 * 5 * 6, dtype=np.float32).reshape(2, 5, 6)
    data[0, 1, 2], data[1, 3, 4], data[0, 4, 0] = np.nan, np.inf, -1.0
    path = write_raster(tmp_path / "f.tif", data, nodata=-1.0)
    values, valid = read_bands(path, (1, 2), "float32", slice(0, 5), slice(0, 6))
    assert not valid[1, 2]
    assert not valid[3, 4]
    assert values[0, 1, 2] == 0
    assert values[1, 3, 4] == 0
    assert valid[4, 0]  # band 2 is valid there: the pixel is valid (GDAL's dataset-mask rule)
    assert valid.sum() == 28


def test_read_failure_names_file_and_window(tmp_path: Path) -> None:
    path = truncated(tmp_path)
    with pytest.raises(InputError, match=r"cut.tif: cannot read rows 0\.\.299, cols 0\.\.199 .*truncated or corrupt"):
        read_bands(path, (1,), "uint16", slice(0, 300), slice(0, 200))


def test_copy_window_writes_whole_chunks(tmp_path: Path, data_dir: Path) -> None:
    """The task itself, without Dask: what a worker does with a path and a window."""
    path = data_dir / "geo" / "RGB.byte.tif"
    group = open_work_group(tmp_path / "w.zarr", overwrite=True)
    create_array(group, "image", shape=(3, 718, 791), chunks=(3, 256, 256), dtype="uint8")
    create_array(group, "valid", shape=(718, 791), chunks=(256, 256), dtype=bool, channel_axis=False)
    args = (str(path), (1, 2, 3), "uint8", slice(256, 512), slice(0, 791), str(tmp_path / "w.zarr"))
    assert pickle.loads(pickle.dumps(args)) == args  # what travels to workers: paths and windows
    count = copy_window(*args)
    with rasterio.open(path) as src:
        window = Window(0, 256, 791, 256)
        np.testing.assert_array_equal(group["image"][:, 256:512], src.read(window=window))
        assert count == int((src.dataset_mask(window=window) > 0).sum())
    assert not group["valid"][:256].any()


# --- tiling on Dask --------------------------------------------------------------------------------

def tile(path: Path, work: Path, chunks: tuple[int, int], client: Any, bands: tuple[int, ...] = (1,)) -> Any:
    raster = open_raster(path)
    group = open_work_group(work, overwrite=True)
    attributes = {"geometry": raster.geometry.to_attrs()}
    return tile_to_store(raster, bands, group, chunks, client=client, attributes=attributes)


@pytest.mark.slow
@pytest.mark.parametrize("reps", [(1, 1), (3, 2)])
def test_tiling_equals_the_file(tmp_path: Path, data_dir: Path, client2: Any, reps: tuple[int, int]) -> None:
    """Odd sizes, and a scene bigger than the chunk grid made by repeating a real one."""
    small = crop(data_dir / "geo" / "RGB.byte.tif", tmp_path / "crop.tif", Window(0, 0, 157, 133))
    scene = tile_sample(small, tmp_path / "scene.tif", reps)
    image, valid, count = tile(scene, tmp_path / "w.zarr", (64, 48), client2, bands=(3, 1))
    with rasterio.open(scene) as src:
        np.testing.assert_array_equal(image[...], src.read([3, 1]))
        mask = src.read_masks([3, 1]).any(axis=0)
    np.testing.assert_array_equal(valid[...], mask)
    assert count == mask.sum()
    assert 0 < count < mask.size
    assert image.chunks == (2, 64, 48)
    assert valid.chunks == (64, 48)
    assert RasterGeometry.from_attrs(image.attrs["geometry"]) == open_raster(scene).geometry


@pytest.mark.slow
def test_float_nan_scene_is_tiled_with_zeros(tmp_path: Path, client2: Any) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(500, 100, (1, 77, 91)).astype(np.float32)
    data[0, 10:20, 30:60] = np.nan
    path = write_raster(tmp_path / "nan.tif", data, nodata=float("nan"))
    image, valid, count = tile(path, tmp_path / "w.zarr", (32, 32), client2)
    assert count == 77 * 91 - 300
    assert not valid[10:20, 30:60].any()
    assert np.isfinite(image[...]).all()
    assert (image[0, 10:20, 30:60] == 0).all()


# --- writing ---------------------------------------------------------------------------------------

def labels_store(work: Path, geometry: RasterGeometry, valid: np.ndarray, chunks: tuple[int, int] = (128, 96)) -> Any:
    group = open_work_group(work, overwrite=True)
    labels = create_array(group, "labels", shape=geometry.shape, chunks=chunks, dtype=np.uint8, channel_axis=False)
    mask = create_array(group, "valid", shape=geometry.shape, chunks=chunks, dtype=bool, channel_axis=False)
    rows, cols = np.indices(geometry.shape)
    labels[...] = ((rows // 50 + cols // 70) % 3).astype(np.uint8)
    mask[...] = valid
    return labels, mask


def write_and_check(path: Path, tmp_path: Path) -> np.ndarray:
    raster = open_raster(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            valid = src.dataset_mask() > 0
    labels, mask = labels_store(tmp_path / "w.zarr", raster.geometry, valid)
    out = tmp_path / "mask.tif"
    work = tmp_path / "work"
    work.mkdir()
    write_mask(labels, mask, raster.geometry, out, names=NAMES, work_dir=work)
    assert not list(work.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert cog_validate(out, strict=True)[0]
    assert raw_geometry(out) == raw_geometry(path)  # CRS, transform, size exactly; no GCPs invented
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(out) as dst:
            assert dst.crs == raster_crs(path)
            assert dst.nodata == NODATA_LABEL
            assert dst.dtypes == ("uint8",)
            if raster_crs(path) is not None:
                assert dst.crs.to_wkt() == raster_crs(path).to_wkt()
            assert dst.colormap(1)[1] == (230, 60, 60, 255)
            assert dst.colormap(1)[255][3] == 0
            assert dst.tags(1)["CLASS_2"] == "road"
            assert dst.descriptions == ("class",)
            assert dst.profile["tiled"]
            assert dst.compression.name == "deflate"
            written = dst.read(1)
    np.testing.assert_array_equal(written, np.where(valid, labels[...], NODATA_LABEL))
    return written


def raster_crs(path: Path) -> Any:
    return raw_geometry(path)["crs"]


@pytest.mark.parametrize("name", REAL)
def test_mask_cog_keeps_real_geometry_exactly(name: str, data_dir: Path, tmp_path: Path) -> None:
    written = write_and_check(data_dir / "geo" / name, tmp_path)
    if name == "RGB.byte.tif":
        assert (written == NODATA_LABEL).sum() > 100_000  # the nodata border


def test_mask_cog_has_overviews(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "big.tif", np.ones((1, 1500, 1100), np.uint8))
    write_and_check(path, tmp_path)
    with rasterio.open(tmp_path / "mask.tif") as dst:
        assert dst.overviews(1) == [2, 4]
        assert dst.tags()["OVERVIEW_RESAMPLING"] == "MODE"


@pytest.mark.parametrize(("crs", "transform"), [
    ("EPSG:32616", Affine(0.5, 0.2, 733601.0, 0.1, -0.5, 3725139.0)),  # rotated + sheared
    (None, Affine(2.0, 0.0, 100.0, 0.0, -2.0, 500.0)),  # a transform but no CRS
    ("EPSG:4326", Affine(2.7e-06, 0.0, -115.2338076, 0.0, -2.7e-06, 36.1423376998)),
])
def test_mask_passes_unusual_georeference_through(tmp_path: Path, crs: str | None, transform: Affine) -> None:
    path = write_raster(tmp_path / "in.tif", np.ones((1, 61, 47), np.uint8), crs=crs, transform=transform)
    write_and_check(path, tmp_path)
    assert raw_geometry(tmp_path / "mask.tif")["transform"] == transform


def test_reference_must_share_the_grid(tmp_path: Path, data_dir: Path) -> None:
    scene = open_raster(data_dir / "geo" / "sample_geotiff.tif").geometry
    ok = write_raster(tmp_path / "ok.tif", np.zeros((1, 900, 900), np.uint8))
    assert open_reference(ok, scene).geometry.same_grid(scene)
    with pytest.raises(GridMismatchError, match=r"reference grid differs from the scene's \(CRS none vs EPSG:32616\)"):
        open_reference(data_dir / "geo" / "sample_fp_mask.tif", scene)
    with pytest.raises(GridMismatchError, match=r"size 1300x1300 vs 900x900"):
        open_reference(data_dir / "geo" / "sample_road_raster_mask.tif", scene)
    other = write_raster(tmp_path / "4326.tif", np.zeros((1, 900, 900), np.uint8), crs="EPSG:4326")
    with pytest.raises(GridMismatchError, match=r"CRS EPSG:4326 vs EPSG:32616"):
        open_reference(other, scene)
    moved = write_raster(tmp_path / "moved.tif", np.zeros((1, 900, 900), np.uint8), 
                         transform=UTM @ Affine.translation(1, 0))
    with pytest.raises(GridMismatchError, match="transform"):
        open_reference(moved, scene)


# --- a sparse BigTIFF: memory stays bounded ---------------------------------------------------------

SPARSE_SCRIPT = """
import resource, sys
from pathlib import Path
from distributed import Client
from pipeline.io.geotiff import open_raster, write_mask
from pipeline.tiling.raster import tile_to_store
from pipeline.io.store import create_array, open_work_group
from pipeline.config.cards import Label

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024

scene, work = Path(sys.argv[1]), Path(sys.argv[2])
with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
    raster = open_raster(scene)
    group = open_work_group(work / "w.zarr", overwrite=True)
    labels = create_array(group, "labels", shape=raster.geometry.shape, chunks=(1024, 1024), dtype="uint8",
                          channel_axis=False)
    labels[:1024, :1024] = 1
    before = peak_mb()
    image, valid, count = tile_to_store(raster, (1,), group, (1024, 1024), client=client, attributes={})
write_mask(labels, valid, raster.geometry, work / "mask.tif", names={0: Label(name="a"), 1: Label(name="b")},
           work_dir=work)
print(count, before, peak_mb())
"""


@pytest.mark.slow
def test_sparse_bigtiff_streams_in_bounded_memory(tmp_path: Path) -> None:
    """20000 x 20000 uint8 (400 MB of pixels), almost all nodata, written sparse: tile it and write its mask."""
    side = 20_000
    scene = tmp_path / "sparse.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=side, height=side, count=1, dtype="uint8", nodata=0,
                       crs="EPSG:32616", transform=UTM, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                       BIGTIFF="YES", SPARSE_OK=True) as dst:
        dst.write(np.full((1, 100, 100), 7, np.uint8), window=Window(50, 60, 100, 100))
        dst.write(np.full((1, 10, 10), 9, np.uint8), window=Window(side - 10, side - 10, 10, 10))
    assert scene.stat().st_size < 2 * 2**20
    done = subprocess.run([sys.executable, "-c", SPARSE_SCRIPT, str(scene), str(tmp_path)], capture_output=True,
                          text=True, timeout=600, check=False, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    count, before, peak = map(int, done.stdout.split())
    assert count == 100 * 100 + 10 * 10
    assert peak - before < 200, f"streaming a 400 MB scene took {peak - before} MB on top of {before} MB"
    with rasterio.open(tmp_path / "mask.tif") as dst:
        assert dst.profile["blockxsize"] == 512
        assert dst.shape == (side, side)
        assert (dst.read(1, window=Window(50, 60, 100, 100)) == 1).all()  # labels 1 where valid
        assert (dst.read(1, window=Window(side - 10, side - 10, 10, 10)) == 0).all()
        assert (dst.read(1, window=Window(5000, 5000, 300, 300)) == NODATA_LABEL).all()
    assert cog_validate(tmp_path / "mask.tif")[0]
    assert sorted(zarr.open_array(tmp_path / "w.zarr" / "image").shape) == [1, side, side]


def test_a_mask_with_overviews_is_written_without_gdal_palette_notes(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A mask large enough for overview levels: GDAL's 'overviews on palette index raster bands without a
    palette' note (printed once per level on a 30k x 30k scene) is not shown; the palette is still written."""
    path = write_raster(tmp_path / "big.tif", np.zeros((1, 2100, 2300), dtype=np.uint8))
    raster = open_raster(path)
    labels, mask = labels_store(tmp_path / "w.zarr", raster.geometry, np.ones(raster.geometry.shape, bool),
                                chunks=(512, 512))
    (tmp_path / "work").mkdir()
    with caplog.at_level(logging.WARNING):
        write_mask(labels, mask, raster.geometry, tmp_path / "mask.tif", names=NAMES, work_dir=tmp_path / "work")
    with rasterio.open(tmp_path / "mask.tif") as dst:
        assert dst.overviews(1)  # the case GDAL talks about
        assert dst.colormap(1)[1] == (230, 60, 60, 255)
    assert not [r for r in caplog.records if "palette" in r.getMessage()]
    assert not logging.getLogger("rasterio._env").filters  # removed again after the write
