"""Per-output exclusive locks: two runs never write the same output at once.

A non-blocking ``fcntl.flock``: the kernel releases it when its holder exits, however it
dies (SIGKILL included), so there are no stale locks to detect or break.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def output_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive, non-blocking ``flock`` on ``path`` for the block; yields False if taken.

    The kernel releases the lock when its holder exits, however it dies, so there are no stale
    locks to detect; the file (``pid host time``) only says who holds it. Separate opens conflict
    even within one process, so threads are excluded too. ``flock`` needs a local file system or
    one that implements it (NFSv4, Lustre with ``flock``); a shared output root must provide it.
    """
    fd = _acquire(path)
    if fd is None:
        yield False
        return
    try:
        os.ftruncate(fd, 0)
        since = datetime.datetime.now(datetime.UTC)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since:%Y-%m-%d %H:%M:%S} UTC\n".encode())
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still holding it: a waiter that opened this inode sees it gone and retries
        os.close(fd)


def _acquire(path: Path) -> int | None:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        opened = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            return fd
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one


def lock_holder(path: Path) -> str:
    """Who holds the lock at ``path``, as its holder wrote it (best effort)."""
    with contextlib.suppress(OSError):
        return path.read_text(encoding="utf-8").strip() or "unknown holder"
    return "unknown holder"
