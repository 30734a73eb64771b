"""``--cutout LABEL[,LABEL]``: the input restricted to some labels, cropped to them plus a margin.

Out of core: the labels' bounding box is found one label chunk at a time, and the cutout is
written one slab (NIfTI) or one window (GeoTIFF) at a time from the work store's ``image``.
Voxels outside the kept labels get the input's minimum (volumes) or nodata (rasters; the input's
minimum, declared as nodata, when the raster has none). The crop's geometry is the original grid
moved (:mod:`pipeline.io.cutout_geometry`), so it opens over the input in any viewer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.geometry import RasterGeometry, VolumeGeometry, block_slices
from pipeline.io.cutout_geometry import (
    Box,
    block_box,
    grow,
    margin_steps,
    shifted_transform,
    shifted_volume,
    union,
    volume_spacing_mm,
)

logger = logging.getLogger(__name__)


def labels_box(labels: Any, kept: Sequence[int], valid: Any = None) -> Box | None:
    """Bounding box of ``kept`` over a (Zarr) label array, one chunk at a time."""
    chunks = getattr(labels, "chunks", None) or labels.shape
    boxes = []
    for box in block_slices(labels.shape, chunks):
        keep = None if valid is None else np.asarray(valid[box], dtype=bool)
        boxes.append(block_box(np.asarray(labels[box]), kept, [s.start for s in box], keep))
    return union(boxes)


@dataclass(frozen=True)
class CutoutView:
    """The crop ``box`` of ``image`` (C, *spatial), ``fill`` outside ``kept`` (and outside ``valid``),
    indexed like the crop itself: ``view[:, :, k0:k1]`` (spatial) or ``view.window(rows, cols)``."""

    image: Any
    labels: Any
    valid: Any
    kept: tuple[int, ...]
    box: Box
    fill: float

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(*self.box, strict=True))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.image.dtype)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.labels.chunks)

    def values(self, crop: tuple[slice, ...]) -> np.ndarray:
        """(C, *crop) values; ``crop`` in the crop's own coordinates (slices with starts and stops)."""
        source = tuple(slice(a + (s.start or 0), a + min(s.stop if s.stop is not None else n, n))
                       for s, a, n in zip(crop, self.box[0], self.shape, strict=True))
        data = np.asarray(self.image[(slice(None), *source)])
        inside = np.isin(np.asarray(self.labels[source]), np.asarray(self.kept))
        if self.valid is not None:
            inside &= np.asarray(self.valid[source], dtype=bool)
        return np.where(inside, data, np.asarray(self.fill).astype(data.dtype))

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        return self.values(key)[0]  # volumes: one channel


def write_volume_cutout(group: Any, geometry: VolumeGeometry, kept: Sequence[int], margin_mm: float,
                        path: Path) -> dict[str, Any] | None:
    """Write the cutout of a volume work store as NIfTI at ``path``; returns the report's facts, or None
    (and a warning) when no voxel carries a kept label."""
    import dask.array as da

    from pipeline.io.nifti import write_volume

    image, labels = group["image"], group["labels"]
    found = labels_box(labels, kept)
    if found is None:
        logger.warning("%s: no voxel has the --cutout labels; no cutout written", path)
        return None
    box = grow(found, margin_steps(margin_mm, volume_spacing_mm(geometry)), geometry.shape)
    fill = da.from_zarr(image).min().compute().item()
    view = CutoutView(image, labels, None, tuple(kept), box, fill)
    write_volume(view, shifted_volume(geometry, box), path)
    return {"path": str(path), "labels": list(kept), "start": list(box[0]), "shape": list(view.shape),
            "margin": margin_mm, "margin_unit": "mm", "fill": fill}


def raster_fill(image: Any, valid: Any, geometry: RasterGeometry) -> float:
    """The value outside the labels: the raster's nodata, else the minimum of its valid pixels."""
    import dask.array as da

    if geometry.nodata is not None:
        return geometry.nodata
    values = da.from_zarr(image)
    return da.where(da.from_zarr(valid).rechunk(values.chunks[1:])[None], values, np.inf).min().compute().item()


def write_raster_cutout(group: Any, geometry: RasterGeometry, kept: Sequence[int], margin_m: float,
                        path: Path, metres: tuple[float, float] | None) -> dict[str, Any] | None:
    """Write the cutout of a raster work store as a tiled GeoTIFF at ``path``. ``metres``: the ground
    size of a pixel (rows, cols); without one (no CRS) the margin is in pixels."""
    import rasterio
    from rasterio.windows import Window

    from pipeline.io.atomic import atomic_path
    from pipeline.io.geotiff import georeference

    image, labels, valid = group["image"], group["labels"], group["valid"]
    found = labels_box(labels, kept, valid)
    if found is None:
        logger.warning("%s: no valid pixel has the --cutout labels; no cutout written", path)
        return None
    box = grow(found, margin_steps(margin_m, metres or (1.0, 1.0)), geometry.shape)
    fill = raster_fill(image, valid, geometry)
    view = CutoutView(image, labels, valid, tuple(kept), box, fill)
    height, width = view.shape
    crop = RasterGeometry(height=height, width=width, count=image.shape[0], crs=geometry.crs,
                          transform=shifted_transform(geometry.transform, *box[0]), nodata=fill, dtype=view.dtype.name)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": image.shape[0], "dtype": view.dtype.name,
               "nodata": fill, "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
               "BIGTIFF": "IF_SAFER", **georeference(crop)}
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for rows, cols in block_slices((height, width), view.chunks):
            dst.write(view.values((rows, cols)), window=Window.from_slices(rows, cols))
    return {"path": str(path), "labels": list(kept), "start": list(box[0]), "shape": [height, width],
            "margin": margin_m, "margin_unit": "m" if metres else "pixels", "fill": fill}
