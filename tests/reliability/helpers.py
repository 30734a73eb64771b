"""Shared by the reliability tests: a volume with many blocks, the CLI in its own process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests.factories import write_nifti

PIPELINE = Path(sys.executable).parent / "pipeline"
#: Small blocks, so a run has many of them and can be interrupted between two.
CHUNKS = "32,32,16"


def many_block_scan(path: Path, shape: tuple[int, int, int] = (128, 128, 64), seed: int = 0) -> Path:
    """A smooth synthetic CT-like volume (HU) whose tiny-model labels vary across blocks."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    body = (np.sqrt((grid**2).sum(axis=0)) < 0.8) * 900.0 - 500.0
    data = (body + rng.normal(0, 200, shape)).astype(np.int16)
    return write_nifti(path, data, np.diag([1.5, 1.5, 3.0, 1.0]))


def segment_args(scan: Path, card: Path, out: Path, *extra: str) -> list[str]:
    return [str(PIPELINE), "segment-volume", str(scan), "-m", str(card), "-o", str(out), "--workers", "1",
            "--threads", "1", "--chunk-size", CHUNKS, *extra]


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A CLI run in its own session/process group (so a signal can reach it and its Dask workers)."""
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def finished_blocks(out_dir: Path) -> int:
    """Completion records written so far by the run writing into ``out_dir``."""
    return sum(len([n for n in os.listdir(done) if n.startswith("block-") and not n.endswith(".tmp")])
               for done in out_dir.glob(".volseg-*.work/done"))


def kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def stop(process: subprocess.Popen[bytes]) -> None:
    kill_group(process)
    process.wait(timeout=30)
