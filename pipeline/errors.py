"""One exception tree for everything the pipeline raises on purpose.

Every class descends from :class:`PipelineError` and also from the builtin it
resembles, so callers can catch ``PipelineError`` or ``ValueError`` alike.
A message says what is wrong, where (file, key) and, when possible, how to fix it.
The CLI prints ``error: <message>`` for these and exits non-zero, without a traceback.
"""

from __future__ import annotations


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


class SettingsError(PipelineError, ValueError):
    """Engine settings (roi size, overlap, chunks) are invalid."""


class OutputBusyError(OutputError):
    """Another run holds the output's lock right now."""


class RunInterrupted(PipelineError, KeyboardInterrupt):
    """The run was interrupted (Ctrl-C / SIGINT / SIGTERM); its work store is kept for resuming."""

    exit_code = 130
