"""Run one command and measure it from outside: wall time, exit code, peak PSS and RSS of its process tree.

The command runs in its own session (process group), optionally pinned to some cores (children inherit
the affinity; the sampler then runs on the other cores, when there are any). Every ``interval`` s a sampler
thread sums RSS over the tree (psutil, children recursive, the process list refreshed every ``tree_interval``
s) and, when that could be a new peak, PSS from ``/proc/PID/smaps_rollup`` (shared pages split between the
processes that map them, so torch's libraries count once for the whole tree). RSS counts shared pages in
every process: an upper bound.

Reading smaps_rollup walks the page tables: here about 15 ms of kernel time per 300 MB resident, so reading
it for every process every 50 ms would take a core of a 2-core machine from what is measured. It is read
only when the tree's PSS could exceed the peak so far (the last PSS sum plus every process's RSS growth since
then bounds it: a process's PSS grows by at most its new pages) and then at most a fifth of the time
(``PSS_DUTY``). Peaks shorter than the interval, or in processes living less than it, can be missed.
Optionally it also records the peak bytes allocated under a directory (the work store), walked every
``watch_interval`` s.
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
    samples: int  #: RSS samples
    pss_reads: int  #: of which PSS was read too
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


#: the share of the sampler's time spent reading PSS, at most
PSS_DUTY = 0.2


class TreeSampler:
    """Peaks of one process tree's PSS and RSS, sampled by :meth:`sample` (see the module docstring)."""

    def __init__(self, root: psutil.Process, tree_interval: float = 0.25) -> None:
        self.root, self.tree_interval = root, tree_interval
        self.processes: list[psutil.Process] = []
        self.next_tree = 0.0
        self.peak_pss = self.peak_rss = self.peak_processes = self.samples = self.pss_reads = 0
        self.last_pss = 0  #: PSS sum at the last read
        self.rss_then: dict[int, int] = {}  #: pid -> RSS at the last PSS read
        self.next_pss = 0.0

    def sample(self) -> None:
        now = time.perf_counter()
        if now >= self.next_tree:
            self.processes = tree(self.root)
            self.next_tree = now + self.tree_interval
        rss: dict[int, int] = {}
        for process in self.processes:
            try:
                rss[process.pid] = process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
        self.samples += 1
        self.peak_rss = max(self.peak_rss, sum(rss.values()))
        self.peak_processes = max(self.peak_processes, len(rss))
        bound = self.last_pss + sum(max(0, r - self.rss_then.get(pid, 0)) for pid, r in rss.items())
        if bound > self.peak_pss and now >= self.next_pss:
            cpu = time.thread_time()  # CPU, not wall: on a loaded machine waiting is not cost
            self.last_pss = sum(pss_bytes(pid) for pid in rss)
            self.rss_then = rss
            self.peak_pss = max(self.peak_pss, self.last_pss)
            self.pss_reads += 1
            self.next_pss = now + (time.thread_time() - cpu) / PSS_DUTY


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
    others = set(os.sched_getaffinity(0)) - set(cores or ())
    peak_dir = 0
    done = threading.Event()
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(command), stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, preexec_fn=pin)
        sampler = TreeSampler(psutil.Process(proc.pid))

        def sample() -> None:
            nonlocal peak_dir
            if cores and others:
                os.sched_setaffinity(0, others)  # this thread only: keep off the measured cores
            next_walk = 0.0
            while not done.is_set():
                sampler.sample()
                if watch is not None and time.perf_counter() >= next_walk:
                    peak_dir = max(peak_dir, dir_bytes(watch))
                    next_walk = time.perf_counter() + watch_interval
                done.wait(interval)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            returncode = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            returncode = proc.wait()
        seconds = time.perf_counter() - start
        done.set()
        thread.join()
        _kill_group(proc.pid)
    return Measurement(returncode=returncode, seconds=seconds, peak_pss_bytes=sampler.peak_pss,
                       peak_rss_bytes=sampler.peak_rss, peak_dir_bytes=peak_dir if watch is not None else None,
                       peak_processes=sampler.peak_processes, samples=sampler.samples, pss_reads=sampler.pss_reads,
                       stdout=(logs / "stdout").read_text(errors="replace"),
                       stderr=(logs / "stderr").read_text(errors="replace"))


def _kill_group(pgid: int) -> None:
    """Whatever the command left running in its own process group (it should be nothing)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
