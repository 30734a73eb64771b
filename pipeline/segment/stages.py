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
    """Wall seconds since this run's interpreter started (imports included).

    The process's creation time, unless the ``pipeline`` package was imported long after it: then the process
    ran something else before it ``exec``ed Python (``scripts/demo`` sets up the venv first), and the clock
    starts at the import instead. Python itself starts in well under a second.
    """
    from pipeline import IMPORTED_AT

    created = psutil.Process().create_time()
    start = created if IMPORTED_AT - created < EXEC_GAP else IMPORTED_AT
    return max(0.0, time.time() - start)


#: A gap between process creation and the package's import longer than this means an ``exec`` came between.
EXEC_GAP = 2.0


class Stages:
    """Accumulates named stage durations; ``with stages("tile"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._running: dict[str, float] = {}  #: stage -> when its current run began

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = self._running[name] = time.perf_counter()
        try:
            yield
        finally:
            del self._running[name]
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def facts(self) -> dict[str, float]:
        """``{"startup": ..., <stage>: ...}`` in seconds, start-up first, rounded to ms.

        A stage still running counts up to now: the report is built inside its own stage, and its time so far
        belongs to it, not to start-up (start-up is what no stage accounts for).
        """
        now = time.perf_counter()
        seconds = dict(self.seconds)
        for name, start in self._running.items():
            seconds[name] = seconds.get(name, 0.0) + now - start
        named = {k: round(v, 3) for k, v in seconds.items()}
        return {"startup": round(max(0.0, process_seconds() - sum(seconds.values())), 3), **named}


def describe(stages: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.items())
