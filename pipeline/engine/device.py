"""Where and on how many threads the network runs, decided without importing torch.

Importing torch (and MONAI with it) costs seconds and ~400 MB per process. A CPU run whose network is
already converted for OpenVINO (:mod:`pipeline.engine.backends`) needs neither, so questions such as
"is there a GPU?" and "how many intra-op threads?" are answered here and torch is asked only when it is
already imported or a GPU may exist.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
