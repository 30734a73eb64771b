"""Write-then-rename, so a crash never leaves a partial output under the final name."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import OutputError, OutputExistsError, StorageError


def check_output(path: Path, *, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``; refuse an unwritable directory."""
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: output exists; pass --overwrite to replace it")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{parent}: output directory does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StorageError(f"{parent}: output directory is not writable", errno.EACCES)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds.

    Works for files and directories (a Zarr store). On failure the temporary is removed
    and any previous ``path`` is left untouched.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir() and not path.is_symlink():  # a store replaces a store, never a file a dir
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


_PARTIAL = re.compile(r"^\..+\.(\d+)\.partial$")


def sweep_partials(directory: Path) -> list[Path]:
    """Remove temporaries of :func:`atomic_path` whose writing process is gone (killed mid-write).

    A SIGKILL skips every cleanup, so the next run in the same directory does it; temporaries
    of live processes (another run writing right now) are left alone.
    """
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in directory.iterdir():
            match = _PARTIAL.match(entry.name)
            if match and not _alive(int(match.group(1))):
                _remove(entry)
                removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
