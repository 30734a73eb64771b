"""Where blocks run, as a value: :class:`ClusterSettings`, checked when it is made, and the catalog's
:class:`ClusterConfig` that makes one.

Why in ``config/``: the catalog, the CLI and the flows all build one, and none of them should import
Dask's scheduler to do so; :mod:`pipeline.cluster` turns a value into a running cluster.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.errors import SettingsError

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
    #: None: in process, the engine picks per plan (:func:`adaptive`); else the block tasks each worker runs at once
    threads_per_worker: int | None = None
    memory_limit: str = "auto"
    torch_threads: int | None = None  #: None: cores / (workers x threads) locally, 1 on a remote cluster

    def __post_init__(self) -> None:
        check_settings(self)


#: Dask resource that the default runtime's in-process worker carries: the engine then picks per plan how many
#: of its :data:`ADAPTIVE_TASKS` threads run block tasks (:func:`pipeline.engine.infer.tasks_at_once`).
ADAPTIVE_RESOURCE = "volseg-adaptive"
#: The most block tasks the default runtime runs at once.
ADAPTIVE_TASKS = 2


def adaptive(settings: ClusterSettings) -> bool:
    """Whether these settings are the default runtime, which sizes its concurrency per plan: threads in this
    process, no thread count asked for."""
    return settings.address is None and settings.workers == 0 and settings.threads_per_worker is None


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


class ClusterConfig(BaseModel):
    """One Dask cluster per flow run: a LocalCluster with these sizes, or an existing scheduler."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    address: str | None = Field(default=None, description="e.g. tcp://scheduler:8786; wins over the local sizes")
    workers: int = Field(default=2, ge=1)
    threads_per_worker: int = Field(default=1, ge=1)
    memory_limit: str = Field(default="auto", description="per worker, e.g. 4GiB; auto = RAM / workers")
    torch_threads: int | None = Field(default=None, ge=1)

    @field_validator("memory_limit")
    @classmethod
    def _bytes(cls, value: str) -> str:
        if value != "auto":
            from dask.utils import parse_bytes

            try:
                parse_bytes(value)
            except (ValueError, TypeError) as e:
                raise ValueError(f"not a memory size like '4GiB' or 'auto', got {value!r}") from e
        return value

    def settings(self) -> ClusterSettings:
        return ClusterSettings(address=self.address, workers=self.workers, threads_per_worker=self.threads_per_worker,
                               memory_limit=self.memory_limit, torch_threads=self.torch_threads)
