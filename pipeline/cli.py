"""``pipeline`` command line: each command adapts one library function.

A :class:`PipelineError` prints ``error: <message>`` and exits 1 (no traceback unless
``--debug``); bad usage exits 2. Heavy imports (torch, MONAI, Dask) happen inside
command bodies so ``--help`` stays instant.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from typer.core import TyperGroup

from pipeline.errors import PipelineError

try:  # typer >= 0.26 vendors click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on click
    from click import exceptions as click_errors  # type: ignore[no-redef]


class OneLineErrors(TyperGroup):
    """Usage errors (unknown option, bad value, missing argument) as one ``error:`` line, exit 2,
    instead of click's usage box; help for a bare group or command as usual."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        _state.update(debug=False, verbose=0, quiet=False)  # each invocation starts from the defaults
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
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

_state: dict[str, Any] = {"debug": False, "verbose": 0, "quiet": False}
T = TypeVar("T")
_USER_DASK_LOGGING = os.environ.get("DASK_LOGGING__DISTRIBUTED")


def configure_logging() -> None:
    """Log levels from -q/-v (given before or after the subcommand): warnings by default, INFO with -v,
    DEBUG with -vv (and Dask's INFO), only errors with -q."""
    verbose, quiet = _state["verbose"], _state["quiet"]
    ours = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    others = logging.ERROR if quiet else (logging.INFO if verbose >= 2 else logging.WARNING)
    if _USER_DASK_LOGGING is None:  # distributed configures its loggers from Dask config when first imported
        os.environ["DASK_LOGGING__DISTRIBUTED"] = logging.getLevelName(others).lower()
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(others)
    logging.getLogger("pipeline").setLevel(ours)


def _set_state(key: str) -> Callable[[Any], Any]:
    def callback(value: Any) -> Any:
        if key == "verbose":
            _state[key] = max(_state[key], value)
        elif value:
            _state[key] = True
        configure_logging()
        return value
    return callback


VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, expose_value=False, callback=_set_state("verbose"),
                                         help="More logging (-v: progress facts such as the Dask dashboard, -vv: debug and Dask).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", expose_value=False, callback=_set_state("quiet"), help="Only errors.")]
DebugOpt = Annotated[bool, typer.Option("--debug", expose_value=False, callback=_set_state("debug"), help="Show tracebacks for errors.")]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", metavar="NAME|PATH", help="Model card name or path, a MONAI bundle or a TorchScript file (default: ct-organs).")]
RasterModelOpt = Annotated[str | None, typer.Option("--model", "-m", metavar="NAME|PATH", help="Model card name or path, a MONAI bundle or a TorchScript file (default: buildings).")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Output mask path (default: beside the input).")]
ReferenceOpt = Annotated[Path | None, typer.Option("--reference", "-r", help="Reference mask on the same grid, for Dice/IoU.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
WorkersOpt = Annotated[int, typer.Option("--workers", "-w", min=0, help="Local Dask worker processes (0: threads in this process, the fastest on one machine).")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", min=1, help="Threads per Dask worker (default 1; in process the network then uses every core).")]
MemoryOpt = Annotated[str, typer.Option("--memory-limit", metavar="SIZE", help="Memory limit per local worker, e.g. 4GiB (auto: RAM / workers).")]
AddressOpt = Annotated[str | None, typer.Option("--dask-address", metavar="ADDRESS", help="Use an existing Dask scheduler, e.g. tcp://host:8786.")]
ChunkOpt = Annotated[str | None, typer.Option("--chunk-size", metavar="N[,N,N]", help="Block side in voxels: one int or one per axis (i,j,k), e.g. 128 or 160,160,64 (default: 128, at least 2 windows; clipped to the scan).")]
RasterChunkOpt = Annotated[str | None, typer.Option("--chunk-size", metavar="N[,N]", help="Block side in pixels: one int or rows,cols, e.g. 768 or 1024,512 (default: 768, at least 2 windows; clipped to the scene).")]
WorkDirOpt = Annotated[Path | None, typer.Option("--work-dir", help="Directory for the Zarr work store (default: beside the output).")]
HtmlOpt = Annotated[bool, typer.Option("--html/--no-html", help="Write <mask>.report.html (images, legend, metrics, plots).")]
OmeZarrOpt = Annotated[bool, typer.Option("--ome-zarr", help="Also write <mask>.ome.zarr (NGFF image + labels) for napari / neuroglancer.")]
InstancesOpt = Annotated[list[str] | None, typer.Option("--instances", help="Class name(s) whose connected objects get their own ids (repeatable or comma list): <mask>_instances + <mask>.instances.csv.")]
BackendOpt = Annotated[str | None, typer.Option("--backend", help="CPU inference backend: auto (OpenVINO on CPU when installed, else torch), torch or openvino (default: the card's, auto).")]
StatisticsOpt = Annotated[bool, typer.Option("--statistics", help="Add the input's values inside each label to the report, CSV and page: count, volume/area, mean, std, min, max, p5, median, p95 (HU for CT, per band for rasters).")]
LabelsOpt = Annotated[list[str] | None, typer.Option("--labels", metavar="NAME[,NAME]", help="Keep only these labels (names or values; repeatable or comma list): the others become background, and the report scores only these.")]
CutoutOpt = Annotated[list[str] | None, typer.Option("--cutout", metavar="NAME[,NAME]", help="Also write <mask>_cutout: the input inside these labels, cropped to them plus --cutout-margin (outside them: the input's minimum; rasters: nodata).")]
TtaOpt = Annotated[str, typer.Option("--tta", help="Test-time mirroring: none, mirror (along the axes the model was trained flipped), mirror-all (every axis); 2^axes network passes per window.")]
TrustOpt = Annotated[bool, typer.Option("--trust", help="Trust a MONAI bundle's config: let it run code beyond monai classes and harmless expressions. Only for bundles whose code you would run.")]


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
        if _state["debug"]:
            raise
        fail(str(e), code=getattr(e, "exit_code", 1))
    except OSError as e:  # the file system refused (ENOTDIR, EACCES, ENOSPC): the user's to fix, one line
        if _state["debug"]:
            raise
        fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    finally:
        signal.signal(signal.SIGTERM, previous)


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
def main(verbose: VerboseOpt = 0, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """-q/-v/--debug here apply to every subcommand (they are also accepted after it)."""
    configure_logging()


@app.command("segment-volume")
def segment_volume_cmd(
    source: Annotated[str, typer.Argument(metavar="SCAN", help="Input 3D NIfTI scan (.nii / .nii.gz), or an OME-Zarr / "
                                          "Zarr store (path or fsspec URL).")],
    model: ModelOpt = None,
    output: OutputOpt = None,
    reference: ReferenceOpt = None,
    overwrite: OverwriteOpt = False,
    workers: WorkersOpt = 0,
    threads: ThreadsOpt = None,
    memory_limit: MemoryOpt = "auto",
    dask_address: AddressOpt = None,
    chunk_size: ChunkOpt = None,
    work_dir: WorkDirOpt = None,
    probabilities: Annotated[bool, typer.Option("--probabilities", help="Also write softmax probabilities (float16 Zarr).")] = False,
    html: HtmlOpt = True,
    ome_zarr: OmeZarrOpt = False,
    instances: InstancesOpt = None,
    statistics: StatisticsOpt = False,
    labels: LabelsOpt = None,
    cutout: CutoutOpt = None,
    cutout_margin: Annotated[float, typer.Option("--cutout-margin", min=0.0, help="Margin of --cutout around its labels, in mm.")] = 0.0,
    tta: TtaOpt = "none",
    trust: TrustOpt = False,
    backend: BackendOpt = None,
    level: Annotated[int, typer.Option("--level", help="OME-Zarr: pyramid level to segment (0: full resolution).")] = 0,
    orientation: Annotated[str | None, typer.Option("--orientation", help="Zarr: axis codes of the stored spatial "
                                                    "axes, e.g. SAR (default: the model's orientation).")] = None,
    array: Annotated[str | None, typer.Option("--array", help="Plain Zarr: the array's name in the group.")] = None,
    spacing: Annotated[str | None, typer.Option("--spacing", help="Plain Zarr: voxel size in mm per spatial "
                                                "axis, stored order, e.g. 0.5,0.5,1.0.")] = None,
    axes: Annotated[str | None, typer.Option("--axes", help="Plain Zarr: axis names in stored order, e.g. zyx.")] = None,
    series: Annotated[str | None, typer.Option("--series", help="DICOM: SeriesInstanceUID to segment when the folder holds several series.")] = None,
    dicom_seg: Annotated[bool, typer.Option("--dicom-seg", help="DICOM: also write <mask stem>.dcm, a DICOM Segmentation of the series.")] = False,
    dicom_seg_type: Annotated[str, typer.Option("--dicom-seg-type", help="DICOM SEG encoding: binary (most widely displayed) or labelmap.")] = "binary",
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Segment a NIfTI scan, or a DICOM series (a folder or .zip): writes <scan>_seg.nii.gz and
    <scan>_seg.report.json/.csv (and <scan>_seg.dcm with --dicom-seg); or a Zarr volume in place (writes
    labels/<model> into the store, or into -o other.ome.zarr)."""
    from pipeline.io.ngff import is_zarr_input
    from pipeline.io.outputs import preflight_volume

    if is_zarr_input(source):
        if reference or probabilities or ome_zarr or instances:
            fail("--reference, --probabilities, --ome-zarr and --instances are not available for Zarr inputs", code=2)
        values = None if spacing is None else _floats(spacing, "--spacing")
        _segment_zarr(source, model=model, output=output, overwrite=overwrite, level=level, orientation=orientation,
                      array=array, spacing=values, axes=axes, chunks=parse_chunks(chunk_size, 3), trust=trust,
                      backend=backend, runtime=_runtime(work_dir, workers, threads, memory_limit, dask_address))
        return
    scan = Path(source)
    dicom = _dicom_input(scan, series, dicom_seg, dicom_seg_type)
    run(lambda: preflight_volume(scan, output=output, reference=reference, model=model, overwrite=overwrite, html=html,
                                 ome_zarr=ome_zarr, probabilities=probabilities, instances=instances, cutout=cutout,
                                 series=dicom is not None, dicom_seg=dicom_seg))
    from pipeline.segment.options import SegmentOptions
    from pipeline.segment.volume import segment_volume

    options = SegmentOptions(overwrite=overwrite, html=html, ome_zarr=ome_zarr, instances=instances,
                             chunks=parse_chunks(chunk_size, 3), backend=backend, trust=trust,
                             probabilities=probabilities, statistics=statistics, labels=labels, cutout=cutout,
                             cutout_margin=cutout_margin, tta=tta)
    runtime = _runtime(work_dir, workers, threads, memory_limit, dask_address)
    if dicom is not None:
        from pipeline.segment.dicom import segment_series

        result = run(lambda: segment_series(scan, **dicom, model=model, output=output, reference=reference,
                                            options=options, runtime=runtime))
    else:
        result = run(lambda: segment_volume(scan, model=model, output=output, reference=reference, options=options,
                                            runtime=runtime))
    _print_result(result)


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        fail(f"{option} must be comma-separated numbers, e.g. 0.5,0.5,1.0, got {text!r}", code=2)


def _segment_zarr(store: str, *, runtime: Any, **keywords: Any) -> None:
    """segment-volume on a Zarr store: one call to :func:`pipeline.segment.ngff.segment_zarr`."""
    from pipeline.segment.ngff import segment_zarr

    result = run(lambda: segment_zarr(store, work_dir=runtime.work_dir, cluster=runtime.cluster, progress=True,
                                      **keywords))
    typer.echo(f"labels: {result.labels}")
    typer.echo(f"report: {result.report_json} (+ {result.report_csv})")
    typer.echo(result.summary())


def _dicom_input(scan: Path, series: str | None, dicom_seg: bool, seg_type: str) -> dict[str, Any] | None:
    """``segment_series`` keywords when ``scan`` is a DICOM folder or zip, None for a NIfTI file; the DICOM
    options given for a NIfTI file, or an unknown SEG type, are usage errors."""
    from pipeline.io.dicom_files import is_series_path
    from pipeline.io.dicom_seg import SEG_TYPES

    if not is_series_path(scan):
        if series or dicom_seg:
            fail(f"{scan}: --series and --dicom-seg are for DICOM series (a folder or .zip), not a NIfTI file", code=2)
        return None
    if seg_type not in SEG_TYPES:
        fail(f"--dicom-seg-type must be one of {', '.join(SEG_TYPES)}, got {seg_type!r}", code=2)
    return {"series": series, "dicom_seg": seg_type if dicom_seg else None}


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
    model: RasterModelOpt = None,
    output: OutputOpt = None,
    reference: ReferenceOpt = None,
    overwrite: OverwriteOpt = False,
    workers: WorkersOpt = 0,
    threads: ThreadsOpt = None,
    memory_limit: MemoryOpt = "auto",
    dask_address: AddressOpt = None,
    chunk_size: RasterChunkOpt = None,
    work_dir: WorkDirOpt = None,
    bands: Annotated[str | None, typer.Option("--bands", help="1-based bands in model order, e.g. 3,2,1 (default: the card's, else all).")] = None,
    vectors: Annotated[Path | None, typer.Option("--vectors", help="Also write polygons per class (.gpkg or .geojson).")] = None,
    html: HtmlOpt = True,
    ome_zarr: OmeZarrOpt = False,
    instances: InstancesOpt = None,
    statistics: StatisticsOpt = False,
    labels: LabelsOpt = None,
    cutout: CutoutOpt = None,
    cutout_margin: Annotated[float, typer.Option("--cutout-margin", min=0.0, help="Margin of --cutout around its labels, in metres on the ground (pixels without a CRS).")] = 0.0,
    tta: TtaOpt = "none",
    trust: TrustOpt = False,
    backend: BackendOpt = None,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Segment a raster: writes <scene>_seg.tif (COG) and <scene>_seg.report.json/.csv.

    --reference also takes vectors (.geojson, .gpkg), rasterised onto the scene's grid.
    """
    from pipeline.io.outputs import preflight_raster

    run(lambda: preflight_raster(scene, output=output, reference=reference, model=model, vectors=vectors,
                                 overwrite=overwrite, html=html, ome_zarr=ome_zarr, instances=instances, cutout=cutout))
    from pipeline.segment.options import SegmentOptions
    from pipeline.segment.raster import segment_raster

    options = SegmentOptions(overwrite=overwrite, html=html, ome_zarr=ome_zarr, instances=instances,
                             chunks=parse_chunks(chunk_size, 2), backend=backend, trust=trust,
                             bands=parse_bands(bands), vectors=vectors, statistics=statistics, labels=labels,
                             cutout=cutout, cutout_margin=cutout_margin, tta=tta)
    runtime = _runtime(work_dir, workers, threads, memory_limit, dask_address)
    result = run(lambda: segment_raster(scene, model=model, output=output, reference=reference, options=options,
                                        runtime=runtime))
    _print_result(result)
    if result.vectors:
        typer.echo(f"vectors: {result.vectors} ({result.report['features']} polygons)")


def _runtime(work_dir: Path | None, workers: int, threads: int | None, memory_limit: str,
             dask_address: str | None) -> Any:
    """The shared run options of the segment commands (progress bars on: a terminal is watching)."""
    from pipeline.cluster import ClusterSettings
    from pipeline.segment.options import RunSettings

    cluster = run(lambda: ClusterSettings(address=dask_address, workers=workers, threads_per_worker=threads,
                                          memory_limit=memory_limit))
    return RunSettings(work_dir=work_dir, cluster=cluster, progress=True)


def _print_result(result: Any) -> None:
    typer.echo(f"mask:   {result.mask}")
    typer.echo(f"report: {result.report_json} (+ {result.report_csv})")
    if result.probabilities:
        typer.echo(f"probabilities: {result.probabilities}")
    if getattr(result, "html", None):
        typer.echo(f"html:   {result.html}")
    if getattr(result, "ome_zarr", None):
        typer.echo(f"ome-zarr: {result.ome_zarr}")
    if result.report.get("dicom_seg"):
        seg = result.report["dicom_seg"]
        typer.echo(f"dicom seg: {seg['path']} ({seg['segmentation_type']}, {len(seg['segments'])} segments, "
                   f"{seg['frames']} frames, {seg['bytes'] / 1e6:.2f} MB)")
    if result.report.get("instances"):
        found = result.report["instances"]
        typer.echo(f"instances: {found['mask']} ({found['count']} objects of {', '.join(found['classes'])}; "
                   f"table {found['csv']})")
    if result.report.get("cutout"):
        typer.echo(f"cutout: {result.report['cutout']['path']}")
    for row in result.report["labels"]:
        if row["dice"] is not None:
            typer.echo(f"  {row['name']:<16} dice {row['dice']:.3f}  iou {row['iou']:.3f}")
    typer.echo(result.summary())


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


@app.command("train")
def train_cmd(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="A name under datasets: in the catalog.")],
    model_card: Annotated[Path, typer.Option("--model-card", help="Card to train (network, roi, labels, preprocess, training.recipe).")],
    epochs: Annotated[int, typer.Option("--epochs", "-e", min=1, help="Epochs of training.recipe.steps_per_epoch batches.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where <name>.pt and <name>.yaml are written.")] = Path("models"),
    catalog: Annotated[Path, typer.Option("--catalog", help="The data catalog naming the dataset.")] = Path("data_catalog.yaml"),
    seed: Annotated[int, typer.Option("--seed", help="Seed for init, crops and flips.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA + AMP when present), cpu, cuda, cuda:1 ...")] = "auto",
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch CPU threads (1 = byte-reproducible).")] = 1,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train a card's network on a catalog dataset; writes weights, sha256 and the filled card. Resumes."""
    from pipeline.train.trainer import train

    result = run(lambda: train(dataset, model_card, epochs, catalog=catalog, out_dir=out_dir, seed=seed,
                               device=device, threads=threads, progress=True))
    if result.resumed_from:
        typer.echo(f"resumed after epoch {result.resumed_from}")
    typer.echo(f"loss per epoch: {', '.join(f'{v:.3f}' for v in result.losses)}")
    for name, value in result.metrics["dice_heldout"].items():
        typer.echo(f"  {name:<16} held-out dice {value:.3f}  (train {result.metrics['dice_train'][name]:.3f})")
    typer.echo(f"weights: {result.weights}\ncard:    {result.card}")


@models_app.command("list")
def models_list(verbose: VerboseOpt = 0, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Name, domain, dims and labels of every card in models/."""
    from pipeline.config.cards import load_card
    from pipeline.model.models import available_models

    for name, path in available_models().items():
        card = load_card(path)
        how = f"classical {card.classical.method}" if card.classical else f"roi {list(card.roi_size)}"
        typer.echo(f"{name:<18} {card.domain:<8} {card.spatial_dims}D  {how}  "
                   f"labels: {', '.join(label.name for label in card.labels.values())}")
        dice = card.metrics.get("dice_heldout") or {}
        scores = ", ".join(f"{k} {v:.3f}" for k, v in dice.items() if isinstance(v, int | float) and k != "background")
        if card.sha256 or scores:
            typer.echo(f"{'':<18} sha256 {(card.sha256 or '-')[:12]}  held-out dice: {scores or '-'}")


@models_app.command("show")
def models_show(name: Annotated[str, typer.Argument(help="Card name or path, a MONAI bundle directory or a TorchScript file.")],
                verbose: VerboseOpt = 0, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Print a model card as JSON (for a bundle directory: the card made from its metadata)."""
    from pipeline.config.cards import load_card
    from pipeline.model.bundles import imported_path
    from pipeline.model.models import load_model, resolve_card_path

    def card_of() -> Any:
        imported = imported_path(name)
        if imported is not None and imported.is_dir():
            return load_model(imported).card
        return load_card(resolve_card_path(imported or name))

    card = run(card_of)
    typer.echo(json.dumps(card.model_dump(mode="json"), indent=2))


@catalog_app.command("check")
def catalog_check(path: Annotated[Path, typer.Argument(help="The data catalog.")] = Path("data_catalog.yaml"),
                  verbose: VerboseOpt = 0, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Validate a data catalog and list the scans the next flow run would segment (nothing is run)."""
    from pipeline.batch.manifest import discover
    from pipeline.config.catalog import load_catalog

    plan = run(lambda: discover(load_catalog(path)))
    for job in plan.pending:
        typer.echo(f"{job.source}: {job.scan} -> {job.output}")
    for outcome in plan.failed_before:
        typer.echo(f"{outcome.source}: {outcome.scan} failed before: {outcome.reason}")
    typer.echo(f"{path}: valid")


if __name__ == "__main__":
    app()
