"""Tiled inference on the work store: Zarr image -> (Dask + MONAI) -> Zarr labels.

Shared by volumes and rasters: the image is (C, *spatial) in the work store, the
model a :class:`pipeline.models.Model`. Each output block is argmax-ed and written
by the task that merged it, so one task writes each label chunk, once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from pipeline.engine.alignment import alignment_for
from pipeline.engine.api import MergeTask, default_chunks, merge_tasks
from pipeline.engine.merger import merge_block
from pipeline.engine.predictor import InferenceSettings, Partial
from pipeline.engine.windows import balanced_chunks, parse_overlap, window_grid
from pipeline.errors import InputError
from pipeline.io.store import Ledger, block_name, create_array, write_region
from pipeline.models import Model

logger = logging.getLogger(__name__)

#: With default blocks, aim for at least this many predict tasks per worker (load balance).
TASKS_PER_WORKER = 4
#: Merges submitted ahead per worker: more keeps workers busier, fewer holds fewer partials in memory.
MERGES_IN_FLIGHT_PER_WORKER = 2


@dataclass(frozen=True)
class InferenceResult:
    labels: zarr.Array
    probabilities: zarr.Array | None
    seconds: float
    windows: int
    blocks: int
    chunks: tuple[int, ...]
    blocks_resumed: int = 0  #: blocks a previous, interrupted run had finished (not recomputed)


def label_dtype(n_labels: int) -> np.dtype:
    return np.dtype(np.uint8 if n_labels <= 256 else np.uint16)


def _merge_and_store(partials: list[Partial], lo: tuple[int, ...], hi: tuple[int, ...], store: str,
                     region: tuple[slice, ...], dtype: str, probabilities: bool, ledger: Ledger | None) -> int:
    """Merge one block, argmax it and write its label chunk, in one task: logits never leave the worker.

    The block's completion record is written last, so a record always vouches for complete chunks;
    re-running the task (a lost worker, a resumed run) rewrites only this block's own chunks.
    """
    logits = merge_block(partials, lo, hi)
    labels = np.argmax(logits, axis=0).astype(dtype)
    write_region(store, "labels", region, labels)
    if probabilities:
        shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
        write_region(store, "probabilities", (slice(None), *region), (shifted / shifted.sum(axis=0)).astype(np.float16))
    if ledger is not None:
        ledger.mark(block_name(region))
    return int(labels.size)


def _preprocess_valid(block: np.ndarray, valid: np.ndarray, model: Model, statistics: dict[str, float]) -> np.ndarray:
    return model.preprocess_block(block, statistics, valid)


def _load_network(ref: Any) -> str:
    ref.network()
    return ref.sha256


def preload_model(client: Any, model: Model) -> None:
    """Load the model once in every worker now (cached per process), instead of inside the first block.

    Only a head start: a worker lost meanwhile (or added later) loads it in its first task instead.
    """
    client.run(_load_network, model.ref, on_error="ignore")


def stream_merges(client: Any, plan: list[MergeTask], store: str, dtype: str, probabilities: bool, *,
                  in_flight: int, ledger: Ledger | None = None) -> Iterator[None]:
    """Run merge-and-store tasks in raster order, at most ``in_flight`` at a time; yield as each finishes.

    Predict tasks start only when a merge that needs them is submitted, and each partial's future
    is dropped once the last merge using it is done: memory holds a moving front of partials, not
    the whole volume's, and no partial is ever computed twice.
    """
    from distributed import as_completed

    users: dict[str, int] = {}
    for task in plan:
        for part in task.partials:
            users[part.key] = users.get(part.key, 0) + 1
    live: dict[str, Any] = {}
    needs: dict[str, list[str]] = {}  # merge future key -> the partial keys it consumed
    pending = iter(plan)
    running = as_completed()

    def submit_next() -> bool:
        task = next(pending, None)
        if task is None:
            return False
        inputs = []
        for part in task.partials:
            if part.key not in live:
                live[part.key] = client.compute(part)
            inputs.append(live[part.key])
        future = client.submit(_merge_and_store, inputs, task.lo, task.hi, store, task.region, dtype,
                               probabilities, ledger, pure=False)
        needs[future.key] = [part.key for part in task.partials]
        running.add(future)
        return True

    for _ in range(in_flight):
        submit_next()
    for future in running:
        future.result()
        for key in needs.pop(future.key):
            users[key] -= 1
            if users[key] == 0:
                del live[key]
        submit_next()
        yield


def engine_fingerprint(model: Model, *, chunks: Sequence[int] | None, probabilities: bool) -> dict[str, Any]:
    """Everything besides the input that decides a block's labels: a work store made with another
    fingerprint is never resumed (see :func:`pipeline.io.store.work_store`)."""
    import torch

    from pipeline.report import code_version

    return {"model": model.name, "model_sha256": model.sha256, "card": model.card.model_dump(mode="json"),
            "chunks": list(chunks) if chunks else None, "probabilities": probabilities,
            "device": "cuda" if torch.cuda.is_available() else "cpu", "code_version": code_version()}


def run_inference(image: zarr.Array, model: Model, group: zarr.Group, *, client: Any,
                  chunks: Sequence[int] | None = None, probabilities: bool = False,
                  progress: bool = False, ledger: Ledger | None = None,
                  valid: zarr.Array | None = None) -> InferenceResult:
    """Segment ``image`` (C, *spatial) from the work store into ``group['labels']``.

    With a ``ledger``, blocks it records as finished are kept and not recomputed (resume); the
    caller guarantees the store was made for the same input, model and parameters. With ``valid``
    (*spatial, bool), invalid pixels count in no statistic, reach the network as
    :data:`~pipeline.engine.validity.NEUTRAL`, and windows without a valid pixel are skipped.
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
        raise InputError(f"model {model.name!r} needs {model.card.in_channels} channel(s), the input has {image.shape[0]}")
    alignment = alignment_for(image.attrs.get("geometry"), model.card)
    settings = InferenceSettings(roi_size=alignment.roi_scan if alignment else model.roi_size,
                                 overlap=parse_overlap(model.overlap, len(spatial)),
                                 sw_batch_size=model.card.sw_batch_size, alignment=alignment,
                                 out_channels=model.card.out_channels)
    if alignment is not None:
        logger.info("windows of %s input pixels/voxels, shown to the model as %s %s", list(alignment.roi_scan),
                    list(model.roi_size), model.card.orientation or "")
    grid = window_grid(spatial, settings.roi_size, settings.overlap)
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    resuming = ledger is not None and "labels" in group
    if resuming:
        block = tuple(group["labels"].chunks)  # the interrupted run's plan, whatever the worker count now
    else:
        block = tuple(chunks) if chunks else balanced_chunks(grid, default_chunks(settings.roi_size),
                                                             TASKS_PER_WORKER * workers)
    raw = da.from_zarr(image)
    mask = None if valid is None else da.from_zarr(valid).rechunk(raw.chunks[1:])
    with dask.config.set(scheduler=client):  # this run's cluster, not whichever client is the default
        statistics = model.statistics(raw, mask)
    if mask is None:
        x = raw.map_blocks(model.preprocess_block, statistics, dtype=np.float32)
    else:
        x = da.map_blocks(_preprocess_valid, raw, mask, model, statistics, dtype=np.float32)
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
    plan = merge_tasks(x, model.ref, settings, chunks=block, client=client, valid=mask)
    finished = ledger.names() if ledger is not None else set()
    todo = [task for task in plan if block_name(task.region) not in finished]
    if len(todo) < len(plan):
        logger.info("resuming: %d of %d blocks already finished", len(plan) - len(todo), len(plan))
    start = time.perf_counter()
    with tqdm(total=len(plan), initial=len(plan) - len(todo), desc="blocks", unit="block", disable=not progress,
              leave=False) as bar:
        for _ in stream_merges(client, todo, store, dtype.name, probabilities,
                               in_flight=MERGES_IN_FLIGHT_PER_WORKER * workers + 2, ledger=ledger):
            bar.update(1)
    seconds = time.perf_counter() - start
    return InferenceResult(labels=labels, probabilities=probs, seconds=seconds, windows=grid.n_windows,
                           blocks=len(plan), chunks=block, blocks_resumed=len(plan) - len(todo))
