"""Checks on input paths before they are opened (below every layer: config reads YAML files, io reads scans)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pipeline.errors import PipelineError


def require_regular_file(path: Path, what: str, error: type[PipelineError],
                         missing: type[PipelineError] | None = None) -> None:
    """Refuse, before opening it, a path that is not a regular file: reading a directory fails late,
    a FIFO blocks forever and ``/dev/zero`` never ends.

    Raises ``missing`` (default ``error``) when nothing is there, ``error`` otherwise.
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError) as e:
        raise (missing or error)(f"{path}: {what} not found") from e
    except OSError as e:  # no permission on a parent, a loop of symlinks
        raise error(f"{path}: cannot read the {what} ({e.strerror or e})") from e
    if not stat.S_ISREG(mode):
        raise error(f"{path}: not a regular file ({_kind(mode)})")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"
