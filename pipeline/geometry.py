"""Geometry values that travel with arrays: immutable, JSON-serialisable, no I/O.

Axis order for volumes is the NIfTI array order ``(i, j, k)`` as stored on disk;
we never reorient the volume, so a mask lands on exactly the voxels of its scan (the network's
view is aligned per window instead: :mod:`pipeline.engine.alignment`).
``VolumeGeometry`` keeps the raw NIfTI header fields that define space
(quaternion, srows, codes, pixdim, units) so a written mask has a bit-identical
geometry, not one recomputed through float64 matrices.

Rasters use rasterio's ``(band, row, col)`` order; ``RasterGeometry`` keeps the
CRS (WKT) and the 6-term transform exactly as read, so a mask written from it
sits on its scene's pixel grid, rotated or not, georeferenced or not.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import InputError

#: NIfTI ``xyzt_units & 7`` code -> size of one unit in millimetres.
_SPATIAL_UNIT_MM = {0: 1.0, 1: 1000.0, 2: 1.0, 3: 0.001}


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, dtype=np.float64).ravel())


@dataclass(frozen=True, slots=True, kw_only=True)
class VolumeGeometry:
    """Where the voxels of a NIfTI volume sit in scanner space.

    Attributes
    ----------
    shape : spatial shape (3 ints), NIfTI array order.
    affine : the 4x4 voxel-to-world (RAS+, mm) matrix nibabel reports, row-major.
    zooms : voxel size per axis, in ``spatial_unit``.
    qform_code, sform_code : NIfTI codes (0 = unknown, 1 = scanner, 2 = aligned ...).
    quatern, qoffset, qfac : raw qform parameters (float32 values as stored).
    srow : raw sform rows (3 x 4, float32 values as stored).
    xyzt_units : raw NIfTI units byte.
    nifti_version : 1 or 2; masks are written in the same version.
    """

    shape: tuple[int, ...]
    affine: tuple[float, ...]
    zooms: tuple[float, ...]
    qform_code: int = 0
    sform_code: int = 0
    quatern: tuple[float, ...] = (0.0, 0.0, 0.0)
    qoffset: tuple[float, ...] = (0.0, 0.0, 0.0)
    qfac: float = 1.0
    srow: tuple[float, ...] = (1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 1.0, 0)
    xyzt_units: int = 2
    nifti_version: int = 1

    @property
    def affine_matrix(self) -> np.ndarray:
        """The affine as a float64 (4, 4) array."""
        return np.asarray(self.affine, dtype=np.float64).reshape(4, 4)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (unknown units are taken as mm)."""
        unit_mm = _SPATIAL_UNIT_MM.get(self.xyzt_units & 7, 1.0)
        return math.prod(z * unit_mm for z in self.zooms[:3]) / 1000.0

    def same_grid(self, other: VolumeGeometry, *, atol: float = 1e-4) -> bool:
        """True when both volumes have the same shape and affine (within ``atol`` mm)."""
        return self.shape == other.shape and bool(
            np.allclose(self.affine_matrix, other.affine_matrix, atol=atol, rtol=0)
        )

    def to_attrs(self) -> dict[str, Any]:
        """Plain JSON for Zarr attributes."""
        return {"kind": "volume", **dataclasses.asdict(self)}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> VolumeGeometry:
        """Inverse of :meth:`to_attrs`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in attrs.items() if k in fields}
        return cls(**values)

    @classmethod
    def from_header(cls, header: Any, shape: tuple[int, ...], affine: np.ndarray) -> VolumeGeometry:
        """Capture the spatial fields of a nibabel NIfTI-1/2 header."""
        version = 2 if header.__class__.__name__.startswith("Nifti2") else 1
        return cls(
            shape=tuple(int(s) for s in shape),
            affine=_floats(affine),
            zooms=_floats(header.get_zooms()[: len(shape)]),
            qform_code=int(header["qform_code"]),
            sform_code=int(header["sform_code"]),
            quatern=_floats([header["quatern_b"], header["quatern_c"], header["quatern_d"]]),
            qoffset=_floats([header["qoffset_x"], header["qoffset_y"], header["qoffset_z"]]),
            qfac=float(header["pixdim"][0]),
            srow=_floats([header["srow_x"], header["srow_y"], header["srow_z"]]),
            xyzt_units=int(header["xyzt_units"]),
            nifti_version=version,
        )

    def apply_to_header(self, header: Any) -> None:
        """Write these spatial fields into a nibabel header, bit for bit."""
        header.set_data_shape(self.shape)
        pixdim = np.array(header["pixdim"], dtype=np.float64)
        pixdim[0] = self.qfac
        pixdim[1 : 1 + len(self.zooms)] = self.zooms
        header["pixdim"] = pixdim
        header["qform_code"] = self.qform_code
        header["sform_code"] = self.sform_code
        header["quatern_b"], header["quatern_c"], header["quatern_d"] = self.quatern
        header["qoffset_x"], header["qoffset_y"], header["qoffset_z"] = self.qoffset
        srow = np.asarray(self.srow).reshape(3, 4)
        header["srow_x"], header["srow_y"], header["srow_z"] = srow[0], srow[1], srow[2]
        header["xyzt_units"] = self.xyzt_units


#: The transform of a raster without georeference (GDAL's default): pixel coordinates.
IDENTITY_TRANSFORM = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _encode_nodata(value: float | None) -> float | str | None:
    """NaN and infinities as the strings Zarr v3 uses, so attributes stay strict JSON."""
    if value is None or math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _decode_nodata(value: float | str | None) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class RasterGeometry:
    """Where the pixels of a raster sit on the map, and what its bands hold.

    Equality and hashing go through :meth:`to_attrs`, so a NaN ``nodata`` equals itself.
    Building one checks it (sizes >= 1, 6 finite terms, invertible transform) and raises
    :class:`~pipeline.errors.InputError` otherwise.

    Attributes
    ----------
    height, width : rows and columns (>= 1).
    count : bands in the file (>= 1).
    crs : the CRS as WKT, exactly as the file's reader reports it; None when the raster has none.
    transform : affine terms ``(a, b, c, d, e, f)`` (rasterio's ``Affine`` order) taking the
        upper-left corner of pixel (col, row) to map coordinates: ``x = a*col + b*row + c``,
        ``y = d*col + e*row + f``. ``b`` or ``d`` non-zero means a rotated or sheared grid.
    nodata : the nodata value (NaN allowed), or None.
    dtype : NumPy name of the bands' data type.
    descriptions : one band description per band, None where unset.
    block_size : the file's internal block as (rows, cols); a striped file has cols == width.
    """

    height: int
    width: int
    count: int = 1
    crs: str | None = None
    transform: tuple[float, ...] = IDENTITY_TRANSFORM
    nodata: float | None = None
    dtype: str = "uint8"
    descriptions: tuple[str | None, ...] = ()
    block_size: tuple[int, int] = (256, 256)

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1 or self.count < 1:
            raise InputError(f"height, width and count must be >= 1, got {self.height}, {self.width}, {self.count}")
        transform = _floats(self.transform)
        if len(transform) != 6 or not all(math.isfinite(t) for t in transform):
            raise InputError(f"transform must be 6 finite numbers, got {self.transform}")
        if transform[0] * transform[4] - transform[1] * transform[3] == 0:
            raise InputError(f"transform {transform} is not invertible (zero pixel area)")
        descriptions = tuple(self.descriptions) or (None,) * self.count
        if len(descriptions) != self.count:
            raise InputError(f"descriptions must have one entry per band ({self.count}), got {len(descriptions)}")
        object.__setattr__(self, "transform", transform)
        object.__setattr__(self, "nodata", None if self.nodata is None else float(self.nodata))
        object.__setattr__(self, "descriptions", descriptions)
        object.__setattr__(self, "block_size", tuple(int(b) for b in self.block_size))

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return self.height, self.width

    @property
    def pixel_size(self) -> tuple[float, float]:
        """Pixel size (along rows, along columns) in map units; right for rotated grids too."""
        a, b, _, d, e, _ = self.transform
        return math.hypot(b, e), math.hypot(a, d)

    @property
    def pixel_area(self) -> float:
        """Area of one pixel in map units squared (|det| of the transform; 1 for pixel coordinates)."""
        a, b, _, d, e, _ = self.transform
        return abs(a * e - b * d)

    @property
    def is_rotated(self) -> bool:
        """True when the grid is rotated or sheared against the map axes."""
        return self.transform[1] != 0 or self.transform[3] != 0

    @property
    def is_georeferenced(self) -> bool:
        """False for a raster with neither a CRS nor a transform: its coordinates are pixels."""
        return self.crs is not None or self.transform != IDENTITY_TRANSFORM

    def same_grid(self, other: RasterGeometry, *, atol: float = 1e-6) -> bool:
        """True when both rasters have the same size, transform (within ``atol`` pixels) and CRS.

        CRS texts that differ are compared as CRSs (rasterio), so two spellings of EPSG:32616 match.
        """
        if self.shape != other.shape:
            return False
        pixel = max(abs(t) for t in self.transform[:2] + self.transform[3:5])
        if any(abs(p - q) > atol * pixel for p, q in zip(self.transform, other.transform, strict=True)):
            return False
        return same_crs(self.crs, other.crs)

    def to_attrs(self) -> dict[str, Any]:
        """Plain, strict JSON for Zarr attributes (NaN nodata is written ``"NaN"``)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.update(transform=list(self.transform), descriptions=list(self.descriptions),
                      block_size=list(self.block_size), nodata=_encode_nodata(self.nodata))
        return {"kind": "raster", **values}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> RasterGeometry:
        """Inverse of :meth:`to_attrs`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in attrs.items() if k in fields}
        values["nodata"] = _decode_nodata(attrs.get("nodata"))
        return cls(**values)

    def _key(self) -> str:
        return json.dumps(self.to_attrs(), sort_keys=True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RasterGeometry) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def same_crs(a: str | None, b: str | None) -> bool:
    """Two CRSs (WKT, PROJ or ``EPSG:n`` text, or None for none) are the same CRS."""
    if a == b:
        return True
    if a is None or b is None:
        return False
    from rasterio.crs import CRS

    return bool(CRS.from_user_input(a) == CRS.from_user_input(b))


def block_slices(shape: Sequence[int], chunks: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    """The regular chunk grid of an array, as one tuple of slices per chunk (C order; edges clipped)."""
    axes = [[slice(start, min(start + c, n)) for start in range(0, n, c)] for n, c in zip(shape, chunks, strict=True)]
    return itertools.product(*axes)


# ------------------------------------------------------------------ CRS arithmetic (pure, no file)

def crs_name(crs: str | None) -> str:
    """A short name for a CRS: ``EPSG:32616`` when it has a code, else its name; ``none`` for none."""
    if crs is None:
        return "none"
    from rasterio.crs import CRS

    if CRS.from_user_input(crs).to_epsg():
        return str(CRS.from_user_input(crs).to_string())
    return crs.split('"')[1] if '"' in crs else crs[:40]  # a WKT's first quoted string is its name


def map_unit(geometry: RasterGeometry) -> str:
    """Name of the unit of map coordinates: the CRS's (``metre``, ``degree``...), ``pixel`` or ``unknown``."""
    if geometry.crs is None:
        return "unknown" if geometry.is_georeferenced else "pixel"
    from rasterio.crs import CRS

    return str(CRS.from_user_input(geometry.crs).units_factor[0])


def metres_per_unit(geometry: RasterGeometry) -> float | None:
    """Metres in one map unit of a projected CRS; None without a CRS or for degrees."""
    if geometry.crs is None:
        return None
    from rasterio.crs import CRS

    parsed = CRS.from_user_input(geometry.crs)
    return float(parsed.linear_units_factor[1]) if parsed.is_projected else None


#: Mean Earth radius (m): haversine distances between neighbouring pixel centres are exact to well
#: under 1%, ample for deciding whether a model's ground sampling distance fits (which allows 5%).
EARTH_RADIUS_M = 6_371_008.8


def pixel_size_m(geometry: RasterGeometry) -> tuple[float, float] | None:
    """Ground size (m) of a pixel at the scene's centre, (along rows, along columns): the distance on
    the Earth between neighbouring pixel centres, so degrees and Web-Mercator's stretched metres come
    out as true ground sizes. None without a CRS (pixel coordinates say nothing about the ground)."""
    if geometry.crs is None:
        return None
    from rasterio.crs import CRS
    from rasterio.transform import Affine
    from rasterio.warp import transform as reproject_points

    row, col = geometry.height / 2, geometry.width / 2
    to_map = Affine(*geometry.transform)
    points = [to_map * (col, row), to_map * (col, row + 1), to_map * (col + 1, row)]
    try:
        lons, lats = reproject_points(CRS.from_user_input(geometry.crs), CRS.from_epsg(4326),
                                      [x for x, _ in points], [y for _, y in points])
    except Exception:  # a CRS without a path to WGS 84 (engineering, planetary): trust its units
        factor = metres_per_unit(geometry)
        return None if factor is None else (geometry.pixel_size[0] * factor, geometry.pixel_size[1] * factor)
    return (_haversine(lons[0], lats[0], lons[1], lats[1]), _haversine(lons[0], lats[0], lons[2], lats[2]))


def _haversine(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))
