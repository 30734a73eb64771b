"""Run one command and measure it from outside: wall time, exit code, peak PSS and RSS of its process tree.

The command runs in its own session (process group), optionally pinned to some cores (children inherit
the affinity). A sampler thread walks the tree every ``interval`` s (psutil, children recursive) and sums
``Pss`` from ``/proc/PID/smaps_rollup`` (shared pages split between the processes that map them, so torch's
libraries count once for the whole tree) and RSS (shared pages counted in every process: an upper bound).
Peaks shorter than the interval, or in processes that live less than it, can be missed. Optionally it also
records the peak bytes allocated under a directory (the work store), walked every ``watch_interval`` s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Measurement:
    """One run: what it cost, as seen from outside."""

    returncode: int
    seconds: float
    peak_pss_bytes: int
    peak_rss_bytes: int
    peak_dir_bytes: int | None  #: None when no directory was watched
    peak_processes: int
    samples: int
    stdout: str
    stderr: str


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process, from ``/proc/PID/smaps_rollup`` (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def tree(root: psutil.Process) -> list[psutil.Process]:
    """The root and all its descendants that are still alive."""
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_memory(root: psutil.Process) -> tuple[int, int, int]:
    """(sum of PSS, sum of RSS, process count) over the live tree under ``root``."""
    pss = rss = count = 0
    for process in tree(root):
        try:
            rss += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        pss += pss_bytes(process.pid)
        count += 1
    return pss, rss, count


def dir_bytes(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (st_blocks, so sparse files count what they use); 0 if absent."""
    total = 0
    stack = [str(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            total += entry.stat(follow_symlinks=False).st_blocks * 512
                    except FileNotFoundError:  # removed while we walk
                        continue
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total


def measure(command: Sequence[str], *, cores: Sequence[int] | None = None, watch: Path | None = None,
            env: dict[str, str] | None = None, interval: float = 0.05, watch_interval: float = 1.0,
            timeout: float | None = None, log_dir: Path | None = None) -> Measurement:
    """Run ``command`` (no shell), sampling its process tree until it exits; kill what it leaves behind.

    ``cores`` pins the command (and so every process it starts) to those CPUs. stdout/stderr go to files
    in ``log_dir`` (a temporary directory if None) rather than pipes, so a chatty child never blocks.
    """
    import tempfile

    logs = Path(log_dir or tempfile.mkdtemp(prefix="measure-"))
    logs.mkdir(parents=True, exist_ok=True)
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    peaks = {"pss": 0, "rss": 0, "dir": 0, "processes": 0, "samples": 0}
    done = threading.Event()
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(command), stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, preexec_fn=pin)
        root = psutil.Process(proc.pid)

        def sample() -> None:
            next_walk = 0.0
            while not done.is_set():
                pss, rss, count = tree_memory(root)
                peaks["pss"], peaks["rss"] = max(peaks["pss"], pss), max(peaks["rss"], rss)
                peaks["processes"] = max(peaks["processes"], count)
                peaks["samples"] += 1
                if watch is not None and time.perf_counter() >= next_walk:
                    peaks["dir"] = max(peaks["dir"], dir_bytes(watch))
                    next_walk = time.perf_counter() + watch_interval
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            returncode = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            returncode = proc.wait()
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        _kill_group(proc.pid)
    return Measurement(returncode=returncode, seconds=seconds, peak_pss_bytes=peaks["pss"],
                       peak_rss_bytes=peaks["rss"], peak_dir_bytes=peaks["dir"] if watch is not None else None,
                       peak_processes=peaks["processes"], samples=peaks["samples"],
                       stdout=(logs / "stdout").read_text(errors="replace"),
                       stderr=(logs / "stderr").read_text(errors="replace"))


def _kill_group(pgid: int) -> None:
    """Whatever the command left running in its own process group (it should be nothing)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
