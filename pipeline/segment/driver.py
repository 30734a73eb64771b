"""The one segmentation driver: input -> Zarr work store -> Dask + MONAI -> mask + report + sidecars.

Every domain (see :mod:`pipeline.segment.domain`) runs through :func:`segment`, which does the shared
steps once, in this order: open and validate the input (the adapter), load and check the model,
check every output (:func:`pipeline.io.outputs.check_outputs`), estimate the plan and refuse one that
cannot fit, check the reference, fingerprint the run and open (or resume) the work store, start or
reuse the cluster, tile (the adapter), preload the model and infer (:func:`pipeline.engine.infer.run_inference`,
the same code for 2D and 3D), find instances, write the mask (the adapter), count the confusion
matrix (the adapter), write the report and the sidecars.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cluster import ClusterSettings, lost_worker, worker_peak_rss
from pipeline.engine.alignment import alignment_for
from pipeline.engine.api import default_chunks
from pipeline.engine.infer import InferenceOptions, InferenceResult, engine_fingerprint, run_inference
from pipeline.engine.windows import parse_overlap
from pipeline.errors import InputError, SettingsError
from pipeline.evaluate.instances import check_instances, parse_classes
from pipeline.io.atomic import atomic_path
from pipeline.io.hashing import sha256_file
from pipeline.io.outputs import (
    Output,
    check_outputs,
    created_parents,
    mark_store,
    model_reads,
    probabilities_path,
    report_json_path,
)
from pipeline.io.store import WorkStore, create_array, work_store
from pipeline.model.models import Model, load_model
from pipeline.report.sidecars import write_sidecars
from pipeline.report.tables import write_report
from pipeline.segment.domain import DOMAIN_OPTIONS, Domain, Source
from pipeline.segment.mask_options import (
    MaskOptions,
    apply_labels,
    extra_outputs,
    finish_report,
    scored_matrix,
    write_cutout,
)
from pipeline.segment.mask_options import resolve as resolve_mask_options
from pipeline.segment.options import RunSettings, SegmentOptions
from pipeline.segment.plan_estimate import Tiling, clip_chunks, estimate_plan
from pipeline.segment.resources import check_capacity, client_scope, local_processes, planned_slots
from pipeline.segment.result import RunRecord, SegmentationResult, build_report
from pipeline.segment.stages import Stages

logger = logging.getLogger(__name__)

PathArg = str | os.PathLike[str]


@dataclass(frozen=True)
class Prepared:
    """A run checked end to end before any work: everything the work-store phase needs."""

    source: Source
    model: Model
    mask: Path
    writes: list[Output]
    guard: functools.partial[None]
    chunks: tuple[int, ...] | None  #: the user's blocks, clipped to the input (None: the engine's)
    window: tuple[int, ...]  #: the model's roi in the input's own pixels or voxels
    root: Path  #: work store root
    truth: Any  #: the adapter's reference handle, or None
    choices: MaskOptions  #: --labels, --statistics, --cutout, --tta, checked against the model


def segment(path: PathArg, domain: Domain, *, model: PathArg | Model | None = None, output: PathArg | None = None,
            reference: PathArg | None = None, options: SegmentOptions | None = None,
            runtime: RunSettings | None = None) -> SegmentationResult:
    """Segment one input of ``domain`` into a label mask on exactly its grid, with a report.

    Parameters and outputs are those of :func:`pipeline.segment.segment_volume` /
    :func:`pipeline.segment.segment_raster`, which call this with their domain.

    Raises
    ------
    InputError, GridMismatchError, CardError, ModelError, SettingsError, OutputExistsError, OutputError
    """
    started = time.perf_counter()
    options, runtime = options or SegmentOptions(), runtime or RunSettings()
    run = prepare(path, domain, model=model, output=output, reference=reference, options=options, runtime=runtime)
    sha256 = input_sha256(run.source)
    fingerprint = {"input_sha256": sha256, **run.source.fingerprint(),
                   **engine_fingerprint(run.model, chunks=run.chunks, probabilities=options.probabilities,
                                        tta=options.tta), **run.choices.fingerprint()}
    with (created_parents(run.writes),
          work_store(run.root, run.mask, fingerprint, check=run.guard, keep=lost_worker) as work):
        return _execute(run, work, sha256, reference, options, runtime, started)


def input_sha256(source: Source) -> str:
    """The input's identity: its file's sha256, or the adapter's own when it has one (a DICOM series: its
    instances' bytes in volume order)."""
    own = getattr(source, "sha256", None)
    return str(own()) if callable(own) else sha256_file(source.path)


def prepare(path: PathArg, domain: Domain, *, model: PathArg | Model | None, output: PathArg | None,
            reference: PathArg | None, options: SegmentOptions, runtime: RunSettings) -> Prepared:
    """Every check that needs no work store: input header, options, model, outputs, plan, reference."""
    source = domain.open(path)
    _check_domain_options(domain, source.path, options)
    mdl = model if isinstance(model, Model) else load_model(model or domain.default_model, trust=options.trust)
    mdl = mdl.on_backend(options.backend)
    source.bind(mdl, options)
    mask = Path(output) if output else source.default_output()
    choices = resolve_mask_options(mdl, labels=options.labels, cutout=options.cutout,
                                   cutout_margin=options.cutout_margin, statistics=options.statistics, tta=options.tta)
    writes = [*source.outputs(mask, options, instances=bool(check_instances(options.instances, mdl.labels))),
              *extra_outputs(choices, mask)]
    guard = functools.partial(check_outputs, writes, [*source.reads(reference), *model_reads(mdl)],
                              overwrite=options.overwrite)
    guard()
    window = aligned_windows(source.path, source.geometry.to_attrs(), mdl)
    chunks = clip_chunks(options.chunks, source.geometry.shape)
    root = Path(runtime.work_dir) if runtime.work_dir else mask.parent
    tiling = Tiling(roi=window, overlap=parse_overlap(mdl.overlap, len(window)), chunks=chunks,
                    default=default_chunks(window))
    slots, most = planned_slots(runtime.cluster, runtime.client)
    plan = estimate_plan(source.geometry.shape, tiling, source.plan_inputs(), classes=mdl.card.out_channels,
                         workers=slots, processes=local_processes(runtime.cluster, runtime.client),
                         probabilities=options.probabilities, adaptive=most)
    check_capacity(plan, source=source.path, work_root=root, cluster=runtime.cluster, client=runtime.client)
    truth = source.open_reference(reference, mdl) if reference else None  # fail before the expensive part
    return Prepared(source=source, model=mdl, mask=mask, writes=writes, guard=guard, chunks=chunks, window=window,
                    root=root, truth=truth, choices=choices)


def _execute(run: Prepared, work: WorkStore, sha256: str, reference: PathArg | None, options: SegmentOptions,
             runtime: RunSettings, started: float) -> SegmentationResult:
    """The work-store phase: tile, infer, write, report."""
    source, mdl, stages = run.source, run.model, Stages()
    with client_scope(runtime.client, runtime.cluster or ClusterSettings()) as client:
        with stages("tile"):
            tiling = run.chunks or source.tile_chunks(default_chunks(run.window))
            image, valid, n_valid = _tile(source, work, tiling, sha256, client)
        with stages("inference"):
            result = _infer(source, image, valid, n_valid, mdl, work, client, run.chunks, runtime.progress,
                            options)
            apply_labels(run.choices, result.labels, mdl.card.out_channels)
            facts = source.extras(work, mdl, client, options)
            found = source.find_instances(work.group, parse_classes(options.instances), mdl, run.mask,
                                          client) if options.instances else None
        workers_rss = worker_peak_rss(client)
    with stages("write"):
        source.write(result.labels, valid, mdl, run.mask, work, options)
        probs = _copy_probabilities(work, run.mask) if options.probabilities else None
        cutout = write_cutout(run.choices, work.group, source.geometry, run.mask)
    with stages("report"):
        matrix = scored_matrix(run.choices, source.confusion(result.labels, valid, mdl.card.out_channels, run.truth))
        record = RunRecord(sha256=sha256, mask=run.mask, reference=reference, result=result, valid_pixels=n_valid,
                           started=started, workers_rss=workers_rss, stages=stages)
        report = build_report(source, mdl, record, matrix, source.report_extras(options, facts))
        finish_report(run.choices, report, work.group, source.geometry, mdl)
    if cutout is not None:
        report["cutout"] = cutout
    if found is not None:
        report["instances"] = found
    json_path = report_json_path(run.mask)
    csv_path = write_report(report, json_path)
    side = write_sidecars(report, work.group, mdl, run.mask, geometry=source.geometry, reference=run.truth,
                          html=options.html, ome_zarr=options.ome_zarr)
    return SegmentationResult(mask=run.mask, report_json=json_path, report_csv=csv_path, probabilities=probs,
                              report=report, vectors=Path(options.vectors) if options.vectors else None,
                              html=side.html, viewer_files=side.viewer_files, ome_zarr=side.ome_zarr)


def aligned_windows(path: Path, geometry_attrs: dict[str, Any], model: Model) -> tuple[int, ...]:
    """The model's window in the input's own pixels or voxels (see :mod:`pipeline.engine.alignment`)."""
    try:
        alignment = alignment_for(geometry_attrs, model.card)
    except InputError as e:
        raise InputError(f"{path}: {e}; model {model.name!r}") from e
    return alignment.roi_scan if alignment else model.roi_size


def _check_domain_options(domain: Domain, path: Path, options: SegmentOptions) -> None:
    """Refuse a domain-only option set for a domain that does not own it (``vectors`` for a volume)."""
    for name in sorted(DOMAIN_OPTIONS - domain.options):
        if getattr(options, name) not in (None, False):
            raise SettingsError(f"{path}: {name} is not available for a {domain.name} input")


def _tile(source: Source, work: WorkStore, chunks: tuple[int, ...], sha256: str,
          client: Any) -> tuple[Any, Any, int | None]:
    """The input in the work store (kept from an interrupted run when it finished tiling)."""
    group = work.group
    if "image" in work.ledger:
        image = group["image"]
        valid = group["valid"] if "valid" in group else None
        stored = image.attrs.get("valid_pixels")
        return image, valid, None if stored is None else int(stored)  # type: ignore[arg-type]  # JSON int
    attrs = {"geometry": source.geometry.to_attrs(),
             "source": {"path": str(source.path), "sha256": sha256, **source.source_attrs()}}
    image, valid, n_valid = source.tile(group, chunks, attrs, client)
    if n_valid is not None:
        image.attrs.update({"valid_pixels": n_valid})
    work.ledger.mark("image")
    return image, valid, n_valid


def _infer(source: Source, image: Any, valid: Any, n_valid: int | None, model: Model, work: WorkStore, client: Any,
           chunks: tuple[int, ...] | None, progress: bool, options: SegmentOptions) -> InferenceResult:
    """Run the engine (on the valid pixels, when the input has nodata), or skip it when no pixel is valid.

    ``chunks`` are the user's inference blocks, if any (otherwise the engine balances blocks over the workers).
    """
    if n_valid == 0:
        logger.warning("%s: every pixel is nodata; writing an all-nodata mask without running the model", source.path)
        block = tuple(image.chunks[1:])
        labels = create_array(work.group, "labels", shape=image.shape[1:], chunks=block, dtype=np.uint8,
                              channel_axis=False)
        return InferenceResult(labels=labels, probabilities=None, seconds=0.0, windows=0, blocks=0, chunks=block)
    settings = InferenceOptions(chunks=chunks, probabilities=options.probabilities, progress=progress, tta=options.tta)
    return run_inference(image, model, work.group, client=client, options=settings, ledger=work.ledger, valid=valid)


def _copy_probabilities(work: WorkStore, mask: Path) -> Path:
    """The work store's softmax probabilities published beside the mask (a Zarr store volseg marks)."""
    target = probabilities_path(mask)
    with atomic_path(target) as tmp:
        shutil.copytree(work.path / "work.zarr" / "probabilities", tmp)
        mark_store(tmp, "probabilities")
    return target
