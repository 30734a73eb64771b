"""The out-of-core runner (block tasks + spills through disk) equals MONAI's in-memory sliding window."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from pipeline.engine.predictor import InferenceSettings
from pipeline.engine.runner import BlockSink, block_jobs, run_block, run_jobs
from pipeline.engine.span_input import ImageSource
from pipeline.engine.windows import parse_overlap, parse_roi_size, plan_blocks, window_grid
from pipeline.io.store import Ledger, block_name
from tests.engine.test_equivalence import CASES, monai, softmax, unet

RNG = np.random.default_rng(5)


def identity(block: np.ndarray, statistics: Any) -> np.ndarray:
    return block


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from pipeline.cluster import ClusterSettings, dask_client

    with dask_client(ClusterSettings(workers=0, threads_per_worker=2, torch_threads=1)) as c:
        yield c


def _setup(tmp: Path, x: np.ndarray, roi: Any, overlap: Any, chunks: Any, *, out_channels: int,
           mode: str = "gaussian", ledger: Ledger | None = None) -> tuple[list[Any], ImageSource, BlockSink, Any]:
    spatial = x.shape[1:]
    roi_t = parse_roi_size(roi, spatial)
    grid = window_grid(spatial, roi_t, parse_overlap(overlap, len(spatial)))
    block = (chunks,) * len(spatial) if isinstance(chunks, int) else tuple(chunks)
    group = zarr.open_group(zarr.storage.LocalStore(tmp / "work.zarr"), mode="a", zarr_format=3)
    if "image" not in group:
        group.create_array("image", data=x, chunks=(x.shape[0], *block))
        group.create_array("labels", shape=spatial, chunks=block, dtype=np.uint8, fill_value=0)
        group.create_array("probabilities", shape=(out_channels, *spatial), chunks=(out_channels, *block),
                           dtype=np.float16, fill_value=0)
    store = str(tmp / "work.zarr")
    source = ImageSource(store=store, name="image", pads=tuple(a.pad_before for a in grid.axes),
                         preprocess=identity, statistics=None)
    sink = BlockSink(store=store, spill_dir=str(tmp / "spill"), dtype="uint8", out_channels=out_channels,
                     probabilities=True, ledger=ledger)
    settings = InferenceSettings(roi_size=roi_t, overlap=parse_overlap(overlap, len(spatial)), mode=mode)
    return block_jobs(plan_blocks(grid, block)), source, sink, settings


@pytest.mark.parametrize(("shape", "roi", "overlap", "chunks"), [*CASES, ((40, 37, 29), (16, 16, 16), 0.25, 7)])
def test_runner_equals_monai_in_memory(tmp_path: Path, client: Any, shape: tuple[int, ...], roi: Any,
                                       overlap: Any, chunks: int) -> None:
    """Labels, probabilities and the window count, for odd shapes, per-axis overlap, rois larger than the
    image and blocks smaller than the roi (spills then reach more than one block forward)."""
    x = RNG.standard_normal((2, *shape)).astype(np.float32)
    net = unet(len(shape))
    expected = monai(x, net, roi, overlap)
    jobs, source, sink, settings = _setup(tmp_path, x, roi, overlap, chunks, out_channels=3)
    task = functools.partial(run_block, source=source, network=net, settings=settings, sink=sink)
    seen = list(run_jobs(client, jobs, task, finished=set(), in_flight=2))
    group = zarr.open_group(zarr.storage.LocalStore(tmp_path / "work.zarr"), mode="r")
    labels = group["labels"][...]
    assert np.mean(labels == expected.argmax(0)) >= 0.9999
    np.testing.assert_allclose(group["probabilities"][...].astype(np.float32), softmax(expected), atol=2e-3)
    assert seen[-1].windows == window_grid(shape, parse_roi_size(roi, shape),
                                      parse_overlap(overlap, len(shape))).n_windows  # each window once
    assert not (tmp_path / "spill").exists() or not any((tmp_path / "spill").iterdir())  # spills consumed


def test_every_spill_is_consumed_and_targets_mirror_sources() -> None:
    grid = window_grid((70, 50, 33), (16, 16, 8), (0.25, 0.5, 0.25))
    jobs = block_jobs(plan_blocks(grid, (20, 13, 9)))
    sent = {(j.index, t) for j in jobs for t, _ in j.targets}
    received = {(s, j.index) for j in jobs for s, _ in j.sources}
    assert sent == received
    assert all(all(a <= b for a, b in zip(s, j.index, strict=True)) for j in jobs for s, _ in j.sources)


class Stop(Exception):
    pass


def _stopping(job: Any, **kwargs: Any) -> Any:
    """Fails on every block past the middle of the first axis, as a run killed halfway would."""
    if job.index[0] >= 2:
        raise Stop
    return run_block(job, **kwargs)


def test_an_interrupted_run_resumes_to_identical_labels(tmp_path: Path, client: Any) -> None:
    x = RNG.standard_normal((2, 45, 40, 21)).astype(np.float32)
    net = unet(3)
    args = ((16, 16, 8), 0.25, 12)
    whole = tmp_path / "whole"
    jobs, source, sink, settings = _setup(whole, x, *args, out_channels=3)
    task = functools.partial(run_block, source=source, network=net, settings=settings, sink=sink)
    for _ in run_jobs(client, jobs, task, finished=set(), in_flight=2):
        pass

    part = tmp_path / "part"
    (part / "done").mkdir(parents=True)
    ledger = Ledger(str(part / "done"))
    jobs, source, sink, settings = _setup(part, x, *args, out_channels=3, ledger=ledger)
    stopping = functools.partial(_stopping, source=source, network=net, settings=settings, sink=sink)
    with pytest.raises(Stop):
        for _ in run_jobs(client, jobs, stopping, finished=set(), in_flight=1):
            pass
    done = {j.index for j in jobs if block_name(j.region) in ledger.names()}
    assert 0 < len(done) < len(jobs)
    assert any(os.scandir(part / "spill"))  # finished blocks left spills for unfinished ones
    task = functools.partial(run_block, source=source, network=net, settings=settings, sink=sink)
    resumed = list(run_jobs(client, jobs, task, finished=done, in_flight=2))
    assert len(resumed) == len(jobs) - len(done)
    read = lambda p: zarr.open_group(zarr.storage.LocalStore(p / "work.zarr"), mode="r")  # noqa: E731
    np.testing.assert_array_equal(read(part)["labels"][...], read(whole)["labels"][...])
    np.testing.assert_array_equal(read(part)["probabilities"][...], read(whole)["probabilities"][...])



def test_a_recorded_block_run_again_is_skipped_not_failed(tmp_path: Path) -> None:
    """Dask reruns a task whose result died with its worker, maybe after the block was written, recorded and its
    consumed spills deleted (seen in CI: FileNotFoundError on a spill). The rerun must leave everything as it was."""
    x = RNG.standard_normal((2, 45, 40, 21)).astype(np.float32)
    net = unet(3)
    (tmp_path / "done").mkdir()
    ledger = Ledger(str(tmp_path / "done"))
    jobs, source, sink, settings = _setup(tmp_path, x, (16, 16, 8), 0.25, 12, out_channels=3, ledger=ledger)
    by_index = {job.index: job for job in jobs}
    consumer = next(job for job in jobs if job.sources)
    for index in sorted({s for s, _ in consumer.sources}):  # its sources first: they spill into it
        run_block(by_index[index], source, net, settings, sink)
    run_block(consumer, source, net, settings, sink)
    assert ledger.has_block(consumer.region)
    assert not (tmp_path / "spill" / "-".join(map(str, consumer.index))).exists()  # its spills are consumed
    group = zarr.open_group(zarr.storage.LocalStore(tmp_path / "work.zarr"), mode="r")
    before = group["labels"][...]
    again = run_block(consumer, source, net, settings, sink)  # the rerun: spills gone, record present
    assert again.windows == 0
    np.testing.assert_array_equal(group["labels"][...], before)
