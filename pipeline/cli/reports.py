"""``report`` (a batch summary over a run's reports) and ``evaluate`` (two masks compared)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.app import app
from pipeline.cli.options import DebugOpt, OverwriteOpt, QuietOpt, VerboseOpt
from pipeline.cli.running import run


@app.command("report")
def report_cmd(
    output_dir: Annotated[Path, typer.Argument(help="A run's output directory (searched recursively for *.report.json).")],
    dice_threshold: Annotated[float, typer.Option("--dice-threshold", min=0.0, max=1.0, help="Flag labels whose Dice is below this.")] = 0.5,
    overwrite: OverwriteOpt = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Batch summary: <dir>/index.html + <dir>/summary.csv over every report, outliers flagged."""
    from pipeline.report.batch_report import batch_report

    summary = run(lambda: batch_report(output_dir, dice_threshold=dice_threshold, overwrite=overwrite))
    typer.echo(f"index:  {summary.index} ({summary.reports} reports, {len(summary.outliers)} flagged)")
    typer.echo(f"csv:    {summary.csv}")
    for flag in summary.outliers:
        typer.echo(f"  flagged: {flag}")


@app.command("evaluate")
def evaluate_cmd(
    prediction: Annotated[Path, typer.Argument(help="Predicted label mask (NIfTI, or GeoTIFF with a GeoTIFF reference).")],
    reference: Annotated[Path, typer.Argument(help="Reference label mask on the same grid.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSON report here (CSV beside it).")] = None,
    overwrite: OverwriteOpt = False,
    model: Annotated[str | None, typer.Option("--model", "-m", metavar="NAME|PATH", help="Name the labels from this model card (default: a volseg GeoTIFF's class tags, else label_<n>).")] = None,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Dice, IoU, pixel accuracy for two label masks; prints JSON (and writes it with -o)."""
    from pipeline.report.compare import evaluate_report

    report = run(lambda: evaluate_report(prediction, reference, output=output, overwrite=overwrite, model=model))
    typer.echo(json.dumps(report, indent=2))
