"""Vector edge: polygons of a label mask (GeoPackage or GeoJSON), and reference vectors rasterised.

Polygonising runs one Dask task per label chunk (rasterio's ``shapes``, 4-connected) in whole
scene pixel coordinates, so the pieces of one region cut by chunk borders meet exactly.
Pieces touching an internal chunk border are kept and unioned per class at the end (a
building split by a border comes out as one polygon); every other polygon is written as soon
as its task ends, so memory holds only border pieces. Class 0 (background) is not
polygonised, and neither are nodata pixels. Each feature has ``label``, ``name`` and ``area``
(map units squared); coordinates are in the scene's CRS (pixel coordinates without one).

Reference vectors (any OGR format, e.g. ``.geojson``, ``.gpkg``) are read once, reprojected to
the scene's CRS and rasterised window by window (``all_touched=False``). The label of a
feature is its integer ``label`` field, else its ``class`` field matched to the card's label
names, else 1 for a two-label model (every feature is the foreground class).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import zarr

from pipeline.config.cards import Label
from pipeline.config.choices import VECTOR_SUFFIXES
from pipeline.errors import GridMismatchError, InputError, InputNotFoundError, OutputError, first_line
from pipeline.files import require_regular_file
from pipeline.geometry import RasterGeometry, same_crs

logger = logging.getLogger(__name__)

#: (label, geometry) of one polygon.
Piece = tuple[int, Any]
Writer = Callable[[list[Piece]], None]
FIELDS = ("label", "name", "area")


def _to_map(geometries: Any, transform: Sequence[float]) -> Any:
    """Pixel (col, row) coordinates -> map coordinates through a rasterio-order transform."""
    a, b, c, d, e, f = transform
    return shapely.transform(geometries, lambda xy: xy @ np.array([[a, d], [b, e]]) + np.array([c, f]))


def polygonize_window(store: str, rows: slice, cols: slice,
                      geometry: RasterGeometry) -> tuple[list[Piece], list[Piece]]:
    """Dask task: polygons of the non-background, valid pixels in one chunk.

    Returns (finished polygons in map coordinates, pieces touching an internal chunk border
    in pixel coordinates, to be merged).
    """
    from rasterio.features import shapes
    from rasterio.transform import Affine

    labels = np.asarray(zarr.open_array(zarr.storage.LocalStore(store), path="labels", mode="r")[rows, cols])
    valid = np.asarray(zarr.open_array(zarr.storage.LocalStore(store), path="valid", mode="r")[rows, cols])
    keep = valid & (labels != 0)
    inner = (cols.start if cols.start > 0 else None, rows.start if rows.start > 0 else None,
             cols.stop if cols.stop < geometry.width else None, rows.stop if rows.stop < geometry.height else None)
    done: list[Piece] = []
    border: list[Piece] = []
    for ring, value in shapes(labels, mask=keep, connectivity=4, transform=Affine.translation(cols.start, rows.start)):
        polygon = shapely.geometry.shape(ring)
        touches = any(edge is not None and edge == bound for edge, bound in zip(inner, polygon.bounds, strict=True))
        (border if touches else done).append((int(value), polygon))
    return [(value, _to_map(polygon, geometry.transform)) for value, polygon in done], border


def merge_border(pieces: Sequence[Piece], transform: Sequence[float]) -> list[Piece]:
    """Union same-class pieces that meet across chunk borders; map-coordinate polygons out.

    Exact: pieces are in whole-pixel coordinates. Vertices left on former borders are dropped.
    """
    by_label: dict[int, list[Any]] = defaultdict(list)
    for value, polygon in pieces:
        by_label[value].append(polygon)
    merged: list[Piece] = []
    for value in sorted(by_label):
        union = shapely.simplify(shapely.union_all(by_label[value]), 0)
        merged.extend((value, _to_map(part, transform)) for part in shapely.get_parts(union))
    return merged


def _columns(pieces: list[Piece], names: dict[int, Label]) -> tuple[np.ndarray, list[np.ndarray]]:
    geometries = np.array([polygon for _, polygon in pieces], dtype=object)
    values = np.array([value for value, _ in pieces], dtype=np.int32)
    labels = np.array([names[int(v)].name if int(v) in names else f"label_{v}" for v in values], dtype=object)
    return geometries, [values, labels, shapely.area(geometries).astype(np.float64)]


@contextlib.contextmanager
def _gpkg_writer(path: Path, crs: str | None, names: dict[int, Label]) -> Iterator[Writer]:
    import pyogrio.raw

    def write(pieces: list[Piece], *, append: bool = True) -> None:
        geometries, data = _columns(pieces, names)
        pyogrio.raw.write(path, geometry=shapely.to_wkb(geometries), field_data=data, fields=list(FIELDS), crs=crs,
                          driver="GPKG", geometry_type="Polygon", layer=path.stem, append=append)

    write([], append=False)  # the layer exists even when no polygon follows
    yield write


@contextlib.contextmanager
def _geojson_writer(path: Path, crs: str | None, names: dict[int, Label]) -> Iterator[Writer]:
    """Streams features as they come (GDAL's GeoJSON writer keeps them all in memory)."""
    header: dict[str, Any] = {"type": "FeatureCollection", "name": path.stem}
    member = _crs_member(crs) if crs is not None else None
    if member is not None:
        header["crs"] = member
    separator = [""]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(header)[:-1] + ', "features": [\n')

        def write(pieces: list[Piece]) -> None:
            geometries, (values, labels, areas) = _columns(pieces, names)
            for geometry, value, label, area in zip(geometries, values, labels, areas, strict=True):
                feature = {"type": "Feature", "properties": {"label": int(value), "name": label, "area": float(area)},
                           "geometry": json.loads(shapely.to_geojson(geometry))}
                fh.write(separator[0] + json.dumps(feature))
                separator[0] = ",\n"

        yield write
        fh.write("\n]}\n")


def _crs_member(crs: str) -> dict[str, Any] | None:
    from rasterio.crs import CRS

    authority = CRS.from_user_input(crs).to_authority()
    if authority is None:
        logger.warning("GeoJSON cannot name this CRS (no authority code); the file has no CRS: write .gpkg instead")
        return None
    return {"type": "name", "properties": {"name": f"urn:ogc:def:crs:{authority[0]}::{authority[1]}"}}


#: Vector output formats by file suffix (the suffixes: :data:`pipeline.config.choices.VECTOR_SUFFIXES`).
VECTOR_FORMATS: dict[str, Callable[[Path, str | None, dict[int, Label]], contextlib.AbstractContextManager[Writer]]] = (
    dict(zip(VECTOR_SUFFIXES, (_gpkg_writer, _geojson_writer), strict=True)))


def check_vector_output(path: Path) -> None:
    """Refuse a vector output whose suffix names no format we write."""
    if path.suffix.lower() not in VECTOR_FORMATS:
        raise OutputError(f"{path}: unknown vector format {path.suffix!r} (choices: {', '.join(VECTOR_FORMATS)})")


@dataclass(frozen=True)
class ReferenceShapes:
    """Reference polygons in the scene's CRS, with their labels and a spatial index."""

    path: Path
    geometries: np.ndarray
    values: np.ndarray
    tree: Any

    def rasterize(self, rows: slice, cols: slice, geometry: RasterGeometry) -> tuple[np.ndarray, np.ndarray]:
        """Reference labels (int64) of one window, and its validity (everywhere)."""
        from rasterio.features import rasterize
        from rasterio.transform import Affine

        shape = (rows.stop - rows.start, cols.stop - cols.start)
        corners = shapely.multipoints([(cols.start, rows.start), (cols.stop, rows.start), (cols.start, rows.stop),
                                       (cols.stop, rows.stop)])
        hits = np.sort(self.tree.query(shapely.envelope(_to_map(corners, geometry.transform))))
        transform = Affine(*geometry.transform) @ Affine.translation(cols.start, rows.start)
        burnt = np.zeros(shape, dtype=np.int64)
        if hits.size:
            pairs = zip(self.geometries[hits], self.values[hits].tolist(), strict=True)
            burnt = rasterize(pairs, out_shape=shape, transform=transform, fill=0, dtype="int32").astype(np.int64)
        return burnt, np.ones(shape, dtype=bool)


def read_reference_vectors(path: str | os.PathLike[str], geometry: RasterGeometry,
                           labels: dict[int, Label]) -> ReferenceShapes:
    """Read reference polygons, give each a label, and bring them into the scene's CRS.

    Raises
    ------
    InputNotFoundError, InputError
        Missing or unreadable file, labels the model cannot predict.
    GridMismatchError
        The vectors have a CRS but the scene has none.
    """
    import pyogrio.raw

    path = Path(path)
    require_regular_file(path, "file", InputError, missing=InputNotFoundError)
    try:
        meta, _, wkb, fields = pyogrio.raw.read(path)
    except (RuntimeError, ValueError, OSError) as e:
        reason = first_line(e)
        raise InputError(f"{path}: not readable vectors ({reason})") from e
    geometries = shapely.from_wkb(wkb)
    keep = ~shapely.is_missing(geometries) & ~shapely.is_empty(geometries)
    columns = {str(name): values[keep] for name, values in zip(meta["fields"], fields, strict=True)}
    values = _reference_labels(path, columns, int(keep.sum()), labels)
    moved = _reproject(path, geometries[keep], meta["crs"], geometry)
    return ReferenceShapes(path=path, geometries=moved, values=values, tree=shapely.STRtree(moved))


def _reference_labels(path: Path, columns: dict[str, np.ndarray], count: int, labels: dict[int, Label]) -> np.ndarray:
    if "label" in columns:
        values = columns["label"].astype(np.int64)
    elif "class" in columns:
        ids = {label.name: value for value, label in labels.items()}
        unknown = sorted({str(v) for v in columns["class"]} - set(ids))
        if unknown:
            raise InputError(f"{path}: class {unknown[0]!r} is not one of the model's labels ({', '.join(ids)})")
        values = np.array([ids[str(v)] for v in columns["class"]], dtype=np.int64)
    elif len(labels) == 2:
        logger.info("%s: no 'label' or 'class' field; every feature is %r", path, labels[1].name)
        values = np.ones(count, dtype=np.int64)
    else:
        raise InputError(f"{path}: features need an integer 'label' or a 'class' name field "
                         f"for a model with {len(labels)} labels")
    bad = values[(values < 0) | (values >= len(labels))]
    if bad.size:
        raise InputError(f"{path}: reference has label {int(bad[0])}, "
                         f"but the model only predicts 0..{len(labels) - 1}")
    return values


def _reproject(path: Path, geometries: np.ndarray, crs: str | None, geometry: RasterGeometry) -> np.ndarray:
    if crs is None:
        if geometry.crs is not None:
            logger.warning("%s: vectors have no CRS; taking them to be in the scene's CRS", path)
        return geometries
    if geometry.crs is None:
        raise GridMismatchError(f"{path}: vectors are in {crs} but the scene has no CRS; they cannot be placed on it")
    if same_crs(crs, geometry.crs) or not geometries.size:
        return geometries
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom

    logger.info("%s: reprojecting %d reference features from %s to the scene's CRS", path, geometries.size, crs)
    moved = transform_geom(crs, CRS.from_user_input(geometry.crs), [shapely.geometry.mapping(g) for g in geometries])
    return np.array([shapely.geometry.shape(g) for g in moved], dtype=object)
