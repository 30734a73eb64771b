"""``pipeline`` command line: each command adapts one library function.

A :class:`PipelineError` prints ``error: <message>`` and exits 1 (no traceback unless
``--debug``); bad usage exits 2. Heavy imports (torch, MONAI, Dask) happen inside
command bodies so ``--help`` stays instant.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from pipeline.errors import PipelineError

app = typer.Typer(help="Chunked, Dask-parallel MONAI segmentation of huge volumes and rasters.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
models_app = typer.Typer(help="List and inspect model cards.", no_args_is_help=True)
app.add_typer(models_app, name="models")

_state = {"debug": False}
T = TypeVar("T")

ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Model card name or path (default: ct-organs for volumes, buildings for rasters).")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Output mask path (default: beside the input).")]
ReferenceOpt = Annotated[Path | None, typer.Option("--reference", "-r", help="Reference mask on the same grid, for Dice/IoU.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
WorkersOpt = Annotated[int, typer.Option("--workers", "-w", min=1, help="Local Dask worker processes.")]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=1, help="Threads per Dask worker.")]
MemoryOpt = Annotated[str, typer.Option("--memory-limit", help="Memory limit per local worker, e.g. 4GiB (auto: RAM / workers).")]
AddressOpt = Annotated[str | None, typer.Option("--dask-address", help="Use an existing Dask scheduler, e.g. tcp://host:8786.")]
ChunkOpt = Annotated[str | None, typer.Option("--chunk-size", help="Block side in voxels: one int or one per axis, e.g. 128 or 160,160,64.")]
WorkDirOpt = Annotated[Path | None, typer.Option("--work-dir", help="Directory for the Zarr work store (default: beside the output).")]


def fail(message: str, code: int = 1) -> NoReturn:
    """The single exit path for errors a user can fix."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def run(action: Callable[[], T]) -> T:
    """Run ``action``; turn a PipelineError into one line on stderr and exit 1."""
    try:
        return action()
    except PipelineError as e:
        if _state["debug"]:
            raise
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted", code=130)


def parse_chunks(text: str | None, ndim: int) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        sides = tuple(int(v) for v in text.split(","))
    except ValueError:
        fail(f"--chunk-size must be integers, got {text!r}", code=2)
    if len(sides) == 1:
        sides = sides * ndim
    if len(sides) != ndim or min(sides) < 1:
        fail(f"--chunk-size needs 1 or {ndim} positive integers, got {text!r}", code=2)
    return sides


@app.callback()
def main(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging (-v: debug, -vv: Dask too).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    import os

    ours = logging.ERROR if quiet else (logging.INFO if verbose == 0 else logging.DEBUG)
    others = logging.ERROR if quiet else (logging.INFO if verbose >= 2 else logging.WARNING)
    # distributed configures its loggers from Dask config when first imported: set it before that
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", logging.getLevelName(others).lower())
    logging.basicConfig(level=others, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("pipeline").setLevel(ours)
    _state["debug"] = debug


@app.command("segment-volume")
def segment_volume_cmd(
    scan: Annotated[Path, typer.Argument(help="Input 3D NIfTI scan (.nii / .nii.gz).")],
    model: ModelOpt = None,
    output: OutputOpt = None,
    reference: ReferenceOpt = None,
    overwrite: OverwriteOpt = False,
    workers: WorkersOpt = 2,
    threads: ThreadsOpt = 1,
    memory_limit: MemoryOpt = "auto",
    dask_address: AddressOpt = None,
    chunk_size: ChunkOpt = None,
    work_dir: WorkDirOpt = None,
    probabilities: Annotated[bool, typer.Option("--probabilities", help="Also write softmax probabilities (float16 Zarr).")] = False,
) -> None:
    """Segment a NIfTI scan: writes <scan>_seg.nii.gz and <scan>_seg.report.json/.csv."""
    from pipeline.cluster import ClusterSettings
    from pipeline.segment import segment_volume

    settings = ClusterSettings(address=dask_address, workers=workers, threads_per_worker=threads,
                               memory_limit=memory_limit)
    result = run(lambda: segment_volume(
        scan, model=model, output=output, reference=reference, overwrite=overwrite, work_dir=work_dir,
        chunks=parse_chunks(chunk_size, 3), cluster=settings, probabilities=probabilities, progress=True))
    _print_result(result)


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        fail(f"--bands must be comma-separated band numbers, e.g. 3,2,1, got {text!r}", code=2)


@app.command("segment-raster")
def segment_raster_cmd(
    scene: Annotated[Path, typer.Argument(help="Input raster: GeoTIFF, COG or VRT.")],
    model: ModelOpt = None,
    output: OutputOpt = None,
    reference: ReferenceOpt = None,
    overwrite: OverwriteOpt = False,
    workers: WorkersOpt = 2,
    threads: ThreadsOpt = 1,
    memory_limit: MemoryOpt = "auto",
    dask_address: AddressOpt = None,
    chunk_size: ChunkOpt = None,
    work_dir: WorkDirOpt = None,
    bands: Annotated[str | None, typer.Option("--bands", help="1-based bands in model order, e.g. 3,2,1 (default: the card's, else all).")] = None,
    vectors: Annotated[Path | None, typer.Option("--vectors", help="Also write polygons per class (.gpkg or .geojson).")] = None,
) -> None:
    """Segment a raster: writes <scene>_seg.tif (COG) and <scene>_seg.report.json/.csv.

    --reference also takes vectors (.geojson, .gpkg), rasterised onto the scene's grid.
    """
    from pipeline.cluster import ClusterSettings
    from pipeline.segment_raster import segment_raster

    settings = ClusterSettings(address=dask_address, workers=workers, threads_per_worker=threads,
                               memory_limit=memory_limit)
    result = run(lambda: segment_raster(
        scene, model=model, output=output, reference=reference, bands=parse_bands(bands), vectors=vectors,
        overwrite=overwrite, work_dir=work_dir, chunks=parse_chunks(chunk_size, 2), cluster=settings, progress=True))
    _print_result(result)
    if result.vectors:
        typer.echo(f"vectors: {result.vectors} ({result.report['features']} polygons)")


def _print_result(result: Any) -> None:
    typer.echo(f"mask:   {result.mask}")
    typer.echo(f"report: {result.report_json} (+ {result.report_csv.name})")
    if result.probabilities:
        typer.echo(f"probabilities: {result.probabilities}")
    for row in result.report["labels"]:
        if row["dice"] is not None:
            typer.echo(f"  {row['name']:<16} dice {row['dice']:.3f}  iou {row['iou']:.3f}")
    typer.echo(result.summary())


@app.command("evaluate")
def evaluate_cmd(
    prediction: Annotated[Path, typer.Argument(help="Predicted label mask (NIfTI).")],
    reference: Annotated[Path, typer.Argument(help="Reference label mask on the same grid.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSON report here (CSV beside it).")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Dice, IoU, pixel accuracy for two label masks; prints JSON (and writes it with -o)."""
    from pipeline.evaluate import evaluate_report

    report = run(lambda: evaluate_report(prediction, reference, output=output, overwrite=overwrite))
    typer.echo(json.dumps(report, indent=2))


@models_app.command("list")
def models_list() -> None:
    """Name, domain, dims and labels of every card in models/."""
    from pipeline.cards import load_card
    from pipeline.models import available_models

    for name, path in available_models().items():
        card = load_card(path)
        typer.echo(f"{name:<16} {card.domain:<8} {card.spatial_dims}D  roi {list(card.roi_size)}  "
                   f"labels: {', '.join(label.name for label in card.labels.values())}")


@models_app.command("show")
def models_show(name: Annotated[str, typer.Argument(help="Card name or path.")]) -> None:
    """Print a model card as JSON."""
    from pipeline.cards import load_card
    from pipeline.models import resolve_card_path

    card = run(lambda: load_card(resolve_card_path(name)))
    typer.echo(json.dumps(card.model_dump(mode="json"), indent=2))


if __name__ == "__main__":
    app()
