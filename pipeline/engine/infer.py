"""Tiled inference on the work store: Zarr image -> (Dask + MONAI) -> Zarr labels.

Shared by volumes and rasters: the image is (C, *spatial) in the work store, the
model a :class:`pipeline.model.models.Model`. Each output block is argmax-ed and written
by the task that merged it, so one task writes each label chunk, once.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.config.cluster import ADAPTIVE_RESOURCE
from pipeline.device import device_type
from pipeline.engine.alignment import alignment_for
from pipeline.engine.api import default_chunks
from pipeline.engine.predictor import InferenceSettings
from pipeline.engine.result import InferenceResult
from pipeline.engine.runner import (
    BlockJob,
    BlockSink,
    Index,
    block_jobs,
    run_block,
    run_jobs,
    warm_forward,
)
from pipeline.engine.span_input import ImageSource
from pipeline.engine.tta import mirror_axes
from pipeline.engine.windows import balanced_chunks, parse_overlap, plan_blocks, window_grid
from pipeline.errors import InputError
from pipeline.io.store import Ledger, block_name, create_array, store_root, work_array
from pipeline.model.intensity import Statistics, needs_statistics
from pipeline.model.models import Model

logger = logging.getLogger(__name__)

#: With default blocks, aim for at least this many block tasks per worker thread (load balance).
TASKS_PER_WORKER = 4
#: The default runtime runs several block tasks at once (each on its own OpenVINO stream, the cores shared
#: out) from this many blocks on, and one task on every core below it. A task's network drains at its
#: block's end (last spills, labels, writing, the next read): ~8 of 47 s at 138 Mvox, 80 blocks, which a
#: second task fills. Its cost is a second ring and input, the same whatever the volume's size, which a
#: small plan need not pay (bench/RESULTS.md, "Runtimes").
ADAPTIVE_FROM_BLOCKS = 16


def label_dtype(n_labels: int) -> np.dtype:
    return np.dtype(np.uint8 if n_labels <= 256 else np.uint16)


def engine_fingerprint(model: Model, *, chunks: Sequence[int] | None, probabilities: bool,
                       tta: str = "none") -> dict[str, Any]:
    """Everything besides the input that decides a block's labels: a work store made with another
    fingerprint is never resumed (see :func:`pipeline.io.store.work_store`)."""
    from pipeline.version import code_version

    return {"model": model.name, "model_sha256": model.sha256, "card": model.card.model_dump(mode="json"),
            "chunks": list(chunks) if chunks else None, "probabilities": probabilities,
            "tta": tta, "device": device_type(None), "code_version": code_version()}


@dataclass(frozen=True, slots=True)
class InferenceOptions:
    """What a run asks of the engine besides the image and the model; the defaults are a plain run."""

    chunks: Sequence[int] | None = None  #: block side per axis (None: the default blocks, balanced over the workers)
    probabilities: bool = False  #: also keep the softmax probabilities in the work store
    progress: bool = False  #: draw a progress bar over the blocks
    backend: str | None = None  #: CPU inference backend overriding the card's
    tta: str = "none"  #: test-time mirroring (:mod:`pipeline.engine.tta`)


PLAIN = InferenceOptions()


def run_inference(image: zarr.Array | Any, model: Model, group: zarr.Group, *, client: Any,
                  options: InferenceOptions = PLAIN, ledger: Ledger | None = None,
                  valid: zarr.Array | None = None) -> InferenceResult:
    """Segment ``image`` (C, *spatial) from the work store into ``group['labels']``.

    ``image`` may also live outside the work store (read in place, never copied): then it is a picklable
    array with ``shape``, ``attrs`` and ``to_dask()`` (:class:`pipeline.io.zarr_source.ZarrView`).

    With a ``ledger``, blocks it records as finished are kept and not recomputed (resume); the
    caller guarantees the store was made for the same input, model and parameters. With ``valid``
    (*spatial, bool, in the same group), invalid pixels count in no statistic, reach the network as
    :data:`~pipeline.model.intensity.NEUTRAL`, and windows without a valid pixel are skipped.
    ``options.backend`` overrides the card's CPU inference backend (``auto``: OpenVINO on CPU when installed).
    ``options.tta``: ``mirror``/``mirror-all`` average each window over its mirrorings (:mod:`pipeline.engine.tta`).
    """
    chunks, probabilities, progress = options.chunks, options.probabilities, options.progress
    if model.card.kind == "classical":  # weightless methods: same store and block grid, no windows
        from pipeline.engine.classical import run_classical

        return run_classical(image, model, group, client=client, chunks=chunks, probabilities=probabilities,
                             valid=valid)
    spatial = tuple(int(n) for n in image.shape[1:])
    settings = _settings(image, model, options.backend, options.tta)
    grid = window_grid(spatial, settings.roi_size, settings.overlap)
    slots = cluster_slots(client)
    resuming = ledger is not None and "labels" in group
    if resuming:
        block = tuple(work_array(group, "labels").chunks)  # the interrupted run's plan, whatever the workers now
    else:
        block = tuple(chunks) if chunks else balanced_chunks(grid, default_chunks(settings.roi_size),
                                                             TASKS_PER_WORKER * slots.balanced_for)
    in_store = isinstance(image, zarr.Array)
    statistics = _statistics(model, image, valid, client)
    dtype = label_dtype(model.card.out_channels)
    labels, probs = _output_arrays(group, image, model.card.out_channels, block, dtype, probabilities=probabilities,
                                   resuming=resuming)
    store = store_root(group)
    jobs = block_jobs(plan_blocks(grid, block))
    backend = _backend_used(settings.backend)
    in_flight = slots.total if slots.adaptive is None else tasks_at_once(len(jobs), slots.adaptive, backend)
    settings = dataclasses.replace(settings, streams=min(in_flight, slots.per_process))
    logger.debug("%d blocks, %d block task(s) at once, %d stream(s) per process", len(jobs), in_flight,
                 settings.streams)
    source = ImageSource(store=store, name=image.path if in_store else "", array=None if in_store else image,
                         pads=tuple(a.pad_before for a in grid.axes),
                         preprocess=model.preprocess_block, statistics=statistics,
                         valid=valid.path if valid is not None else None)
    sink = BlockSink(store=store, spill_dir=str(Path(store).parent / "spill"), dtype=dtype.name,
                     out_channels=model.card.out_channels, probabilities=probabilities, ledger=ledger)
    task = functools.partial(run_block, source=source, network=model.ref, settings=settings, sink=sink)
    if any(job.windows is not None for job in jobs):  # load and compile in every worker before the first task
        client.run(warm_forward, model.ref, settings, int(image.shape[0]), on_error="ignore")
    finished, seconds, spill_peak = _run_blocks(client, jobs, task, ledger=ledger, in_flight=in_flight,
                                                progress=progress)
    return InferenceResult(labels=labels, probabilities=probs, seconds=seconds, windows=grid.n_windows,
                           blocks=len(jobs), chunks=block, blocks_resumed=len(finished),
                           spill_bytes_peak=spill_peak, backend=backend, tasks_at_once=in_flight)


def _statistics(model: Model, image: Any, valid: zarr.Array | None, client: Any) -> Statistics:
    """The card's global intensity statistics, streamed over the image's chunks on ``client``. A pointwise
    preprocessing needs none: then no Dask array is built and ``dask.array`` is not imported (0.4 s of start-up)."""
    if not needs_statistics(model.card.preprocess):
        return {}
    import dask
    import dask.array as da

    raw = da.from_zarr(image) if isinstance(image, zarr.Array) else image.to_dask()
    mask = None if valid is None else da.from_zarr(valid).rechunk(raw.chunks[1:])
    with dask.config.set(scheduler=client):  # this run's cluster, not whichever client is the default
        return model.statistics(raw, mask)


def _settings(image: Any, model: Model, backend: str | None, tta: str) -> InferenceSettings:
    """The windows' settings for ``model`` on ``image`` (C, *spatial): roi (in input pixels when the model sees
    the input resampled), overlap, batch, backend and mirrorings; the input's channel count checked first."""
    ndim = len(image.shape) - 1
    if image.shape[0] != model.card.in_channels:
        raise InputError(f"model {model.name!r} needs {model.card.in_channels} channel(s), "
                         f"the input has {image.shape[0]}")
    alignment = alignment_for(image.attrs.get("geometry"), model.card)
    settings = InferenceSettings(roi_size=alignment.roi_scan if alignment else model.roi_size,
                                 overlap=parse_overlap(model.overlap, ndim),
                                 sw_batch_size=model.card.sw_batch_size, alignment=alignment,
                                 out_channels=model.card.out_channels, backend=backend or model.card.backend,
                                 mirror_axes=mirror_axes(tta, ndim, model.card))
    if alignment is not None:
        logger.info("windows of %s input pixels/voxels, shown to the model as %s %s", list(alignment.roi_scan),
                    list(model.roi_size), model.card.orientation or "")
    return settings


def _output_arrays(group: zarr.Group, image: Any, out_channels: int, block: tuple[int, ...], dtype: np.dtype, *,
                   probabilities: bool, resuming: bool) -> tuple[zarr.Array, zarr.Array | None]:
    """The work store's ``labels`` (and ``probabilities``) arrays: the interrupted run's when resuming, else new
    ones on the block grid, carrying the image's attributes."""
    if resuming:
        return work_array(group, "labels"), work_array(group, "probabilities") if probabilities else None
    spatial = tuple(int(n) for n in image.shape[1:])
    labels = create_array(group, "labels", shape=spatial, chunks=block, dtype=dtype, channel_axis=False,
                          attributes=dict(image.attrs))
    probs = None
    if probabilities:
        probs = create_array(group, "probabilities", shape=(out_channels, *spatial), chunks=(out_channels, *block),
                             dtype=np.float16, attributes=dict(image.attrs))
    return labels, probs


def _run_blocks(client: Any, jobs: list[BlockJob], task: Callable[[BlockJob], Any], *, ledger: Ledger | None,
                in_flight: int, progress: bool) -> tuple[set[Index], float, int]:
    """Run every block task the ``ledger`` does not record as finished; (the finished ones, seconds taken,
    peak bytes of spills alive on disk)."""
    from tqdm import tqdm

    done_names = ledger.names() if ledger is not None else set()
    finished = {job.index for job in jobs if block_name(job.region) in done_names}
    if finished:
        logger.info("resuming: %d of %d blocks already finished", len(finished), len(jobs))
    start = time.perf_counter()
    spill_peak = 0
    with tqdm(total=len(jobs), initial=len(finished), desc="blocks", unit="block", disable=not progress,
              leave=False) as bar:
        for seen in run_jobs(client, jobs, task, finished=finished, in_flight=in_flight):
            spill_peak = seen.spill_bytes_peak
            bar.update(1)
    return finished, time.perf_counter() - start, spill_peak


def _backend_used(requested: str) -> str:
    """The backend the workers resolve for the card's models on this device (see engine/backends.py)."""
    from pipeline.engine.backends import resolve_backend

    return resolve_backend(requested, device_type(None))


def tasks_at_once(blocks: int, slots: int, backend: str) -> int:
    """Block tasks the default runtime runs at once on a plan of ``blocks`` with ``slots`` threads: all of them
    from :data:`ADAPTIVE_FROM_BLOCKS` blocks on when the network runs on OpenVINO (whose streams split the cores
    between concurrent calls; torch's threads would oversubscribe them), else one."""
    return max(1, slots) if blocks >= ADAPTIVE_FROM_BLOCKS and backend == "openvino" else 1


@dataclass(frozen=True)
class ClusterSlots:
    """A cluster's task slots, read from the scheduler once (each read is a round trip to it)."""

    total: int  #: every worker's threads
    per_process: int  #: the most threads of one worker: the tasks one process may run at once
    #: the default runtime's threads when this is its in-process cluster (one worker carrying
    #: :data:`~pipeline.config.cluster.ADAPTIVE_RESOURCE`), else None: every slot is used
    adaptive: int | None

    @property
    def balanced_for(self) -> int:
        """The slots default blocks are balanced over: one for the default runtime, whose extra tasks are for
        large plans only."""
        return 1 if self.adaptive else self.total


def cluster_slots(client: Any) -> ClusterSlots:
    """``client``'s :class:`ClusterSlots`."""
    workers = list(client.scheduler_info().get("workers", {}).values())
    threads = [max(1, int(w.get("nthreads", 1))) for w in workers]
    marked = len(workers) == 1 and ADAPTIVE_RESOURCE in (workers[0].get("resources") or {})
    return ClusterSlots(total=max(1, sum(threads)), per_process=max(threads, default=1),
                        adaptive=threads[0] if marked else None)
