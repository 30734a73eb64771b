"""The GeoTIFF raster domain and ``segment_raster``: scene -> work store -> Dask + MONAI -> COG mask (+ vectors).

An adapter for :mod:`pipeline.segment.driver` (protocol: :mod:`pipeline.segment.domain`): it opens and
validates the scene, selects the model's bands, tiles them and their validity into the work store,
reads a reference mask or reference vectors window by window, writes a COG on the scene's exact grid
(nodata pixels are :data:`~pipeline.io.outputs.NODATA_LABEL`), optionally polygons, and describes the
scene in the report (pixels, map units, hectares). Counts leave nodata pixels out.

Georeference is passed through, never invented: a scene without a CRS gives a mask without
one (and a logged warning), a rotated or sheared transform is copied term for term, and a
scene placed only by GCPs/RPCs is refused.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.errors import CardError, InputError
from pipeline.evaluate.instances import raster_instances
from pipeline.evaluate.metrics import Scores, confusion
from pipeline.geometry import RasterGeometry, crs_name, map_unit, metres_per_unit
from pipeline.io.geotiff import (
    Raster,
    open_raster,
    open_reference,
    publish,
    raster_chunks,
    read_labels,
    read_windows,
    select_bands,
    write_mask,
)
from pipeline.io.outputs import NODATA_LABEL, Output, default_raster_output, raster_outputs, vector_reads
from pipeline.io.store import WorkStore, store_root, work_array
from pipeline.io.vectors import read_reference_vectors
from pipeline.model.models import Model
from pipeline.report.tables import label_rows
from pipeline.segment.domain import PlanInputs
from pipeline.segment.driver import PathArg, segment
from pipeline.segment.options import RunSettings, SegmentOptions, resolve_options
from pipeline.segment.result import SegmentationResult
from pipeline.tiling.polygons import write_vectors
from pipeline.tiling.raster import tile_to_store

logger = logging.getLogger(__name__)

DEFAULT_RASTER_MODEL = "buildings"
#: Suffixes read as reference vectors; anything else is read as a reference mask raster.
REFERENCE_VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb")

#: Bytes per pixel budgeted when streaming label windows (int64 copies, float64 reads, masks).
LABEL_READ_BYTES = 32

#: ``(rows, cols) -> (labels, valid)`` of a reference, window by window.
Truth = Callable[[slice, slice], tuple[np.ndarray, np.ndarray]]


def open_truth(reference: PathArg, geometry: RasterGeometry, model: Model) -> Truth:
    """A window reader for a reference mask raster or reference vectors, checked before any work.

    Raises
    ------
    GridMismatchError
        A mask on another grid (size, transform, CRS), or vectors with a CRS for a scene without one.
    InputError
        Unreadable, or labels the model cannot predict.
    """
    if Path(reference).suffix.lower() in REFERENCE_VECTOR_SUFFIXES:
        shapes = read_reference_vectors(reference, geometry, model.labels)
        return functools.partial(shapes.rasterize, geometry=geometry)
    ref = open_reference(reference, geometry)
    n_labels = model.card.out_channels
    for rows, cols in read_windows(geometry.shape, (512, 512), LABEL_READ_BYTES):
        values, valid = read_labels(ref.path, rows, cols)
        if valid.any() and values[valid].max() >= n_labels:
            raise InputError(f"{ref.path}: reference has label {int(values[valid].max())} (rows {rows.start}.."
                             f"{rows.stop - 1}), but the model only predicts 0..{n_labels - 1}")
    return functools.partial(read_labels, ref.path)


def _polygons(work: WorkStore, options: SegmentOptions) -> Path | None:
    """Where the polygons are written inside the work store before they are published."""
    return work.path / f"vectors{Path(options.vectors).suffix.lower()}" if options.vectors else None


@dataclass
class RasterSource:
    """One opened raster scene (metadata read and checked; no pixel read yet)."""

    raster: Raster
    bands: tuple[int, ...] = field(default=())  #: the selected 1-based bands, set by :meth:`bind`

    @property
    def path(self) -> Path:
        return self.raster.path

    @property
    def geometry(self) -> RasterGeometry:
        return self.raster.geometry

    def bind(self, model: Model, options: SegmentOptions) -> None:
        if model.card.spatial_dims != 2:
            raise CardError(f"model {model.name!r} is {model.card.spatial_dims}D; segment-raster needs a 2D model")
        if model.card.out_channels > NODATA_LABEL:
            raise CardError(f"model {model.name!r} has {model.card.out_channels} labels; a raster mask holds at most "
                            f"{NODATA_LABEL} ({NODATA_LABEL} marks nodata)")
        wanted = options.bands if options.bands is not None else model.card.bands
        self.bands = select_bands(self.raster, wanted, model.card.in_channels, model=model.name)
        logger.debug("%s: model %s on bands %s", self.path, model.name, ",".join(map(str, self.bands)))

    def default_output(self) -> Path:
        return default_raster_output(self.path)

    def outputs(self, mask: Path, options: SegmentOptions, *, instances: bool) -> list[Output]:
        return raster_outputs(mask, html=options.html, ome_zarr=options.ome_zarr, instances=instances,
                              vectors=Path(options.vectors) if options.vectors else None)

    def reads(self, reference: PathArg | None) -> list[Any]:
        return [self.path, *(vector_reads(Path(reference)) if reference else ())]

    def plan_inputs(self) -> PlanInputs:
        return PlanInputs(in_channels=len(self.bands), itemsize=np.dtype(self.geometry.dtype).itemsize,
                          valid_mask=True)

    def open_reference(self, reference: PathArg, model: Model) -> Any:
        return open_truth(reference, self.geometry, model)

    def fingerprint(self) -> dict[str, Any]:
        return {"bands": list(self.bands)}

    def source_attrs(self) -> dict[str, Any]:
        return {"bands": list(self.bands)}

    def tile_chunks(self, default: tuple[int, ...]) -> tuple[int, ...]:
        return raster_chunks(self.geometry, default)

    def tile(self, group: zarr.Group, chunks: tuple[int, ...], attributes: dict[str, Any],
             client: Any) -> tuple[zarr.Array, zarr.Array | None, int | None]:
        image, valid, n_valid = tile_to_store(self.raster, self.bands, group, chunks, client=client,
                                              attributes=attributes)
        return image, valid, n_valid

    def extras(self, work: WorkStore, model: Model, client: Any, options: SegmentOptions) -> dict[str, Any]:
        polygons = _polygons(work, options)
        if polygons is None:
            return {"features": None}
        block = tuple(work_array(work.group, "image").chunks[1:])
        return {"features": write_vectors(store_root(work.group), self.geometry, block, polygons,
                                          names=model.labels, client=client)}

    def find_instances(self, group: zarr.Group, classes: list[str], model: Model, mask: Path,
                       client: Any) -> dict[str, Any]:
        return raster_instances(group, classes, model.labels, self.geometry, mask, client=client,
                                metres=metres_per_unit(self.geometry))

    def write(self, labels: zarr.Array, valid: zarr.Array | None, model: Model, mask: Path, work: WorkStore,
              options: SegmentOptions) -> None:
        assert valid is not None, "a tiled raster always has its validity"
        write_mask(labels, valid, self.geometry, mask, names=model.labels, work_dir=work.path)
        polygons = _polygons(work, options)
        if polygons is not None and options.vectors:
            publish(polygons, Path(options.vectors))

    def confusion(self, labels: zarr.Array, valid: zarr.Array | None, n_labels: int, reference: Any) -> np.ndarray:
        """(reference, prediction) counts over valid pixels, chunk by chunk; reference 0 without one."""
        total = np.zeros((n_labels, n_labels), dtype=np.int64)
        for rows, cols in read_windows(labels.shape, labels.chunks, LABEL_READ_BYTES):
            predicted = np.asarray(labels[rows, cols])
            keep = np.asarray(valid[rows, cols]) if valid is not None else np.ones(predicted.shape, bool)
            truth = np.zeros(predicted.shape, dtype=np.int64)
            if reference is not None:
                truth, ref_valid = reference(rows, cols)
                keep &= ref_valid
            total += confusion(truth, predicted, n_labels, valid=keep)
        return total

    def report_input(self, sha256: str, valid_pixels: int | None) -> dict[str, Any]:
        geometry = self.geometry
        n_valid = geometry.height * geometry.width if valid_pixels is None else valid_pixels
        return {"path": str(self.path), "sha256": sha256, "height": geometry.height, "width": geometry.width,
                "count": geometry.count, "bands": list(self.bands), "dtype": geometry.dtype,
                "crs": crs_name(geometry.crs), "transform": list(geometry.transform),
                "nodata": geometry.to_attrs()["nodata"],
                "valid_pixels": n_valid, "nodata_pixels": geometry.height * geometry.width - n_valid}

    def report_extras(self, options: SegmentOptions, facts: dict[str, Any]) -> dict[str, Any]:
        return {"vectors": str(options.vectors) if options.vectors else None, "features": facts.get("features"),
                "pixel_area": self.geometry.pixel_area, "area_unit": f"{map_unit(self.geometry)}^2"}

    def label_rows(self, measured: Scores, model: Model, *, has_reference: bool) -> list[dict[str, Any]]:
        rows = label_rows(measured, model.labels, self.geometry.pixel_area, has_reference=has_reference,
                          count_key="pixels", size_key="area")
        metres = metres_per_unit(self.geometry)
        for row in rows:
            row["area_ha"] = round(row["area"] * metres**2 / 1e4, 6) if metres else None
        return rows


@dataclass(frozen=True)
class RasterDomain:
    """Rasters GDAL reads (GeoTIFF, COG, VRT), segmented by a 2D model on selected bands."""

    name: str = "raster"
    default_model: str | None = DEFAULT_RASTER_MODEL
    options: frozenset[str] = frozenset({"bands", "vectors"})

    def open(self, path: PathArg) -> RasterSource:
        return RasterSource(open_raster(path))


RASTER = RasterDomain()


def segment_raster(scene: PathArg, *, model: PathArg | Model | None = None, output: PathArg | None = None,
                   reference: PathArg | None = None, options: SegmentOptions | None = None,
                   runtime: RunSettings | None = None, **keywords: Any) -> SegmentationResult:
    """Segment a raster scene into a class mask on exactly its pixel grid, with a report.

    Parameters
    ----------
    scene : a raster GDAL reads (GeoTIFF, COG, VRT); never modified.
    model : a card name, a card path, a loaded 2D :class:`Model`, or None for ``buildings``.
    output : mask path (.tif); default ``<scene>_seg.tif`` beside the scene. The report goes beside
        it as ``<mask>.report.json`` and ``.csv``.
    reference : a label mask on the scene's grid, or reference vectors (``.geojson``, ``.gpkg``...),
        for per-class Dice/IoU.
    options : what to write (:class:`SegmentOptions`): as for volumes, plus ``bands`` (1-based, in model
        order; default the card's, else every band) and ``vectors`` (polygons per non-background class,
        ``.gpkg`` or ``.geojson``); ``probabilities`` is refused. ``chunks`` are (rows, cols); the Zarr
        tiling of the scene is rounded to the file's own tiles either way.
    runtime : where to run (:class:`RunSettings`), as for :func:`pipeline.segment.segment_volume`.
    **keywords : any field of ``options`` or ``runtime`` by name, applied over them.

    Raises
    ------
    InputError, GridMismatchError, CardError, ModelError, SettingsError, OutputExistsError, OutputError
    """
    ours, run = resolve_options(options, runtime, keywords)
    return segment(scene, RASTER, model=model, output=output, reference=reference, options=ours, runtime=run)
