"""The default runtime sizes its concurrency per plan: one block task on small plans, two (each on its own
OpenVINO stream) on large ones; other runtimes use every slot they have. Labels do not depend on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from pipeline.cluster import ClusterSettings, adaptive_tasks, dask_client
from pipeline.config.cluster import adaptive
from pipeline.engine.infer import ADAPTIVE_FROM_BLOCKS, cluster_slots, tasks_at_once
from pipeline.segment import segment_volume
from pipeline.segment.resources import planned_slots


def test_two_tasks_only_on_large_plans_and_only_on_openvino() -> None:
    assert tasks_at_once(ADAPTIVE_FROM_BLOCKS - 1, 2, "openvino") == 1
    assert tasks_at_once(ADAPTIVE_FROM_BLOCKS, 2, "openvino") == 2
    assert tasks_at_once(10 * ADAPTIVE_FROM_BLOCKS, 2, "torch") == 1  # torch's threads would oversubscribe
    assert tasks_at_once(10 * ADAPTIVE_FROM_BLOCKS, 1, "openvino") == 1  # a 1-core machine


def test_only_the_plain_in_process_runtime_is_adaptive() -> None:
    assert adaptive(ClusterSettings())
    assert not adaptive(ClusterSettings(threads_per_worker=1))
    assert not adaptive(ClusterSettings(workers=1))
    assert not adaptive(ClusterSettings(address="tcp://127.0.0.1:8786"))
    assert planned_slots(ClusterSettings(), None)[1] == adaptive_tasks()
    assert planned_slots(ClusterSettings(workers=2), None)[1] == 0
    assert planned_slots(ClusterSettings(), None)[0] == 1  # blocks are balanced for one task


@pytest.mark.parametrize(("settings", "is_adaptive", "slots"), [(ClusterSettings(), True, 1),
                                                                (ClusterSettings(threads_per_worker=2), False, 2),
                                                                (ClusterSettings(workers=1, threads_per_worker=1),
                                                                 False, 1)])
def test_the_cluster_says_whether_it_is_the_adaptive_one(settings: ClusterSettings, is_adaptive: bool,
                                                         slots: int) -> None:
    with dask_client(settings) as client:
        assert cluster_slots(client).adaptive == (adaptive_tasks() if is_adaptive else None)
        assert planned_slots(settings, client)[1] == (adaptive_tasks() if is_adaptive else 0)
        assert planned_slots(settings, client)[0] == slots


def _segment(scan: Path, card: Path, out: Path, settings: ClusterSettings, chunks: tuple[int, ...]) -> dict[str, Any]:
    with dask_client(settings) as client:
        result = segment_volume(scan, model=card, output=out, client=client, chunks=chunks)
    return json.loads(result.report_json.read_text())["run"]


@pytest.mark.slow
def test_a_large_plan_runs_two_tasks_at_once_with_the_labels_of_one(tmp_path: Path, data_dir: Path,
                                                                     tiny_card: Path) -> None:
    scan = data_dir / "medical" / "example_ct_sm.nii.gz"  # 122 x 101 x 30, roi 32 x 32 x 16
    chunks = (32, 32, 16)  # 4 x 4 x 2 = 32 blocks
    both = _segment(scan, tiny_card, tmp_path / "both.nii.gz", ClusterSettings(), chunks)
    one = _segment(scan, tiny_card, tmp_path / "one.nii.gz", ClusterSettings(threads_per_worker=1), chunks)
    assert both["blocks"] == one["blocks"] >= ADAPTIVE_FROM_BLOCKS
    assert both["backend"] == "openvino"
    assert both["block_tasks_at_once"] == adaptive_tasks()
    assert one["block_tasks_at_once"] == 1
    a = np.asanyarray(nib.load(tmp_path / "both.nii.gz").dataobj)
    b = np.asanyarray(nib.load(tmp_path / "one.nii.gz").dataobj)
    assert (a == b).mean() >= 0.9999  # the stream's thread count may move a near-tie, nothing else
    small = _segment(scan, tiny_card, tmp_path / "small.nii.gz", ClusterSettings(), (64, 64, 32))
    assert small["blocks"] < ADAPTIVE_FROM_BLOCKS
    assert small["block_tasks_at_once"] == 1
