"""Where and on how many threads the network runs, decided without importing torch.

Importing torch (and MONAI with it) costs seconds and ~400 MB per process. A CPU run whose network is
already converted for OpenVINO (:mod:`pipeline.engine.backends`) needs neither, so questions such as
"is there a GPU?" and "how many intra-op threads?" are answered here and torch is asked only when it is
already imported or a GPU may exist.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

#: Files an NVIDIA driver creates; without any of them torch cannot see a CUDA device either.
_NVIDIA_MARKERS = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0")

_threads: list[int | None] = [None]


def cuda_available() -> bool:
    """Whether torch would find a CUDA device; imports torch only where a driver is present."""
    if "torch" not in sys.modules and not any(Path(p).exists() for p in _NVIDIA_MARKERS):
        return False
    import torch

    return bool(torch.cuda.is_available())


def device_type(requested: str | None) -> str:
    """``cuda`` / ``cpu`` (the part before any ``:index``): as requested, else CUDA when available."""
    if requested is not None:
        return str(requested).split(":", 1)[0]
    return "cuda" if cuda_available() else "cpu"


def set_inference_threads(threads: int) -> None:
    """Intra-op threads for the network (torch and OpenVINO) in this process; torch is told now if it is
    loaded, else when :func:`torch_with_threads` loads it."""
    _threads[0] = max(1, int(threads))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(_threads[0])


def inference_threads() -> int:
    """What :func:`set_inference_threads` set, else torch's own count if loaded, else the cores."""
    if _threads[0] is not None:
        return _threads[0]
    if "torch" in sys.modules:
        return int(sys.modules["torch"].get_num_threads())
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def torch_with_threads():
    """``import torch`` with this process's inference thread count applied."""
    import torch

    if _threads[0] is not None and torch.get_num_threads() != _threads[0]:
        torch.set_num_threads(_threads[0])
    return torch


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_FREED_MEMORY_BYTES = 1 << 20
_freed_memory_returned: list[bool] = [False]


def return_freed_memory() -> bool:
    """Make glibc hand freed blocks of 1 MiB and more back to the system, once per process; True if set.

    glibc raises its mmap threshold as large arrays are freed, so a block task's temporaries end up
    on the heap and stay resident after the task: a run's peak then creeps with the number of blocks
    (measured: 336 MB at the end of a 64-block run vs 255 MB with this set). Fixed thresholds stop that.
    Not done once torch is imported: its conv3d temporaries, mmap'd and faulted afresh at every call,
    ran 2x slower (see :func:`pipeline.cluster.worker_environ`); on the torch-free OpenVINO route the
    network's memory is the plugin's own, allocated at compile time.
    """
    if _freed_memory_returned[0] or "torch" in sys.modules:
        return _freed_memory_returned[0]
    mallopt = _glibc("mallopt")
    ok = mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, _FREED_MEMORY_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _FREED_MEMORY_BYTES))
    _freed_memory_returned[0] = ok
    return ok


def trim_freed_memory() -> None:
    """Give the pages of freed small blocks back to the system (glibc's ``malloc_trim(0)``), e.g. after a
    block task.

    Blocks under the mmap threshold are carved from the heap and the threads' arenas; once freed they stay
    resident unless they sit at a heap's top. After a run's first block tasks that was ~60 MB (``mallinfo2``:
    free bytes in arenas, 11 Mvox CT), counted in the run's peak. ``malloc_trim(0)`` releases free pages
    anywhere in every arena. Once per block, not per window: the next block faults a few MB in again.
    """
    malloc_trim = _glibc("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


@functools.cache
def _glibc(name: str) -> Any:
    """glibc's function ``name``, or None off Linux or without glibc (musl has no mallopt / malloc_trim)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util

    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
