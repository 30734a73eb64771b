"""Dask cluster for a run: threads in this process (the default), local worker processes, or an
existing scheduler.

On one machine the in-process runtime is the fastest and leanest: the model is loaded once,
nothing is pickled between processes, and no second copy of torch is started (see
bench/RESULTS.md). Worker processes (``workers >= 1``) isolate crashes and use several
interpreters; workers are daemonic, so torch DataLoader workers are never used inside them.
Either way torch's intra-op threads are set once by a plugin so that workers x threads does
not oversubscribe the machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.errors import PipelineError, SettingsError

logger = logging.getLogger(__name__)

#: Least memory limit per worker: a worker process with torch, MONAI and a small model loaded is
#: about 0.4 GB resident, and Dask's nanny kills (and restarts, forever) a worker above 95% of its limit.
MIN_WORKER_MEMORY = 512 * 2**20
#: Host names, IPv4 and (unbracketed by Dask's parser) IPv6 addresses.
_HOST = re.compile(r"^[A-Za-z0-9_.:-]+$")


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Where blocks run. ``address`` wins over the local settings when given."""

    address: str | None = None
    workers: int = 0  #: 0: threads in this process; N >= 1: N local worker processes
    #: None: 1 (in process, one block task at a time uses every core for the network: measured as fast as two
    #: tasks sharing them, with half the task memory)
    threads_per_worker: int | None = None
    memory_limit: str = "auto"
    torch_threads: int | None = None  #: None: cores / (workers x threads) locally, 1 on a remote cluster

    def __post_init__(self) -> None:
        check_settings(self)


def max_local_workers() -> int:
    """More local worker processes than cores only compete for them, each with its own torch (~0.4 GB)."""
    return max(2, os.cpu_count() or 1)


def check_settings(settings: ClusterSettings) -> None:
    """Refuse settings Dask would fail on late (a traceback, a worker restarted forever), before any work.

    Raises
    ------
    SettingsError
        Workers or threads out of range, a memory limit that is not a size or is too small or larger
        than the machine, or a scheduler address that is not ``[scheme://]host:port``.
    """
    if settings.address is not None:
        check_address(settings.address)
    if not 0 <= settings.workers <= max_local_workers():
        raise SettingsError(f"workers must be 0..{max_local_workers()} (0: threads in this process; at most the "
                            f"cores of this machine), got {settings.workers}")
    if settings.threads_per_worker is not None and not 1 <= settings.threads_per_worker <= 64:
        raise SettingsError(f"threads per worker must be 1..64, got {settings.threads_per_worker}")
    if settings.torch_threads is not None and settings.torch_threads < 1:
        raise SettingsError(f"torch threads must be >= 1, got {settings.torch_threads}")
    memory_limit_bytes(settings.memory_limit)


def memory_limit_bytes(limit: str | int | None) -> int | None:
    """A per-worker memory limit in bytes (None for ``auto``), checked against :data:`MIN_WORKER_MEMORY`
    and the machine's RAM."""
    import psutil
    from dask.utils import format_bytes, parse_bytes

    if limit is None or limit == "auto":
        return None
    try:
        value = int(parse_bytes(limit))
    except (ValueError, TypeError):
        raise SettingsError(f"memory limit {limit!r} is not a size like 4GiB, 1500MB or 'auto'") from None
    total = psutil.virtual_memory().total
    if value < MIN_WORKER_MEMORY:
        raise SettingsError(f"memory limit {limit!r} is below the {format_bytes(MIN_WORKER_MEMORY)} a worker "
                            "needs (torch + the model)")
    if value > total:
        raise SettingsError(f"memory limit {limit!r} is more than this machine's {format_bytes(total)} of RAM")
    return value


def check_address(address: str) -> None:
    """``[scheme://]host:port`` with a scheme Dask knows, checked before any connection is tried."""
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import backends

    try:
        scheme, location = parse_address(address)
    except ValueError:
        scheme, location = "", ""
    if scheme not in backends:
        known = ", ".join(sorted(backends))
        raise SettingsError(f"Dask address {address!r}: unknown scheme {scheme!r} (known: {known})")
    if scheme in {"tcp", "tls", "ws", "wss"}:
        try:
            host, port = parse_host_port(location)
        except ValueError:
            host, port = "", 0
        if not host or not _HOST.match(host) or not 1 <= port <= 65535:
            raise SettingsError(f"Dask address {address!r} is not {scheme}://host:port (e.g. tcp://10.0.0.5:8786)")


class TorchThreads(WorkerPlugin):
    """Set torch's intra-op thread count once per worker process."""

    name = "volseg-torch-threads"

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def setup(self, worker: Any) -> None:
        from pipeline.engine.device import set_inference_threads

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


def _dashboard_address() -> str | None:
    """Serve the dashboard only when asked for debug output (``-v``): importing bokeh for it costs seconds."""
    return ":0" if logging.getLogger("pipeline").isEnabledFor(logging.DEBUG) else None


def resolved_threads(settings: ClusterSettings) -> int:
    """Threads per worker: as given, else 1."""
    return settings.threads_per_worker if settings.threads_per_worker is not None else 1


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
                                   dashboard_address=_dashboard_address(),
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
    """One worker whose threads run in this process: tasks share the driver's loaded model."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=resolved_threads(settings), processes=False,
                      memory_limit=settings.memory_limit, dashboard_address=_dashboard_address(),
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        client.register_plugin(TorchThreads(_local_torch_threads(settings)))
        yield client


def dashboard_link(client: Any) -> str | None:
    """The dashboard URL, when the scheduler serves one (needs bokeh)."""
    with contextlib.suppress(Exception):
        return str(client.dashboard_link) if client.scheduler_info().get("services", {}).get("dashboard") else None
    return None


def worker_peak_rss(client: Any) -> int:
    """Sum over workers of each worker process's peak resident memory, in bytes."""
    import resource

    def peak() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    return int(sum(client.run(peak, on_error="ignore").values()))  # a worker lost meanwhile is left out
