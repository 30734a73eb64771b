"""``segment_raster``: GeoTIFF scene -> Zarr work store -> Dask + MONAI -> COG mask (+ vectors) + report.

The geospatial front end of the engine, twin of :mod:`pipeline.segment`: validate, tile the
selected bands into the work store, hand it to :func:`pipeline.infer.run_inference` (the same
code as for volumes), stream the mask out as a COG on the scene's exact grid, and score it
chunk by chunk with nodata pixels left out.

Georeference is passed through, never invented: a scene without a CRS gives a mask without
one (and a logged warning), a rotated or sheared transform is copied term for term, and a
scene placed only by GCPs/RPCs is refused. Nodata pixels are 255 in the mask.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.cluster import ClusterSettings, worker_peak_rss
from pipeline.engine.api import default_chunks
from pipeline.engine.windows import parse_overlap
from pipeline.errors import CardError, InputError, OutputError
from pipeline.geometry import RasterGeometry
from pipeline.hashing import sha256_file
from pipeline.infer import InferenceResult, engine_fingerprint, preload_model, run_inference
from pipeline.instances import check_instances, parse_classes, raster_instances
from pipeline.io.geotiff import (
    NODATA_LABEL,
    Raster,
    crs_name,
    map_unit,
    metres_per_unit,
    open_raster,
    open_reference,
    publish,
    raster_chunks,
    read_labels,
    read_windows,
    select_bands,
    tile_to_store,
    write_mask,
)
from pipeline.io.store import WorkStore, create_array, work_store
from pipeline.io.vectors import read_reference_vectors, write_vectors
from pipeline.mask_options import apply_labels, extra_outputs, finish_report, scored_matrix, write_cutout
from pipeline.mask_options import resolve as resolve_mask_options
from pipeline.metrics import Scores, confusion, scores
from pipeline.models import Model, load_model
from pipeline.outputs import (
    check_outputs,
    created_parents,
    default_raster_output,
    model_reads,
    raster_outputs,
    report_json_path,
    vector_reads,
)
from pipeline.plan_estimate import clip_chunks, estimate_plan
from pipeline.report import label_rows, write_report
from pipeline.segment import (
    SegmentationResult,
    local_processes,
    aligned_windows,
    check_capacity,
    client_scope,
    planned_workers,
    run_facts,
)
from pipeline.sidecars import write_sidecars
from pipeline.stages import Stages

logger = logging.getLogger(__name__)

DEFAULT_RASTER_MODEL = "buildings"
#: Suffixes read as reference vectors; anything else is read as a reference mask raster.
VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb")

#: Bytes per pixel budgeted when streaming label windows (int64 copies, float64 reads, masks).
LABEL_READ_BYTES = 32

#: ``(rows, cols) -> (labels, valid)`` of a reference, window by window.
Truth = Callable[[slice, slice], tuple[np.ndarray, np.ndarray]]


def _check_model(model: Model) -> None:
    if model.card.spatial_dims != 2:
        raise CardError(f"model {model.name!r} is {model.card.spatial_dims}D; segment-raster needs a 2D model")
    if model.card.out_channels > NODATA_LABEL:
        raise CardError(f"model {model.name!r} has {model.card.out_channels} labels; a raster mask holds at most "
                        f"{NODATA_LABEL} ({NODATA_LABEL} marks nodata)")


def open_truth(reference: str | os.PathLike[str], geometry: RasterGeometry, model: Model) -> Truth:
    """A window reader for a reference mask raster or reference vectors, checked before any work.

    Raises
    ------
    GridMismatchError
        A mask on another grid (size, transform, CRS), or vectors with a CRS for a scene without one.
    InputError
        Unreadable, or labels the model cannot predict.
    """
    if Path(reference).suffix.lower() in VECTOR_SUFFIXES:
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


def segment_raster(
    scene: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | Model | None = None,
    output: str | os.PathLike[str] | None = None,
    reference: str | os.PathLike[str] | None = None,
    bands: Sequence[int] | None = None,
    vectors: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    work_dir: str | os.PathLike[str] | None = None,
    chunks: Sequence[int] | None = None,
    cluster: ClusterSettings | None = None,
    client: Any = None,
    progress: bool = False,
    html: bool = True,
    ome_zarr: bool = False,
    instances: Sequence[str] | None = None,
    trust: bool = False,
    backend: str | None = None,
    statistics: bool = False,
    labels: Sequence[str] | None = None,
    cutout: Sequence[str] | None = None,
    cutout_margin: float = 0.0,
    tta: str = "none",
) -> SegmentationResult:
    """Segment a raster scene into a class mask on exactly its pixel grid, with a report.

    Parameters
    ----------
    scene : a raster GDAL reads (GeoTIFF, COG, VRT); never modified.
    model : a card name, a card path, a loaded 2D :class:`Model`, or None for ``buildings``.
    output : mask path (.tif); default ``<scene>_seg.tif`` beside the scene. The report goes beside
        it as ``<mask>.report.json`` and ``.csv``.
    reference : a label mask on the scene's grid, or reference vectors (``.geojson``, ``.gpkg``...),
        for per-class Dice/IoU.
    bands : 1-based bands in model order; default the card's ``bands``, else every band.
    vectors : also write polygons per non-background class (``.gpkg`` or ``.geojson``).
    instances : class names (or values) whose connected objects get their own ids, as for volumes:
        ``<mask>_instances.tif`` (uint32; nodata pixels are in no object) and ``<mask>.instances.csv``.
    overwrite : replace existing outputs (otherwise :class:`OutputExistsError`).
    work_dir : where the Zarr work store goes (removed afterwards); default beside the output.
    chunks : inference block (rows, cols) in pixels; default: 768 (at least 2 rois), balanced over the
        workers. The Zarr tiling of the scene is rounded to the file's own tiles either way.
    cluster, client : as for :func:`pipeline.segment.segment_volume`.
    html : also write ``<mask>.report.html`` (a QGIS style ``<mask>.qml`` is always written beside the mask).
    ome_zarr : also write ``<mask>.ome.zarr`` (NGFF image + labels, for napari).
    backend : the CPU inference backend, overriding the card's (``auto``, ``torch``, ``openvino``).
    trust : let a MONAI bundle's config run code beyond monai classes and harmless expressions
        (see :mod:`pipeline.bundles`); only for bundles whose code you would run.
    statistics, labels, cutout, cutout_margin, tta : as for volumes (:mod:`pipeline.mask_options`); band values
        per band, the cutout ``<mask>_cutout.tif`` with its margin in metres on the ground.

    Raises
    ------
    InputError, GridMismatchError, CardError, ModelError, SettingsError, OutputExistsError, OutputError
    """
    started = time.perf_counter()
    raster = open_raster(scene)
    mdl = model if isinstance(model, Model) else load_model(model or DEFAULT_RASTER_MODEL, trust=trust)
    mdl = mdl.on_backend(backend)
    _check_model(mdl)
    selected = select_bands(raster, bands if bands is not None else mdl.card.bands, mdl.card.in_channels,
                            model=mdl.name)
    logger.debug("%s: model %s on bands %s", raster.path, mdl.name, ",".join(map(str, selected)))
    mask_path = Path(output) if output else default_raster_output(raster.path)
    vectors_path = Path(vectors) if vectors else None
    choices = resolve_mask_options(mdl, labels=labels, cutout=cutout, cutout_margin=cutout_margin,
                                   statistics=statistics, tta=tta)
    writes = [*raster_outputs(mask_path, html=html, ome_zarr=ome_zarr, vectors=vectors_path,
                              instances=bool(check_instances(instances, mdl.labels))), *extra_outputs(choices, mask_path)]
    reads = [raster.path, *(vector_reads(reference) if reference else ()), *model_reads(mdl)]
    guard = functools.partial(check_outputs, writes, reads, overwrite=overwrite)
    guard()
    window = aligned_windows(raster.path, raster.geometry.to_attrs(), mdl)
    chunks = clip_chunks(chunks, raster.geometry.shape)
    root = Path(work_dir) if work_dir else mask_path.parent
    check_capacity(estimate_plan(raster.geometry.shape, roi=window, overlap=parse_overlap(mdl.overlap, 2), chunks=chunks,
                                 default=default_chunks(window), in_channels=len(selected),
                                 itemsize=np.dtype(raster.geometry.dtype).itemsize, classes=mdl.card.out_channels,
                                 workers=planned_workers(cluster, client), valid_mask=True,
                                 processes=local_processes(cluster, client)),
                   source=raster.path, work_root=root, cluster=cluster, client=client)
    truth = open_truth(reference, raster.geometry, mdl) if reference else None  # fail before the expensive part
    sha256 = sha256_file(raster.path)
    block = chunks or raster_chunks(raster.geometry, default_chunks(window))
    fingerprint = {"input_sha256": sha256, "bands": list(selected),
                   **engine_fingerprint(mdl, chunks=chunks, probabilities=False, tta=tta), **choices.fingerprint()}
    stages = Stages()
    with created_parents(writes), work_store(root, mask_path, fingerprint, check=guard) as work:
        group = work.group
        polygons = work.path / f"vectors{vectors_path.suffix.lower()}" if vectors_path else None
        with client_scope(client, cluster or ClusterSettings()) as active:
            with stages("tile"):
                image, valid, n_valid = _tile(raster, selected, work, block, sha256, active)
            with stages("inference"):
                result = _infer(raster, image, valid, n_valid, mdl, work, active, block, chunks, progress, tta)
                apply_labels(choices, result.labels, mdl.card.out_channels)
                features = write_vectors(str(group.store.root), raster.geometry, block, polygons, names=mdl.labels,
                                         client=active) if polygons else None
                found = raster_instances(group, parse_classes(instances), mdl.labels, raster.geometry, mask_path,
                                         client=active, metres=metres_per_unit(raster.geometry)) if instances else None
            workers_rss = worker_peak_rss(active)
        with stages("report"):
            matrix = scored_matrix(choices, _confusion(result.labels, valid, mdl.card.out_channels, truth))
        with stages("write"):
            write_mask(result.labels, valid, raster.geometry, mask_path, names=mdl.labels, work_dir=work.path)
            if polygons and vectors_path:
                publish(polygons, vectors_path)
            cut = write_cutout(choices, group, raster.geometry, mask_path)
        facts = {"bands": list(selected), "valid_pixels": n_valid, "features": features, "started": started,
                 "workers_rss": workers_rss, "stages": stages}
        report = _build_report(raster, sha256, mdl, mask_path, vectors_path, reference, matrix, result, facts)
        finish_report(choices, report, group, raster.geometry, mdl)
        if cut is not None:
            report["cutout"] = cut
        if found is not None:
            report["instances"] = found
        csv_path = write_report(report, report_json_path(mask_path))
        side = write_sidecars(report, group, mdl, mask_path, geometry=raster.geometry, reference=truth, html=html,
                              ome_zarr=ome_zarr)
    return SegmentationResult(mask=mask_path, report_json=report_json_path(mask_path), report_csv=csv_path,
                              probabilities=None, report=report, vectors=vectors_path, html=side.html,
                              viewer_files=side.viewer_files, ome_zarr=side.ome_zarr)


def _tile(raster: Raster, bands: tuple[int, ...], work: WorkStore, block: tuple[int, ...], sha256: str,
          client: Any) -> tuple[zarr.Array, zarr.Array, int]:
    """Bands and validity in the work store (kept from an interrupted run when it finished tiling)."""
    if "image" in work.ledger:
        image = work.group["image"]
        return image, work.group["valid"], int(image.attrs["valid_pixels"])
    attrs = {"geometry": raster.geometry.to_attrs(),
             "source": {"path": str(raster.path), "sha256": sha256, "bands": list(bands)}}
    image, valid, n_valid = tile_to_store(raster, bands, work.group, block, client=client, attributes=attrs)
    image.attrs.update({"valid_pixels": n_valid})
    work.ledger.mark("image")
    return image, valid, n_valid


def _infer(raster: Raster, image: zarr.Array, valid: zarr.Array, n_valid: int, model: Model, work: WorkStore,
           client: Any, block: tuple[int, ...], chunks: tuple[int, ...] | None, progress: bool,
           tta: str = "none") -> InferenceResult:
    """Run the engine on the valid pixels (nodata counts in no statistic, reaches the network as a neutral
    value, and windows of nodata only are skipped), or skip it when the scene has no valid pixel.

    ``block`` is the tiling chunk (file-aligned); ``chunks`` the user's inference blocks, if any
    (otherwise the engine balances blocks over the workers).
    """
    if n_valid == 0:
        logger.warning("%s: every pixel is nodata; writing an all-nodata mask without running the model", raster.path)
        labels = create_array(work.group, "labels", shape=image.shape[1:], chunks=block, dtype=np.uint8,
                              channel_axis=False)
        return InferenceResult(labels=labels, probabilities=None, seconds=0.0, windows=0, blocks=0, chunks=block)
    preload_model(client, model)
    return run_inference(image, model, work.group, client=client, chunks=chunks, progress=progress,
                         ledger=work.ledger, valid=valid, tta=tta)


def _confusion(labels: zarr.Array, valid: zarr.Array, n_labels: int, truth: Truth | None) -> np.ndarray:
    """(reference, prediction) counts over valid pixels, chunk by chunk; reference 0 everywhere without one."""
    total = np.zeros((n_labels, n_labels), dtype=np.int64)
    for rows, cols in read_windows(labels.shape, labels.chunks, LABEL_READ_BYTES):
        predicted = np.asarray(labels[rows, cols])
        keep = np.asarray(valid[rows, cols])
        reference = np.zeros(predicted.shape, dtype=np.int64)
        if truth is not None:
            reference, ref_valid = truth(rows, cols)
            keep &= ref_valid
        total += confusion(reference, predicted, n_labels, valid=keep)
    return total


def _label_table(matrix: np.ndarray, model: Model, geometry: RasterGeometry,
                 has_reference: bool) -> tuple[Scores, list[dict[str, Any]]]:
    measured = scores(matrix)
    rows = label_rows(measured, model.labels, geometry.pixel_area, has_reference=has_reference,
                      count_key="pixels", size_key="area")
    metres = metres_per_unit(geometry)
    for row in rows:
        row["area_ha"] = round(row["area"] * metres**2 / 1e4, 6) if metres else None
    return measured, rows


def _build_report(raster: Raster, sha256: str, model: Model, mask: Path, vectors: Path | None, reference: Any,
                  matrix: np.ndarray, result: InferenceResult, facts: dict[str, Any]) -> dict[str, Any]:
    geometry = raster.geometry
    measured, rows = _label_table(matrix, model, geometry, bool(reference))
    pixels = math.prod(geometry.shape)
    return {
        "model": model.name,
        "model_sha256": model.sha256,
        "input": {"path": str(raster.path), "sha256": sha256, "height": geometry.height, "width": geometry.width,
                  "count": geometry.count, "bands": facts["bands"], "dtype": geometry.dtype,
                  "crs": crs_name(geometry.crs), "transform": list(geometry.transform),
                  "nodata": geometry.to_attrs()["nodata"],
                  "valid_pixels": facts["valid_pixels"], "nodata_pixels": pixels - facts["valid_pixels"]},
        "output": str(mask),
        "vectors": str(vectors) if vectors else None,
        "features": facts["features"],
        "reference": str(reference) if reference else None,
        "pixel_area": geometry.pixel_area,
        "area_unit": f"{map_unit(geometry)}^2",
        "labels": rows,
        "pixel_accuracy": measured.pixel_accuracy if reference else None,
        "mean_pixel_accuracy": measured.mean_pixel_accuracy if reference else None,
        "confusion_matrix": matrix.tolist() if reference else None,
        "run": run_facts(result, started=facts["started"], elements=pixels, workers_rss=facts["workers_rss"],
                         stages=facts["stages"]),
    }
