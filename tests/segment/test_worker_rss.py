"""The run's "peak RSS (driver + workers)" counts each process once: in-process workers are the driver."""

from __future__ import annotations

from typing import Any

from pipeline.cluster import ClusterSettings, dask_client, worker_peak_rss


def test_in_process_workers_add_nothing_to_the_drivers_peak() -> None:
    with dask_client(ClusterSettings(workers=0)) as client:
        assert worker_peak_rss(client) == 0


def test_worker_processes_count_once_each(client1: Any) -> None:
    peak = worker_peak_rss(client1)
    assert 10 * 2**20 < peak < 8 * 2**30  # one Python worker process: tens to hundreds of MB
