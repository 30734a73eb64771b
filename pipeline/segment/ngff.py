"""Segment a volume that already lives in Zarr: OME-Zarr (NGFF) or a plain array in, NGFF labels out, no copy.

The engine reads the input store's own chunks (:class:`~pipeline.io.zarr_source.ZarrView`); the work store
holds only the labels and the merge's spills. Labels go to ``labels/<name>`` inside the input store (NGFF's
place for them) or, with ``output``, into a store of their own; the report (JSON + CSV) beside that store.
Resume is keyed on :func:`~pipeline.io.zarr_source.store_identity` (location, metadata, chunk file sizes and
mtimes), the orientation and the engine's fingerprint.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.cluster import ClusterSettings, lost_worker, worker_peak_rss
from pipeline.engine.api import default_chunks
from pipeline.engine.infer import InferenceOptions, engine_fingerprint, run_inference
from pipeline.engine.windows import parse_overlap
from pipeline.errors import CardError, InputError, SettingsError
from pipeline.evaluate.metrics import scores
from pipeline.io.ngff import ZARR_SUFFIXES, ZarrInput, open_zarr_input, parse_orientation, zarr_geometry
from pipeline.io.ngff_labels import check_label_target, write_ngff_labels
from pipeline.io.outputs import Output, check_outputs, report_csv_path, split_suffix
from pipeline.io.store import work_store
from pipeline.io.zarr_source import store_identity, zarr_view
from pipeline.model.models import Model, load_model
from pipeline.report.tables import label_rows, write_report
from pipeline.segment.domain import PlanInputs
from pipeline.segment.driver import aligned_windows
from pipeline.segment.options import RunSettings, SegmentOptions, resolve_options
from pipeline.segment.plan_estimate import Tiling, clip_chunks, estimate_plan
from pipeline.segment.resources import check_capacity, client_scope, local_processes, planned_slots
from pipeline.segment.result import run_facts
from pipeline.segment.stages import Stages
from pipeline.segment.volume import label_counts


@dataclass(frozen=True)
class ZarrSegmentation:
    """Where the labels went (``<store>/labels/<name>``) and the report written beside the store."""

    labels: Path
    report_json: Path
    report_csv: Path
    report: dict[str, Any]

    def summary(self) -> str:
        run = self.report["run"]
        return (f"{self.labels}: {run['seconds_total']:.1f} s, {run['mvox_per_s']:.2f} Mvox/s, "
                f"peak RSS {run['peak_rss_mb']:.0f} MB (driver + workers), {run['windows']} windows, "
                f"backend {run.get('backend', 'torch')}")


@dataclass(frozen=True, slots=True)
class ZarrLayout:
    """Which image of a store is segmented and how its axes are read."""

    level: int = 0  #: OME-Zarr pyramid level (0: full resolution)
    orientation: str | None = None  #: axis codes of the stored spatial axes (e.g. ``SAR``); None: the card's
    array: str | None = None  #: plain Zarr: the array's name in the group
    spacing: Sequence[float] | None = None  #: plain Zarr: voxel size in mm per spatial axis, stored order
    axes: str | None = None  #: plain Zarr: axis names in stored order (e.g. ``zyx``)


_LAYOUT_FIELDS = frozenset(f.name for f in dataclasses.fields(ZarrLayout))
#: The :class:`SegmentOptions` a Zarr run uses; the others (sidecars, references, probabilities) do not apply.
_ZARR_OPTIONS = frozenset({"overwrite", "chunks", "trust", "backend"})
_KEYWORDS = _LAYOUT_FIELDS | _ZARR_OPTIONS | {f.name for f in dataclasses.fields(RunSettings)}


def segment_zarr(store: str | os.PathLike[str], *, model: str | os.PathLike[str] | Model | None = None,
                 output: str | os.PathLike[str] | None = None, name: str | None = None,
                 layout: ZarrLayout | None = None, options: SegmentOptions | None = None,
                 runtime: RunSettings | None = None, **keywords: Any) -> ZarrSegmentation:
    """Segment level ``layout.level`` of an OME-Zarr image (or a plain array: ``array``, ``spacing``, ``axes``).

    Parameters
    ----------
    store : local path or fsspec URL of the store; never modified except for adding ``labels/<name>``
        (and its name in the ``labels`` list) when ``output`` is None.
    output : write the labels into this ``.zarr`` store instead (needed for read-only and remote inputs).
    name : the label image's name (default: the model's).
    layout : :class:`ZarrLayout`: level, orientation, array, spacing, axes.
    options : :class:`SegmentOptions`; only overwrite, chunks, trust and backend apply to a Zarr run.
    runtime : :class:`RunSettings`: work_dir, cluster, client, progress.
    **keywords : any field of ``layout``, of ``runtime`` or one of the four ``options`` by name.

    Raises
    ------
    InputError, CardError, ModelError, OutputExistsError, OutputError
    """
    started = time.perf_counter()
    layout, ours, run = _resolve(layout, options, runtime, keywords)
    overwrite, chunks, cluster, client = ours.overwrite, ours.chunks, run.cluster, run.client
    source, mdl, geometry = _open(store, model, layout, trust=ours.trust, backend=ours.backend)
    label_name = name or mdl.name
    target, in_input = _label_target(source, output, label_name, overwrite=overwrite)
    json_path = target.with_name(f"{split_suffix(target.name, ZARR_SUFFIXES)[0]}_{label_name}.report.json")
    writes = [Output(json_path, "json"), Output(report_csv_path(json_path), "csv")]
    guard = functools.partial(_check_targets, target, label_name, writes, overwrite=overwrite, in_input=in_input)
    guard()
    root = Path(run.work_dir) if run.work_dir else target.parent
    aligned, block = _plan(source, geometry, mdl, chunks, work_root=root, cluster=cluster, client=client)
    identity = store_identity(source)
    fingerprint = {**identity, "orientation": geometry.affine, "labels_name": label_name,
                   **engine_fingerprint(mdl, chunks=block, probabilities=False)}
    stages = Stages()
    key = target.with_name(f"{target.name}.{label_name}")  # work directory and lock beside the store, not in it
    with work_store(root, key, fingerprint, check=guard, keep=lost_worker) as work:
        view = zarr_view(source, geometry)
        result, workers_rss = _infer(view, mdl, work, aligned=aligned, block=block, cluster=cluster, client=client,
                                     progress=run.progress, stages=stages)
        with stages("write"):
            written = write_ngff_labels(result.labels, source, target, label_name, labels_meta=mdl.labels,
                                        scratch=work.path / "labels.zarr", overwrite=overwrite, in_input=in_input)
        report = _report(source, identity, mdl, written, result, started, workers_rss, stages, geometry)
        csv_path = write_report(report, json_path)
    return ZarrSegmentation(labels=written, report_json=json_path, report_csv=csv_path, report=report)


def _resolve(layout: ZarrLayout | None, options: SegmentOptions | None, runtime: RunSettings | None,
             keywords: dict[str, Any]) -> tuple[ZarrLayout, SegmentOptions, RunSettings]:
    """The three groups with ``keywords`` applied by field name (a keyword no Zarr run takes is a TypeError, as
    for any function); ``options`` a Zarr run cannot honour (sidecars, probabilities...) are refused."""
    unknown = sorted(set(keywords) - _KEYWORDS)
    if unknown:
        raise TypeError(f"segment_zarr() got an unexpected keyword argument {unknown[0]!r}")
    placed = dataclasses.replace(layout or ZarrLayout(), **{k: v for k, v in keywords.items() if k in _LAYOUT_FIELDS})
    ours, run = resolve_options(options, runtime, {k: v for k, v in keywords.items() if k not in _LAYOUT_FIELDS})
    default = SegmentOptions()
    unused = [f.name for f in dataclasses.fields(ours)
              if f.name not in _ZARR_OPTIONS and getattr(ours, f.name) != getattr(default, f.name)]
    if unused:
        raise SettingsError(f"{unused[0]} is not available for Zarr inputs")
    return placed, ours, run


def _open(store: str | os.PathLike[str], model: str | os.PathLike[str] | Model | None, layout: ZarrLayout, *,
          trust: bool, backend: str | None) -> tuple[ZarrInput, Model, Any]:
    """The store's image, the model (3D, taking the image's channels) and the image's geometry."""
    source = open_zarr_input(store, level=layout.level, array=layout.array, spacing=layout.spacing, axes=layout.axes)
    codes = parse_orientation(layout.orientation) if layout.orientation else None
    mdl = (model if isinstance(model, Model) else load_model(model, trust=trust)).on_backend(backend)
    if mdl.card.spatial_dims != 3:
        raise CardError(f"model {mdl.name!r} is {mdl.card.spatial_dims}D; segment-volume needs a 3D model")
    if source.channels != mdl.card.in_channels:
        raise InputError(f"{source.url}: {source.channels} channel(s); model {mdl.name!r} takes "
                         f"{mdl.card.in_channels}")
    return source, mdl, zarr_geometry(source, orientation=codes, card_orientation=mdl.card.orientation)


def _label_target(source: ZarrInput, output: str | os.PathLike[str] | None, label_name: str, *,
                  overwrite: bool) -> tuple[Path, bool]:
    """The store the labels go into, and whether it is the input store itself (``-o`` naming it included)."""
    in_input = output is None
    if in_input:
        check_label_target(source.url, label_name, overwrite=overwrite, in_input=True)  # remote: needs -o
    target = Path(source.url) if output is None else Path(output)
    if not in_input and not split_suffix(target.name, ZARR_SUFFIXES)[1]:
        raise InputError(f"{target}: the labels are an OME-Zarr store; name it .ome.zarr or .zarr")
    if not in_input and source.is_local and os.path.realpath(target) == os.path.realpath(source.url):
        in_input = True
    return target, in_input


def _check_targets(target: Path, label_name: str, writes: list[Output], *, overwrite: bool, in_input: bool) -> None:
    """The label image and the report files may be written (checked again once the work store is locked)."""
    check_label_target(target, label_name, overwrite=overwrite, in_input=in_input)
    check_outputs(writes, [], overwrite=overwrite)


def _plan(source: ZarrInput, geometry: Any, mdl: Model, chunks: Sequence[int] | None, *, work_root: Path,
          cluster: ClusterSettings | None, client: Any) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """The model's window in the image's voxels and the blocks (clipped to the image); a plan the machine or
    cluster cannot hold is refused (:mod:`pipeline.segment.plan_estimate`)."""
    aligned = aligned_windows(Path(source.url), geometry.to_attrs(), mdl)
    block = clip_chunks(chunks, geometry.shape)
    tiling = Tiling(roi=aligned, overlap=parse_overlap(mdl.overlap, 3), chunks=block, default=default_chunks(aligned))
    inputs = PlanInputs(in_channels=0, itemsize=source.dtype.itemsize)
    slots, most = planned_slots(cluster, client)
    check_capacity(estimate_plan(geometry.shape, tiling, inputs, classes=mdl.card.out_channels, workers=slots,
                                 processes=local_processes(cluster, client), adaptive=most),
                   source=Path(source.url), work_root=work_root, cluster=cluster, client=client)
    return aligned, block


def _infer(view: Any, mdl: Model, work: Any, *, aligned: Sequence[int], block: Sequence[int] | None,
           cluster: ClusterSettings | None, client: Any, progress: bool, stages: Stages) -> tuple[Any, int]:
    """Inference on the cluster (the model loaded and warmed in every worker first); the result and the workers'
    peak RSS. A classical model without explicit blocks runs on the network default's blocks."""
    classical = mdl.card.kind == "classical" and not block
    chunks = default_chunks(aligned) if classical else block
    with client_scope(client, cluster or ClusterSettings()) as active:
        with stages("inference"):
            result = run_inference(view, mdl, work.group, client=active, ledger=work.ledger,
                                   options=InferenceOptions(chunks=chunks, progress=progress))
        return result, worker_peak_rss(active)


def _report(source: ZarrInput, identity: dict[str, Any], model: Model, written: Path, result: Any, started: float,
            workers_rss: int, stages: Stages, geometry: Any) -> dict[str, Any]:
    n = model.card.out_channels
    measured = scores(label_counts(result.labels, n))
    return {
        "model": model.name,
        "model_sha256": model.sha256,
        "input": {"path": source.url, "level": source.level, "array": source.array.path,
                  "sha256": identity["input_sha256"], "shape": list(geometry.shape), "zooms": list(geometry.zooms),
                  "axes": [a.name for a in source.axes], "dtype": source.dtype.name},
        "output": str(written),
        "reference": None,
        "labels": label_rows(measured, model.labels, geometry.voxel_volume_ml, has_reference=False),
        "run": run_facts(result, started=started, elements=math.prod(geometry.shape), workers_rss=workers_rss,
                         stages=stages),
    }

