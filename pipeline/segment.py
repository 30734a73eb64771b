"""``segment_volume``: NIfTI scan -> Zarr work store -> Dask + MONAI -> NIfTI mask + report.

The medical front end of the engine. It only validates, tiles, hands the work
store to :func:`pipeline.infer.run_inference`, streams the mask out and scores it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import resource
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.cluster import (
    ClusterSettings,
    dashboard_link,
    dask_client,
    memory_limit_bytes,
    resolved_threads,
    worker_peak_rss,
)
from pipeline.engine.alignment import alignment_for
from pipeline.engine.api import default_chunks
from pipeline.engine.windows import parse_overlap
from pipeline.errors import CardError, InputError
from pipeline.evaluate import check_reference_labels, confusion_against
from pipeline.hashing import sha256_file
from pipeline.infer import InferenceResult, engine_fingerprint, preload_model, run_inference, worker_threads
from pipeline.instances import check_instances, parse_classes, volume_instances
from pipeline.io.atomic import atomic_path
from pipeline.io.nifti import NiftiScan, open_scan, stream_to_array, write_labels
from pipeline.io.store import WorkStore, create_array, work_store
from pipeline.mask_options import MaskOptions, apply_labels, extra_outputs, finish_report, scored_matrix, write_cutout
from pipeline.mask_options import resolve as resolve_mask_options
from pipeline.metrics import scores
from pipeline.models import Model, load_model
from pipeline.outputs import (
    check_outputs,
    created_parents,
    default_volume_output,
    mark_store,
    model_reads,
    probabilities_path,
    report_json_path,
    volume_outputs,
)
from pipeline.plan_estimate import PlanEstimate, check_plan, clip_chunks, estimate_plan
from pipeline.report import code_version, label_rows, write_report
from pipeline.sidecars import write_sidecars
from pipeline.stages import Stages, describe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentationResult:
    """Where the outputs went, and the report that was written."""

    mask: Path
    report_json: Path
    report_csv: Path
    probabilities: Path | None
    report: dict[str, Any]
    vectors: Path | None = None
    html: Path | None = None
    viewer_files: tuple[Path, ...] = ()
    ome_zarr: Path | None = None

    def summary(self) -> str:
        run = self.report["run"]
        unit = "Mpx/s" if "pixel_area" in self.report else "Mvox/s"  # rasters report pixels, volumes voxels
        stages = f"; {describe(run['stages'])}" if run.get("stages") else ""
        return (f"{self.mask}: {run['seconds_total']:.1f} s, {run['mvox_per_s']:.2f} {unit}, "
                f"peak RSS {run['peak_rss_mb']:.0f} MB (driver + workers), {run['windows']} windows, "
                f"backend {run.get('backend', 'torch')}{stages}")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _tile_scan(scan: NiftiScan, work: WorkStore, chunks: Sequence[int], sha256: str) -> Any:
    """The scan as a Zarr array in the work store (kept from an interrupted run when it finished tiling)."""
    if "image" in work.ledger:
        return work.group["image"]
    attrs = {"geometry": scan.geometry.to_attrs(),
             "source": {"path": str(scan.path), "sha256": sha256, "dtype": scan.dtype.name}}
    image = create_array(work.group, "image", shape=(1, *scan.geometry.shape), chunks=(1, *chunks),
                         dtype=scan.dtype, attributes=attrs)
    stream_to_array(scan, image)
    work.ledger.mark("image")
    return image


def aligned_windows(path: Path, geometry_attrs: dict[str, Any], model: Model) -> tuple[int, ...]:
    """The model's window in the input's own pixels or voxels (see :mod:`pipeline.engine.alignment`)."""
    try:
        alignment = alignment_for(geometry_attrs, model.card)
    except InputError as e:
        raise InputError(f"{path}: {e}; model {model.name!r}") from e
    return alignment.roi_scan if alignment else model.roi_size


def _check_model(model: Model) -> None:
    if model.card.spatial_dims != 3 or model.card.in_channels != 1:
        raise CardError(f"model {model.name!r} is {model.card.spatial_dims}D with {model.card.in_channels} "
                        "channel(s); segment-volume needs a 3D single-channel model")


def segment_volume(
    scan: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | Model | None = None,
    output: str | os.PathLike[str] | None = None,
    reference: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    work_dir: str | os.PathLike[str] | None = None,
    chunks: Sequence[int] | None = None,
    cluster: ClusterSettings | None = None,
    client: Any = None,
    probabilities: bool = False,
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
    """Segment a 3D NIfTI scan into a label mask on exactly its grid, with a report.

    Parameters
    ----------
    scan : the input ``.nii`` / ``.nii.gz``; never modified.
    model : a card name, a card path, a loaded :class:`Model`, or None for the default model.
    output : mask path; default ``<scan>_seg.nii.gz`` beside the scan. The report goes beside it
        as ``<mask>.report.json`` and ``.csv``; ``--probabilities`` adds ``<mask>_probabilities.zarr``.
    reference : optional reference mask on the same grid, in the model's label values.
    overwrite : replace existing outputs (otherwise :class:`OutputExistsError`).
    work_dir : where the Zarr work store goes; default a hidden directory beside the output. It is removed
        after success and kept after an interruption: running the same call again resumes it.
    chunks : block side per axis in voxels (default: 128, at least 2 rois).
    cluster : local cluster settings or a scheduler address; ignored when ``client`` is given.
    client : an existing ``distributed.Client`` to reuse (flows share one across scans).
    html : also write ``<mask>.report.html`` (viewer label files are always written beside the mask).
    ome_zarr : also write ``<mask>.ome.zarr`` (NGFF image + labels, for napari / neuroglancer).
    instances : class names (or values) whose connected objects get their own ids: writes
        ``<mask>_instances.nii.gz`` (uint32) and ``<mask>.instances.csv``, and adds ``"instances"`` to the report.
    backend : the CPU inference backend, overriding the card's (``auto``, ``torch``, ``openvino``).
    trust : let a MONAI bundle's config run code beyond monai classes and harmless expressions
        (see :mod:`pipeline.bundles`); only for bundles whose code you would run.
    statistics, labels, cutout, cutout_margin, tta : the mask options (:mod:`pipeline.mask_options`): HU per
        label in the report, keep only some labels, write ``<mask>_cutout.nii.gz`` (margin in mm), mirroring.

    Raises
    ------
    InputError, CardError, ModelError, SettingsError, OutputExistsError, OutputError
    """
    started = time.perf_counter()
    source = open_scan(scan)
    mdl = model if isinstance(model, Model) else load_model(model, trust=trust)
    mdl = mdl.on_backend(backend)
    _check_model(mdl)
    mask_path = Path(output) if output else default_volume_output(source.path)
    json_path = report_json_path(mask_path)
    probs_path = probabilities_path(mask_path) if probabilities else None
    choices = resolve_mask_options(mdl, labels=labels, cutout=cutout, cutout_margin=cutout_margin,
                                   statistics=statistics, tta=tta)
    writes = [*volume_outputs(mask_path, html=html, ome_zarr=ome_zarr, probabilities=probabilities,
                              instances=bool(check_instances(instances, mdl.labels))), *extra_outputs(choices, mask_path)]
    guard = functools.partial(check_outputs, writes, [source.path, reference, *model_reads(mdl)], overwrite=overwrite)
    guard()
    if reference:
        check_reference_labels(reference, source.geometry, mdl.card.out_channels)  # fail before the expensive part
    aligned = aligned_windows(source.path, source.geometry.to_attrs(), mdl)
    block = clip_chunks(chunks, source.geometry.shape)
    root = Path(work_dir) if work_dir else mask_path.parent
    check_capacity(estimate_plan(source.geometry.shape, roi=aligned, overlap=parse_overlap(mdl.overlap, 3), chunks=block,
                                 default=default_chunks(aligned), in_channels=1, itemsize=source.dtype.itemsize,
                                 classes=mdl.card.out_channels, workers=planned_workers(cluster, client),
                                 processes=local_processes(cluster, client), probabilities=probabilities),
                   source=source.path, work_root=root, cluster=cluster, client=client)
    sha256 = sha256_file(source.path)
    fingerprint = {"input_sha256": sha256, **engine_fingerprint(mdl, chunks=block, probabilities=probabilities, tta=tta),
                   **choices.fingerprint()}
    stages = Stages()
    with created_parents(writes), work_store(root, mask_path, fingerprint, check=guard) as work:
        group = work.group
        with stages("tile"):
            image = _tile_scan(source, work, block or default_chunks(aligned), sha256)
        with client_scope(client, cluster or ClusterSettings()) as active:
            preload_model(active, mdl)
            with stages("inference"):
                result = run_inference(image, mdl, group, client=active, chunks=block, ledger=work.ledger,
                                       probabilities=probabilities, progress=progress, tta=tta)
                apply_labels(choices, result.labels, mdl.card.out_channels)
                found = volume_instances(group, parse_classes(instances), mdl.labels, source.geometry, mask_path,
                                         client=active) if instances else None
            workers_rss = worker_peak_rss(active)
        with stages("write"):
            write_labels(result.labels, source.geometry, mask_path,
                         label_names={k: v.name for k, v in mdl.labels.items()})
            if probs_path is not None:
                with atomic_path(probs_path) as tmp:
                    shutil.copytree(work.path / "work.zarr" / "probabilities", tmp)
                    mark_store(tmp, "probabilities")
            cut = write_cutout(choices, group, source.geometry, mask_path)
        with stages("report"):
            report = _build_report(source, sha256, mdl, mask_path, reference, result, started, workers_rss, stages,
                                   choices)
            finish_report(choices, report, group, source.geometry, mdl)
        if cut is not None:
            report["cutout"] = cut
        if found is not None:
            report["instances"] = found
        csv_path = write_report(report, json_path)
        side = write_sidecars(report, group, mdl, mask_path, geometry=source.geometry, reference=reference, html=html,
                              ome_zarr=ome_zarr)
    return SegmentationResult(mask=mask_path, report_json=json_path, report_csv=csv_path,
                              probabilities=probs_path, report=report, html=side.html,
                              viewer_files=side.viewer_files, ome_zarr=side.ome_zarr)


def planned_workers(cluster: ClusterSettings | None, client: Any) -> int:
    """Task slots the run will have (worker threads in all): the client's, the local cluster's, or 1 for a
    scheduler not yet reached."""
    if client is not None:
        return worker_threads(client)
    settings = cluster or ClusterSettings()
    return 1 if settings.address else max(1, settings.workers) * resolved_threads(settings)


def local_processes(cluster: ClusterSettings | None, client: Any) -> int:
    """Local worker processes the run will start (0: in-process threads, or someone else's cluster)."""
    settings = cluster or ClusterSettings()
    return 0 if client is not None or settings.address else settings.workers


def check_capacity(plan: PlanEstimate, *, source: Path, work_root: Path, cluster: ClusterSettings | None,
                   client: Any) -> None:
    """:func:`pipeline.plan_estimate.check_plan` with this run's memory limit: a local cluster's (auto:
    RAM / workers) and RAM, a given client's workers' own limits, nothing for a scheduler not yet reached."""
    import psutil

    settings = cluster or ClusterSettings()
    limit = ram = None
    if client is not None:
        limits = [w.get("memory_limit") or 0 for w in client.scheduler_info().get("workers", {}).values()]
        limit = min(limits) if limits and min(limits) > 0 else None
    elif not settings.address:
        ram = psutil.virtual_memory().total
        limit = memory_limit_bytes(settings.memory_limit) or ram // max(1, settings.workers)
    logger.debug("%s: plan %s", source, plan.describe())
    check_plan(plan, source=source, work_root=work_root, memory_limit=limit, ram=ram)


@contextlib.contextmanager
def client_scope(client: Any, settings: ClusterSettings) -> Iterator[Any]:
    """Use the caller's client, or start a cluster for this block only."""
    if client is not None:
        yield client
        return
    with dask_client(settings) as owned:
        link = dashboard_link(owned)
        if link:
            logger.info("Dask dashboard: %s", link)
        yield owned


def run_facts(result: InferenceResult, *, started: float, elements: int, workers_rss: int,
              stages: Stages | None = None) -> dict[str, Any]:
    """The report's ``run`` section: timing (per stage too), throughput (voxels or pixels), windows, blocks,
    the inference backend, peak RSS, code."""
    seconds = time.perf_counter() - started
    return {
        "seconds_total": round(seconds, 3),
        "seconds_inference": round(result.seconds, 3),
        "stages": stages.facts() if stages else {},
        "backend": result.backend,
        "spill_peak_mb": round(result.spill_bytes_peak / 2**20, 1),
        "mvox_per_s": round(elements / 1e6 / seconds, 4),
        "windows": result.windows,
        "blocks": result.blocks,
        "blocks_resumed": result.blocks_resumed,
        "chunks": list(result.chunks),
        "peak_rss_mb": round((peak_rss_bytes() + workers_rss) / 2**20, 1),
        "code_version": code_version(),
    }


def _build_report(source: NiftiScan, sha256: str, model: Model, mask: Path, reference: Any,
                  result: InferenceResult, started: float, workers_rss: int, stages: Stages,
                  choices: MaskOptions) -> dict[str, Any]:
    n = model.card.out_channels
    if reference:
        matrix = confusion_against(reference, source.geometry, lambda k: result.labels[:, :, k], n_labels=n).dense(n)
        matrix = scored_matrix(choices, matrix)
    else:
        matrix = _label_counts(result.labels, n)
    measured = scores(matrix)
    return {
        "model": model.name,
        "model_sha256": model.sha256,
        "input": {"path": str(source.path), "sha256": sha256, "shape": list(source.geometry.shape),
                  "zooms": list(source.geometry.zooms), "dtype": source.dtype.name},
        "output": str(mask),
        "reference": str(reference) if reference else None,
        "labels": label_rows(measured, model.labels, source.geometry.voxel_volume_ml, has_reference=bool(reference)),
        "pixel_accuracy": measured.pixel_accuracy if reference else None,
        "mean_pixel_accuracy": measured.mean_pixel_accuracy if reference else None,
        "confusion_matrix": matrix.tolist() if reference else None,
        "run": run_facts(result, started=started, elements=math.prod(source.geometry.shape), workers_rss=workers_rss,
                         stages=stages),
    }


def _label_counts(labels: Any, n_labels: int) -> Any:
    """A confusion matrix with every voxel counted as reference 0: only its column sums are used."""
    import numpy as np

    from pipeline.evaluate import SLAB

    counts = np.zeros(n_labels, dtype=np.int64)
    for k0 in range(0, labels.shape[-1], SLAB):
        counts += np.bincount(np.asarray(labels[..., k0 : k0 + SLAB]).ravel(), minlength=n_labels)[:n_labels]
    total = np.zeros((n_labels, n_labels), dtype=np.int64)
    total[0] = counts
    return total
