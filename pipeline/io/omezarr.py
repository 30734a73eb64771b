"""OME-Zarr (NGFF) copy of a scan/scene and its mask, so both open together in napari or neuroglancer.

Written with ``ome-zarr``'s writer from the work store's Zarr arrays as Dask arrays (streamed
chunk by chunk): the image at the root (a multiscale pyramid, every other pixel in y/x) and the mask as
``labels/prediction`` with the card's colours and names in its ``image-label`` metadata.

Axes: volumes are written ``z, y, x`` = NIfTI ``(k, j, i)`` (the NGFF recommended order), with
``scale`` = voxel sizes and ``translation`` = the world position of voxel (0, 0, 0), both from
the NIfTI affine. NGFF has no rotation or flip, so that is exact only for axis-aligned affines
with positive diagonals (RAS+ storage); for others the attributes carry the exact affine under
``volseg`` and a warning is logged. Rasters are written ``c, y, x`` with the pixel size as scale
and the upper-left corner as translation (rows run southwards for north-up scenes).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.cards import Label
from pipeline.geometry import RasterGeometry, VolumeGeometry
from pipeline.io.atomic import atomic_path
from pipeline.io.outputs import NODATA_LABEL

logger = logging.getLogger(__name__)

#: Stop the pyramid when the smaller of y/x would fall below this.
MIN_LEVEL_SIDE = 256


def volume_transform(geometry: VolumeGeometry) -> tuple[list[float], list[float], bool]:
    """NGFF ``(scale, translation)`` in ``z, y, x`` order for a NIfTI affine, and whether they are exact."""
    affine = geometry.affine_matrix
    linear = affine[:3, :3]
    zooms = np.sqrt((linear**2).sum(axis=0))  # voxel size per (i, j, k) column, in world units
    exact = bool(np.allclose(linear, np.diag(np.diag(linear)), atol=1e-6 * zooms.max()) and (np.diag(linear) > 0).all())
    scale = [float(v) for v in zooms[::-1]]
    translation = [float(v) for v in affine[:3, 3][::-1]]
    return scale, translation, exact


def raster_transform(geometry: RasterGeometry) -> tuple[list[float], list[float], bool]:
    """NGFF ``(scale, translation)`` in ``y, x`` order: pixel size and upper-left corner; exact if unrotated."""
    _, _, c, _, _, f = geometry.transform
    return list(geometry.pixel_size), [f, c], not geometry.is_rotated


def _levels(shape_yx: tuple[int, int]) -> int:
    """Extra pyramid levels (halving y and x) while the smaller side stays >= :data:`MIN_LEVEL_SIDE`."""
    levels, side = 0, min(shape_yx)
    while side // 2 >= MIN_LEVEL_SIDE and levels < 6:
        side //= 2
        levels += 1
    return levels


def _transforms(scale: list[float], translation: list[float], levels: int, leading: int) -> list[list[dict[str, Any]]]:
    """One ``[scale, translation]`` per pyramid level; y/x scale doubles per level, ``leading`` axes unscaled."""
    out = []
    for level in range(levels + 1):
        factor = [1.0] * leading + [1.0] * (len(scale) - 2) + [2.0**level] * 2
        base = [1.0] * leading + scale
        out.append([{"type": "scale", "scale": [s * f for s, f in zip(base, factor, strict=True)]},
                    {"type": "translation", "translation": [0.0] * leading + translation}])
    return out


def pyramid(array: Any, levels: int) -> list[Any]:
    """``array`` and ``levels`` halvings in y/x by taking every other pixel (nearest: labels stay labels;
    ome-zarr's own scaler interpolates linearly for Dask arrays, which would invent label values)."""
    out = [array]
    for _ in range(levels):
        out.append(out[-1][..., ::2, ::2])
    return out


def label_metadata(labels: Mapping[int, Label]) -> dict[str, Any]:
    """NGFF ``image-label`` colours and properties (names) for the card's labels."""
    entries = sorted(labels.items())
    return {"colors": [{"label-value": v, "rgba": [*label.color, 0 if v == 0 else 255]} for v, label in entries],
            "properties": [{"label-value": v, "name": label.name} for v, label in entries],
            "source": {"image": "../../"}}


def display_metadata(channels: int, window: tuple[float, float] | None) -> dict[str, Any]:
    """OMERO rendering settings: the intensity window viewers (napari-ome-zarr) start with, so a CT opens at
    the card's HU window instead of its dtype's range."""
    if window is None:
        return {}
    start, end = (float(v) for v in window)
    return {"omero": {"channels": [{"window": {"start": start, "end": end, "min": start, "max": end},
                                    "color": "FFFFFF", "active": True} for _ in range(channels)]}}


def write_ome_zarr(image: Any, mask: Any, geometry: VolumeGeometry | RasterGeometry, path: Path, *,
                   labels: Mapping[int, Label], valid: Any = None, window: tuple[float, float] | None = None) -> Path:
    """Write ``path`` (``.ome.zarr``): the image (work store ``(C, *spatial)``) and ``labels/prediction``.

    ``valid`` (rasters) marks nodata pixels, which become 255 in the labels. ``window`` (the card's
    intensity window) becomes the image's display window.
    """
    import dask.array as da
    import zarr
    from ome_zarr.writer import write_multiscale, write_multiscale_labels

    volume = isinstance(geometry, VolumeGeometry)
    img = da.from_zarr(image)
    lab = da.from_zarr(mask)
    if isinstance(geometry, VolumeGeometry):  # not ``if volume:``, which does not narrow the type for mypy
        img = img[0].transpose(2, 1, 0)  # (c, i, j, k) -> (z, y, x)
        lab = lab.transpose(2, 1, 0)
        scale, translation, exact = volume_transform(geometry)
        axes, label_axes, leading = ["z", "y", "x"], ["z", "y", "x"], 0
    else:
        if valid is not None:
            lab = da.where(da.from_zarr(valid), lab, NODATA_LABEL).astype(np.uint8)
        scale, translation, exact = raster_transform(geometry)
        axes, label_axes, leading = ["c", "y", "x"], ["y", "x"], 1
    if not exact:
        logger.warning("%s: the grid is rotated, sheared or flipped; OME-Zarr scale/translation give the voxel size "
                       "and origin only (the exact affine is in the 'volseg' attributes)", path)
    levels = _levels(tuple(lab.shape[-2:]))
    lab = lab.astype(np.uint8 if int(max(labels)) < 256 else np.uint16)
    with atomic_path(path) as tmp:
        root = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w")
        write_multiscale(pyramid(img, levels), root, axes=axes,
                         coordinate_transformations=_transforms(scale, translation, levels, leading),
                         storage_options={"chunks": img.chunksize},
                         metadata=display_metadata(1 if volume else int(img.shape[0]), window))
        write_multiscale_labels(pyramid(lab, levels), root, name="prediction", axes=label_axes,
                                coordinate_transformations=_transforms(scale, translation, levels, 0),
                                label_metadata=label_metadata(labels), storage_options={"chunks": lab.chunksize})
        root.attrs["volseg"] = {"geometry": geometry.to_attrs(), "exact_transform": exact}
    return path
