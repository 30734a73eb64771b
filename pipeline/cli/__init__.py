"""``pipeline`` command line: each command adapts one library function.

A :class:`PipelineError` prints ``error: <message>`` and exits 1 (no traceback unless
``--debug``); bad usage exits 2. Heavy imports (torch, MONAI, Dask) happen inside
command bodies so ``--help`` stays instant.

The application and its groups are in :mod:`pipeline.cli.app`, the shared options in
:mod:`pipeline.cli.options`, the error and exit handling in :mod:`pipeline.cli.running`; each other
module holds the commands of one kind. Importing them here registers the commands, in help order.
"""

from __future__ import annotations

from pipeline.cli.app import app

# isort: off
# Registering the commands, in help order.
from pipeline.cli import segment  # noqa: F401
from pipeline.cli import reports  # noqa: F401
from pipeline.cli import train  # noqa: F401
from pipeline.cli import models  # noqa: F401
from pipeline.cli import catalog  # noqa: F401
# isort: on

__all__ = ["app"]
