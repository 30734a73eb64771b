"""How a command runs: log levels from -q/-v, one-line errors, exit codes, SIGTERM as Ctrl-C."""

from __future__ import annotations

import logging
import os
import sys
import unicodedata
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer

from pipeline.errors import PipelineError

#: The global options of the current invocation (reset by :class:`pipeline.cli.app.OneLineErrors`).
state: dict[str, Any] = {"debug": False, "verbose": 0, "quiet": False}
T = TypeVar("T")
_USER_DASK_LOGGING = os.environ.get("DASK_LOGGING__DISTRIBUTED")


def configure_logging() -> None:
    """Log levels from -q/-v (given before or after the subcommand): warnings by default, INFO with -v,
    DEBUG with -vv (and Dask's INFO), only errors with -q."""
    verbose, quiet = state["verbose"], state["quiet"]
    ours = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    others = logging.ERROR if quiet else (logging.INFO if verbose >= 2 else logging.WARNING)
    if _USER_DASK_LOGGING is None:  # distributed configures its loggers from Dask config when first imported
        os.environ["DASK_LOGGING__DISTRIBUTED"] = logging.getLevelName(others).lower()
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(others)
    logging.getLogger("pipeline").setLevel(ours)


def set_state(key: str) -> Callable[[Any], Any]:
    """The typer callback of a global option: records it, then reconfigures logging."""
    def callback(value: Any) -> Any:
        if key == "verbose":
            state[key] = max(state[key], value)
        elif value:
            state[key] = True
        configure_logging()
        return value
    return callback


def fail(message: str, code: int = 1) -> NoReturn:
    """The single exit path for errors a user can fix: one line, whatever the file names hold."""
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code)


def one_line(text: str) -> str:
    """``text`` with control characters (newlines, escapes, line separators) written as Python escapes,
    so a file named ``x\\nerror: y`` cannot print a second, spoofed line or move the cursor."""
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in _CONTROL else c
                   for c in text)


_CONTROL = {"Cc", "Zl", "Zp"}


def run(action: Callable[[], T]) -> T:
    """Run ``action``; turn a PipelineError into one line on stderr and exit 1 (130 when interrupted).

    SIGTERM is handled like Ctrl-C, so a scheduler's kill also leaves a resumable work store.
    """
    import signal

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        return action()
    except PipelineError as e:
        if state["debug"]:
            raise
        fail(str(e), code=getattr(e, "exit_code", 1))
    except OSError as e:  # the file system refused (ENOTDIR, EACCES, ENOSPC): the user's to fix, one line
        if state["debug"]:
            raise
        fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    finally:
        signal.signal(signal.SIGTERM, previous)
