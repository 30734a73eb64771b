"""A real Prefect server and ``python -m flows.serve`` in subprocesses, for end-to-end flow tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = "segment-new-scans/nightly"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A subprocess in its own process group, so teardown can stop it and its children."""
    with open(log, "wb") as out:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM its process group, then SIGKILL; then kill any descendant that started its own session
    (Prefect runs each flow run in a new session, and a flow run owns its Dask workers)."""
    import psutil

    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # children left in the group
    for child in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def wait_for(what: str, check: Any, timeout: float, *, alive: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive.poll() is not None:
            pytest.fail(f"{what}: process exited with {alive.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(Exception):
            if (value := check()) is not None:
                return value
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{log.read_text()[-3000:]}")


def health(url: str) -> bool | None:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
        return True if response.status == 200 else None


def trigger(env: dict[str, str]) -> uuid.UUID:
    """``prefect deployment run`` as a user would type it; returns the flow run id."""
    prefect = str(Path(sys.executable).with_name("prefect"))
    done = subprocess.run([prefect, "deployment", "run", DEPLOYMENT], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    match = re.search(r"UUID: ([0-9a-f-]{36})", done.stdout)
    assert match, done.stdout + done.stderr
    return uuid.UUID(match.group(1))


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process and every descendant at once, as a crash or an OOM kill would: no cleanup runs."""
    import psutil

    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    process.wait(timeout=30)
