"""The machine side of a run: the slots it will have, whether its plan fits, and the cluster it runs on.

Shared by every domain through the driver; pure helpers over :class:`~pipeline.config.cluster.ClusterSettings`
and a Dask client, with ``psutil`` for the machine's RAM.
"""

from __future__ import annotations

import contextlib
import logging
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.cluster import adaptive_tasks, dashboard_link, dask_client, resolved_threads
from pipeline.config.cluster import ClusterSettings, adaptive, memory_limit_bytes
from pipeline.engine.infer import cluster_slots
from pipeline.segment.plan_estimate import PlanEstimate, check_plan

logger = logging.getLogger(__name__)


def peak_rss_bytes() -> int:
    """This process's peak resident memory."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def planned_slots(cluster: ClusterSettings | None, client: Any) -> tuple[int, int]:
    """The slots the run's blocks are balanced over (worker threads in all; 1 for the default runtime or a
    scheduler not yet reached), and the most block tasks the default runtime may run at once (it picks per
    plan; 0 for other runtimes)."""
    if client is not None:
        slots = cluster_slots(client)
        return slots.balanced_for, slots.adaptive or 0
    settings = cluster or ClusterSettings()
    if settings.address:
        return 1, 0
    if adaptive(settings):
        return 1, adaptive_tasks()
    return max(1, settings.workers) * resolved_threads(settings), 0


def local_processes(cluster: ClusterSettings | None, client: Any) -> int:
    """Local worker processes the run will start (0: in-process threads, or someone else's cluster)."""
    settings = cluster or ClusterSettings()
    return 0 if client is not None or settings.address else settings.workers


def check_capacity(plan: PlanEstimate, *, source: Path, work_root: Path, cluster: ClusterSettings | None,
                   client: Any) -> None:
    """:func:`pipeline.segment.plan_estimate.check_plan` with this run's memory limit: a local cluster's (auto:
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
