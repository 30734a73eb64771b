"""``catalog check``: a data catalog validated, and what its next run would segment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.app import catalog_app
from pipeline.cli.options import DebugOpt, QuietOpt, VerboseOpt
from pipeline.cli.running import run


@catalog_app.command("check")
def catalog_check(path: Annotated[Path, typer.Argument(help="The data catalog.")] = Path("data_catalog.yaml"),
                  verbose: VerboseOpt = 0, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Validate a data catalog and list the scans the next flow run would segment (nothing is run)."""
    from pipeline.batch.discovery import discover
    from pipeline.config.catalog import load_catalog

    plan = run(lambda: discover(load_catalog(path)))
    for job in plan.pending:
        typer.echo(f"{job.source}: {job.scan} -> {job.output}")
    for outcome in plan.failed_before:
        typer.echo(f"{outcome.source}: {outcome.scan} failed before: {outcome.reason}")
    typer.echo(f"{path}: valid")
