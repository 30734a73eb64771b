"""Raster edge: validate a scene, stream its bands into the Zarr work store, write the mask as a COG.

Any raster GDAL reads from a file (GeoTIFF, COG, VRT) is accepted. Nothing here reads a whole
scene: Dask tasks get a path and a window (datasets do not pickle), open the file themselves
and write whole Zarr chunks, so each chunk has one writer. The mask is written chunk by chunk
into a tiled GeoTIFF in the work directory, made a COG by rio-cogeo, and moved onto its final
name only once complete.

Nodata: a pixel is valid when any selected band is valid in GDAL's masks (nodata value,
internal mask or alpha band), as in GDAL's dataset mask, and every selected band is finite.
Non-finite values become 0 in the work store (a NaN would spread through every window that
touches it); the ``valid`` array beside ``image`` is what statistics and preprocessing honour
(:mod:`pipeline.engine.validity`). Invalid pixels are :data:`NODATA_LABEL` in the mask and count
in no metric.

Georeference is copied, never invented: no CRS in, no CRS out; a rotated transform is copied
term for term; a scene placed only by GCPs or RPCs is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import zarr
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from pipeline.config.cards import Label
from pipeline.errors import GridMismatchError, InputError, InputNotFoundError, OutputError
from pipeline.files import require_regular_file
from pipeline.geometry import RasterGeometry, block_slices, crs_name, same_crs
from pipeline.io.atomic import atomic_path
from pipeline.io.outputs import NODATA_LABEL
from pipeline.io.store import write_region

logger = logging.getLogger(__name__)

#: Most bytes one tiling task reads at once.
READ_BYTES = 64 * 2**20
#: GDAL block cache per process (MB): reads and writes stream, so a small cache is enough.
GDAL_CACHE_MB = 64
#: Tile side of the mask COG.
COG_BLOCK = 512
MASK_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class Raster:
    """A validated raster file: its path and geometry (no pixel read beyond a probe)."""

    path: Path
    geometry: RasterGeometry


def _reason(error: BaseException) -> str:
    """GDAL's own message when rasterio wraps it ("Read failed. See previous exception")."""
    cause = error.__cause__ or error
    text = str(cause).strip().splitlines()
    return text[0] if text else type(cause).__name__


@contextlib.contextmanager
def _dataset(path: Path) -> Iterator[Any]:
    """Open ``path`` read-only with a small GDAL cache; GDAL failures become :class:`InputError`."""
    with warnings.catch_warnings(), rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # we log our own, once per scene
        try:
            src = rasterio.open(path)
        except RasterioError as e:
            raise InputError(f"{path}: not a readable raster ({_reason(e)})") from e
        with src:
            yield src


def open_raster(path: str | os.PathLike[str]) -> Raster:
    """Open and validate a raster without reading its pixels (except one probe block).

    Raises
    ------
    InputNotFoundError, InputError
        Missing file, not a raster GDAL can read, no bands, non-numeric bands, georeference by
        GCPs/RPCs only, or truncated data (the last block cannot be read).
    """
    path = Path(path)
    require_regular_file(path, "file", InputError, missing=InputNotFoundError)
    with _dataset(path) as src:
        geometry = _geometry(path, src)
        _probe(path, src)
    if not geometry.is_georeferenced:
        logger.warning("%s: no CRS and no transform; the mask will have none either (pixel coordinates)", path)
    elif geometry.crs is None:
        logger.warning("%s: no CRS; the mask copies the transform and has no CRS either", path)
    if geometry.is_rotated:
        logger.info("%s: rotated or sheared grid; the mask copies its transform exactly", path)
    return Raster(path=path, geometry=geometry)


def _geometry(path: Path, src: Any) -> RasterGeometry:
    if src.count < 1:
        raise InputError(f"{path}: raster has no bands")
    dtype = np.result_type(*src.dtypes)
    if dtype.kind not in "biuf":
        raise InputError(f"{path}: band type {dtype} is not a real number")
    if src.transform.is_identity and (src.gcps[0] or src.rpcs):
        raise InputError(f"{path}: placed by GCPs/RPCs only, which the mask could not carry; "
                         "warp it onto a geotransform first (gdalwarp)")
    try:
        return RasterGeometry(height=src.height, width=src.width, count=src.count,
                              crs=src.crs.to_wkt() if src.crs else None, transform=tuple(src.transform)[:6],
                              nodata=src.nodata, dtype=dtype.name, descriptions=src.descriptions,
                              block_size=src.block_shapes[0])
    except InputError as e:
        raise InputError(f"{path}: {e}") from e


def _probe(path: Path, src: Any) -> None:
    """Read the last block: catches a truncated file before any work starts."""
    rows, cols = src.block_shapes[0]
    last = src.block_window(1, (src.height - 1) // rows, (src.width - 1) // cols)
    try:
        src.read(1, window=last)
    except RasterioError as e:
        raise InputError(f"{path}: cannot read its last block ({_reason(e)}); truncated or corrupt?") from e


def select_bands(raster: Raster, bands: Sequence[int] | None, in_channels: int, *, model: str) -> tuple[int, ...]:
    """The 1-based bands to feed a model taking ``in_channels``, in model order.

    ``bands`` (from ``--bands`` or the card) may repeat a band; without it the raster must
    have exactly ``in_channels`` bands, used in file order.
    """
    count = raster.geometry.count
    if bands is None:
        if count != in_channels:
            example = ",".join(str(b) for b in range(1, in_channels + 1))
            raise InputError(f"{raster.path}: raster has {count} bands but model {model!r} takes {in_channels}; "
                             f"choose them with --bands, e.g. --bands {example}")
        return tuple(range(1, count + 1))
    chosen = tuple(int(b) for b in bands)
    missing = [b for b in chosen if not 1 <= b <= count]
    if missing:
        raise InputError(f"{raster.path}: band {missing[0]} does not exist; the raster has {count} band(s), "
                         "numbered from 1")
    if len(chosen) != in_channels:
        raise InputError(f"{raster.path}: model {model!r} takes {in_channels} band(s), got {len(chosen)} "
                         f"({','.join(map(str, chosen))})")
    return chosen


def raster_chunks(geometry: RasterGeometry, default: Sequence[int]) -> tuple[int, ...]:
    """``default`` block sides, rounded up to whole file tiles when the file is tiled.

    Then no tiling task splits a tile. A striped file is read in whole strips anyway.
    """
    rows, cols = geometry.block_size
    if cols >= geometry.width:
        return tuple(default)
    return tuple(-(-side // block) * block for side, block in zip(default, (rows, cols), strict=True))


def read_windows(shape: Sequence[int], chunks: Sequence[int], bytes_per_pixel: int,
                 max_bytes: int = READ_BYTES) -> list[tuple[slice, ...]]:
    """Windows for tiling tasks: one chunk tall, as many whole chunks wide as fit in ``max_bytes``.

    Whole chunks, so each Zarr chunk has one writer; wide, so strips are decoded about once.
    """
    per_chunk = chunks[0] * chunks[1] * bytes_per_pixel
    across = max(1, max_bytes // per_chunk) * chunks[1]
    return list(block_slices(shape, (chunks[0], across)))


def read_bands(path: Path, bands: Sequence[int], dtype: str, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (C, h, w) of ``bands`` in a window, non-finite ones set to 0, and their validity (h, w)."""
    window = Window.from_slices(rows, cols)
    with _dataset(path) as src:
        try:
            data = src.read(list(bands), window=window, out_dtype=dtype)
            masks = src.read_masks(list(bands), window=window)
            valid = masks.any(axis=0)
        except RasterioError as e:
            raise InputError(f"{path}: cannot read rows {rows.start}..{rows.stop - 1}, cols {cols.start}.."
                             f"{cols.stop - 1} ({_reason(e)}); truncated or corrupt?") from e
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        _check_float32_range(path, data, finite & (masks > 0), rows, cols)
        valid &= finite.all(axis=0)
        data[~finite] = 0
    return data, valid


#: Largest magnitude a valid pixel may have: inference runs in float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_float32_range(path: Path, data: np.ndarray, checked: np.ndarray, rows: slice, cols: slice) -> None:
    """Refuse finite valid pixels float32 cannot hold (a float64 1e300 would become inf in the network and
    pass as data); nodata pixels may hold anything (GDAL's float64 nodata is often -1.8e308)."""
    if data.dtype.itemsize <= 4:
        return
    beyond = checked & (np.abs(data) > FLOAT32_MAX)
    if beyond.any():
        raise InputError(f"{path}: {int(beyond.sum())} valid pixel values beyond float32 range (largest "
                         f"{float(np.abs(data[beyond]).max()):.3g}) in rows {rows.start}..{rows.stop - 1}, cols "
                         f"{cols.start}..{cols.stop - 1}; rescale the raster or mark them nodata")


def copy_window(path: str, bands: tuple[int, ...], dtype: str, rows: slice, cols: slice, store: str) -> int | str:
    """Dask task: copy one window into ``image`` and ``valid``; returns its valid pixel count.

    A window that cannot be read (a corrupt tile) returns the :class:`InputError`'s message instead,
    raised again by :func:`tile_to_store` on the client: a bad input is not a failed task, which
    Dask would log with a traceback from the worker.
    """
    try:
        data, valid = read_bands(Path(path), bands, dtype, rows, cols)
    except InputError as e:
        return str(e)
    write_region(store, "image", (slice(None), rows, cols), data)
    write_region(store, "valid", (rows, cols), valid)
    return int(valid.sum())


def publish(source: Path, target: Path) -> None:
    """Move a finished file from the work directory onto ``target`` in one rename."""
    with atomic_path(target) as tmp:
        shutil.move(source, tmp)


def georeference(geometry: RasterGeometry) -> dict[str, Any]:
    """Profile keys that put an output on ``geometry``'s grid; none for a raster without georeference."""
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    keys: dict[str, Any] = {}
    if geometry.crs is not None:
        keys["crs"] = CRS.from_user_input(geometry.crs)
    if geometry.is_georeferenced:
        keys["transform"] = Affine(*geometry.transform)
    return keys


def colormap(labels: dict[int, Label]) -> dict[int, tuple[int, int, int, int]]:
    """The card's label colours, and transparent nodata."""
    colours = {value: (*label.color, 255) for value, label in labels.items()}
    return {**colours, NODATA_LABEL: (0, 0, 0, 0)}


class _PaletteOverviewNote(logging.Filter):
    """GDAL's note that it computes overviews of a palette band before rio-cogeo copies the palette in.
    Our overviews are ``mode`` resampled class values, which a palette does not change; a 30k x 30k mask
    printed it once per overview level."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "palette index raster bands without a palette" not in record.getMessage()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence what writing a mask makes GDAL and rio-cogeo say about things we handle on purpose."""
    gdal_log, note = logging.getLogger("rasterio._env"), _PaletteOverviewNote()
    gdal_log.addFilter(note)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # no georeference in, none out: logged at open
            warnings.filterwarnings("ignore", message="Use `@` matmul", category=PendingDeprecationWarning)
            yield
    finally:
        gdal_log.removeFilter(note)


def _write_tiled(labels: zarr.Array, valid: zarr.Array, geometry: RasterGeometry, path: Path,
                 names: dict[int, Label]) -> None:
    profile = {"driver": "GTiff", "width": geometry.width, "height": geometry.height, "count": 1, "dtype": "uint8",
               "nodata": NODATA_LABEL, "tiled": True, "blockxsize": COG_BLOCK, "blockysize": COG_BLOCK,
               "compress": "deflate", "BIGTIFF": "IF_SAFER", **georeference(geometry)}
    with _quiet(), rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(path, "w", **profile) as dst:
        for rows, cols in block_slices(geometry.shape, labels.chunks):
            block = np.where(valid[rows, cols], labels[rows, cols], NODATA_LABEL).astype(np.uint8)
            dst.write(block, 1, window=Window.from_slices(rows, cols))
        dst.write_colormap(1, colormap(names))
        dst.set_band_description(1, "class")
        dst.update_tags(1, **{f"CLASS_{value}": label.name for value, label in names.items()})


def write_mask(labels: zarr.Array, valid: zarr.Array, geometry: RasterGeometry, path: Path, *,
               names: dict[int, Label], work_dir: Path) -> None:
    """Write (y, x) labels as a uint8 COG on ``geometry``'s exact grid, invalid pixels 255.

    Tiled and DEFLATE-compressed, internal overviews by ``mode`` resampling, the card's colours as
    a colour table, class names as band tags ``CLASS_<value>``. Assembled in ``work_dir``; ``path``
    appears only once complete.

    Raises
    ------
    OutputError
        GDAL cannot write the file.
    """
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    tiled, cog = work_dir / "mask_tiled.tif", work_dir / "mask_cog.tif"
    profile = cog_profiles.get("deflate")
    profile.update(blockxsize=COG_BLOCK, blockysize=COG_BLOCK, BIGTIFF="IF_SAFER")
    try:
        _write_tiled(labels, valid, geometry, tiled, names)
        with _quiet():
            cog_translate(tiled, cog, profile, overview_resampling="mode", forward_band_tags=True, in_memory=False,
                          quiet=True, config={"GDAL_CACHEMAX": GDAL_CACHE_MB})
    except RasterioError as e:
        raise OutputError(f"{path}: cannot write the mask ({_reason(e)})") from e
    finally:
        tiled.unlink(missing_ok=True)
    publish(cog, path)


def open_reference(path: str | os.PathLike[str], geometry: RasterGeometry) -> Raster:
    """Open a single-band reference mask that must sit on ``geometry``'s grid.

    Raises
    ------
    GridMismatchError
        Different size, transform or CRS.
    """
    ref = open_raster(path)
    if ref.geometry.count != 1:
        raise InputError(f"{ref.path}: reference has {ref.geometry.count} bands; pass a single-band label mask")
    if not ref.geometry.same_grid(geometry):
        difference = _difference(ref.geometry, geometry)
        raise GridMismatchError(f"{ref.path}: reference grid differs from the scene's ({difference}); "
                                "resample it onto the scene's grid first")
    return ref


def _difference(ref: RasterGeometry, scene: RasterGeometry) -> str:
    if ref.shape != scene.shape:
        return f"size {ref.width}x{ref.height} vs {scene.width}x{scene.height}"
    if not same_crs(ref.crs, scene.crs):
        return f"CRS {crs_name(ref.crs)} vs {crs_name(scene.crs)}"
    return f"transform {ref.transform} vs {scene.transform}"


def read_labels(path: Path, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """Reference labels (int64) in a window of band 1, and where they are valid (not the mask's nodata)."""
    values, valid = read_bands(path, (1,), "float64", rows, cols)
    labels = np.rint(values[0])
    if (labels[valid] < 0).any():
        raise InputError(f"{path}: negative values in a label mask (rows {rows.start}..{rows.stop - 1})")
    return labels.astype(np.int64), valid
