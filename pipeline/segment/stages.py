"""Seconds per stage of one run (start-up, tiling, inference, writing, report), for the summary and report.

So a user, and the next benchmark, see where a run's time goes. Start-up is everything before and
between the named stages since the process started: imports, checks, hashing, cluster and model load.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import psutil


def process_seconds() -> float:
    """Wall seconds since this process started (imports included)."""
    return max(0.0, time.time() - psutil.Process().create_time())


class Stages:
    """Accumulates named stage durations; ``with stages("tile"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def facts(self) -> dict[str, float]:
        """``{"startup": ..., <stage>: ...}`` in seconds, start-up first, rounded to ms."""
        named = {k: round(v, 3) for k, v in self.seconds.items()}
        return {"startup": round(max(0.0, process_seconds() - sum(self.seconds.values())), 3), **named}


def describe(stages: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.items())
