"""Dask cluster for a run: threads in this process (the default), local worker processes, or an
existing scheduler.

On one machine the in-process runtime is the fastest and leanest: the model is loaded once,
nothing is pickled between processes, and no second copy of torch is started (see
bench/RESULTS.md, "Runtimes"). With no ``--threads`` its worker has two threads and the engine
picks per plan how many block tasks run at once (:func:`pipeline.engine.infer.tasks_at_once`).
Worker processes (``workers >= 1``) isolate crashes and use several interpreters; workers are
daemonic, so torch DataLoader workers are never used inside them. Either way torch's intra-op
threads are set once by a plugin so that workers x threads does not oversubscribe the machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.config.cluster import ADAPTIVE_RESOURCE, ADAPTIVE_TASKS, ClusterSettings, adaptive
from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

class TorchThreads(WorkerPlugin):
    """Set torch's intra-op thread count once per worker process."""

    name = "volseg-torch-threads"

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def setup(self, worker: Any) -> None:
        from pipeline.device import set_inference_threads

        set_inference_threads(self.threads)  # torch's too, now or when it is imported


class IgnoreInterrupt(WorkerPlugin):
    """Local workers ignore SIGINT: a terminal's Ctrl-C reaches the whole process group, and only the
    driver should act on it (stop the cluster, keep the work store, say how to resume)."""

    name = "volseg-ignore-interrupt"

    def setup(self, worker: Any) -> None:
        _ignore_sigint()


def _ignore_sigint() -> Any:
    """Ignore SIGINT from now on (main thread only); return the previous handler, or None."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _spawning_without_sigint() -> Iterator[None]:
    """Processes started in this block inherit SIG_IGN for SIGINT (Python keeps an inherited
    SIG_IGN), so workers never see a Ctrl-C, not even before their plugins run."""
    import signal

    previous = _ignore_sigint()
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _dashboard() -> dict[str, Any]:
    """LocalCluster arguments: the dashboard only when asked for debug output (``-v``; importing bokeh for it
    costs seconds). The scheduler's HTTP server always listens; on a free port (``:0``), not Dask's default
    8787, which another cluster may hold: then Dask prints a "Port 8787 is already in use" warning into a
    user's terminal (seen while the test suite's own clusters ran)."""
    show = logging.getLogger("pipeline").isEnabledFor(logging.DEBUG)
    return {"dashboard_address": ":0" if show else "127.0.0.1:0", "scheduler_kwargs": {"dashboard": show}}


def resolved_threads(settings: ClusterSettings) -> int:
    """Threads per worker: as given, else 1."""
    return settings.threads_per_worker if settings.threads_per_worker is not None else 1


def adaptive_tasks() -> int:
    """Threads of the default runtime's worker: :data:`~pipeline.config.cluster.ADAPTIVE_TASKS`, at most the cores."""
    return max(1, min(ADAPTIVE_TASKS, os.cpu_count() or 1))


def _local_torch_threads(settings: ClusterSettings) -> int:
    """torch (and OpenVINO) threads per process: in process every core, since the network calls of
    concurrent tasks queue on one compiled model anyway; else the cores shared out over the processes."""
    if settings.torch_threads is not None:
        return settings.torch_threads
    cores = max(1, os.cpu_count() or 1)
    if settings.workers == 0:
        return cores
    return max(1, cores // (settings.workers * resolved_threads(settings)))


def worker_environ() -> dict[str, Any]:
    """The Nanny's pre-spawn environment minus ``MALLOC_TRIM_THRESHOLD_``.

    Dask sets it to 64 KiB to return memory to the OS sooner, but an explicit trim
    threshold switches off glibc's dynamic mmap threshold: every activation tensor
    is then mmap'd and page-faulted afresh, which we measured to double conv3d time
    (54 -> 108 ms per window). Peak RSS, what we bound, is unaffected by keeping freed pages.
    """
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return environ


@contextlib.contextmanager
def dask_client(settings: ClusterSettings) -> Iterator[Any]:
    """A connected ``distributed.Client`` for the duration of the block; the cluster is closed after."""
    from distributed import Client, LocalCluster

    if settings.address:
        try:
            client = Client(settings.address, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise PipelineError(f"cannot reach Dask scheduler at {settings.address} ({e})") from e
        threads = settings.torch_threads or 1
        with client:
            client.register_plugin(TorchThreads(threads))
            yield client
        return
    if settings.workers < 0 or resolved_threads(settings) < 1:
        raise PipelineError(f"workers must be >= 0 and threads per worker >= 1, got {settings.workers}, "
                            f"{settings.threads_per_worker}")
    if settings.workers == 0:
        with _in_process_client(settings) as client:
            yield client
        return
    import dask

    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}):
        with _spawning_without_sigint():
            cluster = LocalCluster(n_workers=settings.workers, threads_per_worker=resolved_threads(settings),
                                   memory_limit=settings.memory_limit, processes=True,
                                   **_dashboard(),
                                   silence_logs=logging.ERROR)
        with _driver_logs_restored(), cluster, Client(cluster) as client:
            client.register_plugin(IgnoreInterrupt())  # also for workers the nannies restart later
            client.register_plugin(TorchThreads(_local_torch_threads(settings)))
            try:
                yield client
            finally:
                _quiet_shutdown(client)


#: Loggers that report a cluster's shutdown races (heartbeats to a closed scheduler, a nanny killing a
#: slow worker) as errors and warnings after the run's result is already safe.
SHUTDOWN_LOGGERS = ("distributed.worker", "distributed.nanny", "distributed.core", "distributed.comm")


def _silence_worker_logs() -> None:
    for name in SHUTDOWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _quiet_shutdown(client: Any) -> None:
    """Silence shutdown logs in the workers and in this process (the nannies) before the cluster closes:
    a worker whose heartbeat races the scheduler's shutdown logs "Failed to communicate with scheduler
    during heartbeat" with a traceback (about 1 run in 20) after the run has succeeded. Errors during
    the run are unaffected; :func:`_driver_logs_restored` restores this process's levels after the close."""
    with contextlib.suppress(Exception):
        client.run(_silence_worker_logs, on_error="ignore")
    _silence_worker_logs()


@contextlib.contextmanager
def _driver_logs_restored() -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in SHUTDOWN_LOGGERS}
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _in_process_client(settings: ClusterSettings) -> Iterator[Any]:
    """One worker whose threads run in this process: tasks share the driver's loaded model.

    With no thread count asked for, the worker has :data:`~pipeline.config.cluster.ADAPTIVE_TASKS` threads (at
    most the cores) and carries :data:`~pipeline.config.cluster.ADAPTIVE_RESOURCE`: the engine uses one of them
    on a small plan and all of them on a large one."""
    from distributed import Client, LocalCluster

    extra: dict[str, Any] = {}
    threads = resolved_threads(settings)
    if adaptive(settings):
        threads = adaptive_tasks()
        extra["resources"] = {ADAPTIVE_RESOURCE: threads}
    with _driver_logs_restored(), LocalCluster(
            n_workers=1, threads_per_worker=threads, processes=False,
            memory_limit=settings.memory_limit, **_dashboard(),
            silence_logs=logging.ERROR, **extra) as cluster, Client(cluster) as client:
        client.register_plugin(TorchThreads(_local_torch_threads(settings)))
        try:
            yield client
        finally:
            _quiet_shutdown(client)  # the in-process worker's heartbeat races the close as well (seen here)


def lost_worker(error: BaseException) -> bool:
    """Whether ``error`` is the scheduler giving up on a task whose workers died (KilledWorker): the input and
    model were fine, so a run's work store is kept for resuming (``keep`` of :func:`pipeline.io.store.work_store`)."""
    from distributed import KilledWorker

    return isinstance(error, KilledWorker)


def dashboard_link(client: Any) -> str | None:
    """The dashboard URL, when the scheduler serves one (needs bokeh)."""
    with contextlib.suppress(Exception):
        return str(client.dashboard_link) if client.scheduler_info().get("services", {}).get("dashboard") else None
    return None


def worker_peak_rss(client: Any) -> int:
    """Sum over worker processes of each one's peak resident memory, in bytes; 0 for in-process workers.

    Workers in this very process (the default runtime) are the driver, whose peak the caller counts: adding
    them again doubled the "driver + workers" figure. A worker lost meanwhile is left out.
    """
    import resource

    def peak() -> tuple[int, int]:
        return os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    per_process = dict(client.run(peak, on_error="ignore").values())  # several workers in one process: once
    return int(sum(rss for pid, rss in per_process.items() if pid != os.getpid()))
