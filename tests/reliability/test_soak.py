"""Soak: 20 scans and one broken file through the flow on 2 workers, one worker killed midway.

Every good scan's mask equals a single run's, the broken file is reported (the run still
completes), and memory does not grow from scan to scan: driver + workers RSS after the last scan
is at most 1.1x what it was after the fifth.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipeline.io.hashing import sha256_file
from tests.factories import make_card
from tests.flows.conftest import write_catalog
from tests.reliability.helpers import many_block_scan

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

SCANS = 20
KILL_AFTER = 8  #: finished scans before one worker is killed
EARLY = 5  #: the RSS baseline: after this many finished scans


def _workers(exclude: set[int]) -> list[psutil.Process]:
    """This process's Dask worker children that are not in ``exclude`` (other clusters' workers)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.pid not in exclude and process.status() != psutil.STATUS_ZOMBIE \
                    and "multiprocessing" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:  # exited meanwhile
            pass
    return found


def _rss(processes: list[psutil.Process]) -> int:
    total = psutil.Process().memory_info().rss
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return total


def test_soak(tmp_path: Path, client2: Any) -> None:
    from flows.segment_new_scans import segment_new_scans
    from pipeline import segment_volume

    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(SCANS):
        many_block_scan(scans / f"s{i:02d}.nii.gz", shape=(64, 64, 32), seed=i)
    (scans / f"s{SCANS // 2:02d}b.nii.gz").write_bytes(b"\x1f\x8b broken midway")  # sorts among the good ones
    make_card(tmp_path, name="tiny", roi_size=(32, 32, 16))
    catalog = write_catalog(tmp_path, [{"name": "ct", "kind": "medical", "directory": "scans",
                                        "glob": "*.nii.gz", "model": "tiny.yaml"}],
                            cluster={"workers": 2, "threads_per_worker": 1, "memory_limit": "2GiB"})
    out = tmp_path / "out" / "ct"
    others = {p.pid for p in psutil.Process().children(recursive=True)}  # the session clusters' workers
    samples: dict[int, tuple[int, int]] = {}  # finished scans -> (driver + workers RSS, live workers)
    killed: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.02):
            done = len(list(out.glob("*.manifest.json")))
            workers = _workers(others)
            if done not in samples and len(workers) == 2:
                samples[done] = (_rss(workers), len(workers))
            if done >= KILL_AFTER and not killed and workers:
                killed.append(workers[0].pid)
                os.kill(workers[0].pid, signal.SIGKILL)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        state = segment_new_scans(catalog=str(catalog), return_state=True)
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert state.is_completed(), state
    summary = state.result()
    assert killed, "no worker was killed"
    assert summary["failed"] == [str(scans / f"s{SCANS // 2:02d}b.nii.gz")], summary["failed"]
    assert len(summary["done"]) == SCANS
    early = min(k for k in samples if k >= EARLY)
    last = max(samples)
    assert last == SCANS + 1, samples  # sampled after the last scan, before the cluster closed
    growth = samples[last][0] / samples[early][0]
    print(f"soak RSS (driver + 2 workers): after scan {early} {samples[early][0] / 2**20:.0f} MiB, "
          f"after scan {last} {samples[last][0] / 2**20:.0f} MiB, growth {growth:.3f}x")
    assert growth <= 1.1
    (tmp_path / "single").mkdir()
    for i in range(SCANS):
        single = segment_volume(scans / f"s{i:02d}.nii.gz", model=tmp_path / "tiny.yaml",
                                output=tmp_path / "single" / f"s{i:02d}.nii.gz", client=client2)
        assert sha256_file(single.mask) == sha256_file(out / f"s{i:02d}_seg.nii.gz"), i
