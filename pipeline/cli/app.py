"""The ``pipeline`` Typer application: its groups, plain help and one-line usage errors, global options."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from pipeline.cli.options import DebugOpt, QuietOpt, VerboseOpt
from pipeline.cli.running import configure_logging, state

try:  # typer >= 0.26 vendors click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on click
    from click import exceptions as click_errors  # type: ignore[no-redef]


class OneLineErrors(TyperGroup):
    """Usage errors (unknown option, bad value, missing argument) as one ``error:`` line, exit 2,
    instead of click's usage box; help for a bare group or command as usual."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        state.update(debug=False, verbose=0, quiet=False)  # each invocation starts from the defaults
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False,
                                windows_expand_args=windows_expand_args, **extra)
        except getattr(click_errors, "NoArgsIsHelpError", ()) as e:
            if not standalone_mode:
                raise
            e.show()
            sys.exit(e.exit_code)
        except click_errors.ClickException as e:  # UsageError and BadParameter included
            if not standalone_mode:
                raise
            typer.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except (typer.Abort, getattr(click_errors, "Abort", typer.Abort)):
            if not standalone_mode:
                raise
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        if standalone_mode:
            sys.exit(code if isinstance(code, int) else 0)
        return code


#: Plain help (no boxes, no ``<bool>`` metavars) and plain errors.
_PLAIN: dict[str, Any] = {"no_args_is_help": True, "rich_markup_mode": None, "pretty_exceptions_enable": False}
app = typer.Typer(help="Chunked, Dask-parallel MONAI segmentation of huge volumes and rasters.", cls=OneLineErrors,
                  add_completion=False, **_PLAIN)
models_app = typer.Typer(help="List and inspect model cards.", **_PLAIN)
app.add_typer(models_app, name="models")
catalog_app = typer.Typer(help="Validate the data catalog.", **_PLAIN)
app.add_typer(catalog_app, name="catalog")


@app.callback()
def main(verbose: VerboseOpt = 0, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """-q/-v/--debug here apply to every subcommand (they are also accepted after it)."""
    configure_logging()
