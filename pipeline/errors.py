"""One exception tree for everything the pipeline raises on purpose.

Every class descends from :class:`PipelineError` and also from the builtin it
resembles, so callers can catch ``PipelineError`` or ``ValueError`` alike.
A message says what is wrong, where (file, key) and, when possible, how to fix it.
The CLI prints ``error: <message>`` for these and exits non-zero, without a traceback.
"""

from __future__ import annotations

import errno
import os
from typing import TypeGuard

#: File-system failures of the storage under a run (space, quota, permissions, read-only or failing disk): the
#: operator's to fix, never the input's. Other OSErrors (network, lost workers) stay what they are.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                            errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EFBIG})


def first_line(error: BaseException) -> str:
    """The first non-empty line of ``error``'s message (its type name when it has none): how every message
    quotes a third-party error, which often spans many lines (tracebacks, YAML marks, pydantic tables)."""
    return (str(error).strip().splitlines() or [""])[0] or type(error).__name__


class PipelineError(Exception):
    """Root of all errors a user can act on."""


class InputError(PipelineError, ValueError):
    """An input file (scan, raster, reference mask) is unusable."""


class InputNotFoundError(InputError, FileNotFoundError):
    """An input path does not exist."""


class GridMismatchError(InputError):
    """Two arrays that must share a voxel grid do not (shape, affine, CRS)."""


class CardError(PipelineError, ValueError):
    """A model card is malformed or names something unknown."""


class CatalogError(PipelineError, ValueError):
    """The data catalog (``data_catalog.yaml``) is malformed or names something unknown."""


class ModelError(PipelineError, ValueError):
    """Model weights are missing, corrupt, unsafe or do not match the card."""


class OutputExistsError(PipelineError, FileExistsError):
    """An output exists and ``overwrite`` was not requested."""


class OutputError(PipelineError, OSError):
    """An output cannot be written (path escapes its root, unwritable directory)."""


class StorageError(OutputError):
    """The storage under a run failed (disk full, quota, I/O error, permissions): the operator's to fix.

    Unlike other output errors, the same input may well succeed once space is freed, so flows
    retry it and never record it as the scan's failure. ``errno`` is the file system's error number.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code

    def __reduce__(self) -> tuple[type, tuple[str, int | None]]:  # keep the errno across processes (Dask, Prefect)
        return type(self), (str(self), self.errno)

    @property
    def summary(self) -> str:
        """``storage: <errno text> (<message>)``: the one-line cause a run's artifact row shows."""
        text = (str(self).strip().splitlines() or [""])[0]
        return f"storage: {os.strerror(self.errno)} ({text})" if self.errno else f"storage: {text}"


def storage_failure(error: BaseException | None) -> TypeGuard[OSError]:
    """A raw file-system error of the storage (``ENOSPC``, ``EIO``, ``EACCES``...), not yet reported as ours."""
    return isinstance(error, OSError) and not isinstance(error, PipelineError) and error.errno in STORAGE_ERRNOS


def as_storage_error(error: OSError, path: object) -> StorageError:
    """``error`` as a one-line :class:`StorageError` naming the file: ``<file>: <strerror>``."""
    return StorageError(f"{error.filename or path}: {error.strerror or error}", error.errno)


class RemoteError(PipelineError, ConnectionError):
    """A remote service (a PACS over DICOMweb) is unreachable or failed in a way worth retrying (5xx, timeout).

    Not the input's fault: flows retry it and record no failure for the series.
    """


class SettingsError(PipelineError, ValueError):
    """Engine settings (roi size, overlap, chunks) are invalid."""


class OutputBusyError(OutputError):
    """Another run holds the output's lock right now."""


class RunInterrupted(PipelineError, KeyboardInterrupt):
    """The run was interrupted (Ctrl-C / SIGINT / SIGTERM); its work store is kept for resuming."""

    exit_code = 130
