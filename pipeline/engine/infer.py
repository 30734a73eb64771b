"""Tiled inference on the work store: Zarr image -> (Dask + MONAI) -> Zarr labels.

Shared by volumes and rasters: the image is (C, *spatial) in the work store, the
model a :class:`pipeline.model.models.Model`. Each output block is argmax-ed and written
by the task that merged it, so one task writes each label chunk, once.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.engine.alignment import alignment_for
from pipeline.engine.api import default_chunks
from pipeline.engine.device import device_type
from pipeline.engine.predictor import InferenceSettings
from pipeline.engine.runner import BlockSink, ImageSource, block_jobs, run_block, run_jobs
from pipeline.engine.windows import balanced_chunks, parse_overlap, plan_blocks, window_grid
from pipeline.errors import InputError
from pipeline.io.store import Ledger, block_name, create_array
from pipeline.model.models import Model

logger = logging.getLogger(__name__)

#: With default blocks, aim for at least this many block tasks per worker thread (load balance).
TASKS_PER_WORKER = 4


@dataclass(frozen=True)
class InferenceResult:
    labels: zarr.Array
    probabilities: zarr.Array | None
    seconds: float
    windows: int
    blocks: int
    chunks: tuple[int, ...]
    blocks_resumed: int = 0  #: blocks a previous, interrupted run had finished (not recomputed)
    spill_bytes_peak: int = 0  #: most bytes of block overlaps (spills) alive in the work directory at once
    backend: str = "torch"  #: what ran the network: torch, openvino, or "classical" (no network)


def label_dtype(n_labels: int) -> np.dtype:
    return np.dtype(np.uint8 if n_labels <= 256 else np.uint16)


def _load_network(ref: Any) -> str:
    ref.load()
    return ref.sha256


def preload_model(client: Any, model: Model) -> None:
    """Load the model once in every worker now (cached per process), instead of inside the first block.

    Only a head start: a worker lost meanwhile (or added later) loads it in its first task instead.
    """
    client.run(_load_network, model.ref, on_error="ignore")


def engine_fingerprint(model: Model, *, chunks: Sequence[int] | None, probabilities: bool) -> dict[str, Any]:
    """Everything besides the input that decides a block's labels: a work store made with another
    fingerprint is never resumed (see :func:`pipeline.io.store.work_store`)."""
    from pipeline.version import code_version

    return {"model": model.name, "model_sha256": model.sha256, "card": model.card.model_dump(mode="json"),
            "chunks": list(chunks) if chunks else None, "probabilities": probabilities,
            "device": device_type(None), "code_version": code_version()}


def run_inference(image: zarr.Array, model: Model, group: zarr.Group, *, client: Any,
                  chunks: Sequence[int] | None = None, probabilities: bool = False,
                  progress: bool = False, ledger: Ledger | None = None,
                  valid: zarr.Array | None = None, backend: str | None = None) -> InferenceResult:
    """Segment ``image`` (C, *spatial) from the work store into ``group['labels']``.

    With a ``ledger``, blocks it records as finished are kept and not recomputed (resume); the
    caller guarantees the store was made for the same input, model and parameters. With ``valid``
    (*spatial, bool, in the same group), invalid pixels count in no statistic, reach the network as
    :data:`~pipeline.engine.validity.NEUTRAL`, and windows without a valid pixel are skipped.
    ``backend`` overrides the card's CPU inference backend (``auto``: OpenVINO on CPU when installed).
    """
    if model.card.kind == "classical":  # weightless methods: same store and block grid, no windows
        from pipeline.engine.classical import run_classical

        return run_classical(image, model, group, client=client, chunks=chunks, probabilities=probabilities,
                             valid=valid)
    import dask
    import dask.array as da
    from tqdm import tqdm

    spatial = tuple(int(n) for n in image.shape[1:])
    if image.shape[0] != model.card.in_channels:
        raise InputError(f"model {model.name!r} needs {model.card.in_channels} channel(s), "
                         f"the input has {image.shape[0]}")
    alignment = alignment_for(image.attrs.get("geometry"), model.card)
    settings = InferenceSettings(roi_size=alignment.roi_scan if alignment else model.roi_size,
                                 overlap=parse_overlap(model.overlap, len(spatial)),
                                 sw_batch_size=model.card.sw_batch_size, alignment=alignment,
                                 out_channels=model.card.out_channels, backend=backend or model.card.backend)
    if alignment is not None:
        logger.info("windows of %s input pixels/voxels, shown to the model as %s %s", list(alignment.roi_scan),
                    list(model.roi_size), model.card.orientation or "")
    grid = window_grid(spatial, settings.roi_size, settings.overlap)
    threads = worker_threads(client)
    resuming = ledger is not None and "labels" in group
    if resuming:
        block = tuple(group["labels"].chunks)  # the interrupted run's plan, whatever the worker count now
    else:
        block = tuple(chunks) if chunks else balanced_chunks(grid, default_chunks(settings.roi_size),
                                                             TASKS_PER_WORKER * threads)
    raw = da.from_zarr(image)
    mask = None if valid is None else da.from_zarr(valid).rechunk(raw.chunks[1:])
    with dask.config.set(scheduler=client):  # this run's cluster, not whichever client is the default
        statistics = model.statistics(raw, mask)
    dtype = label_dtype(model.card.out_channels)
    if resuming:
        labels = group["labels"]
        probs = group["probabilities"] if probabilities else None
    else:
        labels = create_array(group, "labels", shape=spatial, chunks=block, dtype=dtype, channel_axis=False,
                              attributes=dict(image.attrs))
        probs = None
        if probabilities:
            probs = create_array(group, "probabilities", shape=(model.card.out_channels, *spatial),
                                 chunks=(model.card.out_channels, *block), dtype=np.float16,
                                 attributes=dict(image.attrs))
    store = str(group.store.root)
    jobs = block_jobs(plan_blocks(grid, block))
    source = ImageSource(store=store, name=image.path, pads=tuple(a.pad_before for a in grid.axes),
                         preprocess=model.preprocess_block, statistics=statistics,
                         valid=valid.path if valid is not None else None)
    sink = BlockSink(store=store, spill_dir=str(Path(store).parent / "spill"), dtype=dtype.name,
                     out_channels=model.card.out_channels, probabilities=probabilities, ledger=ledger)
    task = functools.partial(run_block, source=source, network=model.ref, settings=settings, sink=sink)
    done_names = ledger.names() if ledger is not None else set()
    finished = {job.index for job in jobs if block_name(job.region) in done_names}
    if finished:
        logger.info("resuming: %d of %d blocks already finished", len(finished), len(jobs))
    start = time.perf_counter()
    seen = None
    with tqdm(total=len(jobs), initial=len(finished), desc="blocks", unit="block", disable=not progress,
              leave=False) as bar:
        for _ in run_jobs(client, jobs, task, finished=finished, in_flight=threads):
            bar.update(1)
    seconds = time.perf_counter() - start
    return InferenceResult(labels=labels, probabilities=probs, seconds=seconds, windows=grid.n_windows,
                           blocks=len(jobs), chunks=block, blocks_resumed=len(finished),
                           spill_bytes_peak=seen.spill_bytes_peak if seen else 0,
                           backend=_backend_used(settings.backend))


def _backend_used(requested: str) -> str:
    """The backend the workers resolve for the card's models on this device (see engine/backends.py)."""
    from pipeline.engine.backends import resolve_backend

    return resolve_backend(requested, device_type(None))


def worker_threads(client: Any) -> int:
    """Task slots in the cluster: the sum of every worker's threads."""
    workers = client.scheduler_info().get("workers", {})
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))
