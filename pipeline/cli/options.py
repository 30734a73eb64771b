"""The commands' shared options (typer ``Annotated`` types, one per line, help included) and their parsers."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from pipeline.cli.running import fail, set_state

T = TypeVar("T")

VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, expose_value=False, callback=set_state("verbose"),
                                         help="More logging (-v: progress facts such as the Dask dashboard, -vv: debug and Dask).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", expose_value=False, callback=set_state("quiet"), help="Only errors.")]
DebugOpt = Annotated[bool, typer.Option("--debug", expose_value=False, callback=set_state("debug"), help="Show tracebacks for errors.")]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", metavar="NAME|PATH", help="Model card name or path, a MONAI bundle or a TorchScript file (default: ct-organs).")]
RasterModelOpt = Annotated[str | None, typer.Option("--model", "-m", metavar="NAME|PATH", help="Model card name or path, a MONAI bundle or a TorchScript file (default: buildings).")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Output mask path (default: beside the input).")]
ReferenceOpt = Annotated[Path | None, typer.Option("--reference", "-r", help="Reference mask on the same grid, for Dice/IoU.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
WorkersOpt = Annotated[int, typer.Option("--workers", "-w", min=0, help="Local Dask worker processes (0: threads in this process, the fastest on one machine).")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", min=1, help="Block tasks each Dask worker runs at once (default 1 per worker process; in process the engine picks 1 or 2 per plan).")]
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

# segment-volume only
ScanArg = Annotated[str, typer.Argument(metavar="SCAN", help="Input 3D NIfTI scan (.nii / .nii.gz), or an OME-Zarr / Zarr store (path or fsspec URL).")]
ProbabilitiesOpt = Annotated[bool, typer.Option("--probabilities", help="Also write softmax probabilities (float16 Zarr).")]
VolumeMarginOpt = Annotated[float, typer.Option("--cutout-margin", min=0.0, help="Margin of --cutout around its labels, in mm.")]
LevelOpt = Annotated[int, typer.Option("--level", help="OME-Zarr: pyramid level to segment (0: full resolution).")]
OrientationOpt = Annotated[str | None, typer.Option("--orientation", help="Zarr: axis codes of the stored spatial axes, e.g. SAR (default: the model's orientation).")]
ArrayOpt = Annotated[str | None, typer.Option("--array", help="Plain Zarr: the array's name in the group.")]
SpacingOpt = Annotated[str | None, typer.Option("--spacing", help="Plain Zarr: voxel size in mm per spatial axis, stored order, e.g. 0.5,0.5,1.0.")]
AxesOpt = Annotated[str | None, typer.Option("--axes", help="Plain Zarr: axis names in stored order, e.g. zyx.")]
SeriesOpt = Annotated[str | None, typer.Option("--series", help="DICOM: SeriesInstanceUID to segment when the folder holds several series.")]
DicomSegOpt = Annotated[bool, typer.Option("--dicom-seg", help="DICOM: also write <mask stem>.dcm, a DICOM Segmentation of the series.")]
DicomSegTypeOpt = Annotated[str, typer.Option("--dicom-seg-type", help="DICOM SEG encoding: binary (most widely displayed) or labelmap.")]
# segment-raster only
SceneArg = Annotated[Path, typer.Argument(help="Input raster: GeoTIFF, COG or VRT.")]
BandsOpt = Annotated[str | None, typer.Option("--bands", help="1-based bands in model order, e.g. 3,2,1 (default: the card's, else all).")]
VectorsOpt = Annotated[Path | None, typer.Option("--vectors", help="Also write polygons per class (.gpkg or .geojson).")]
RasterMarginOpt = Annotated[float, typer.Option("--cutout-margin", min=0.0, help="Margin of --cutout around its labels, in metres on the ground (pixels without a CRS).")]


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


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        fail(f"{option} must be comma-separated numbers, e.g. 0.5,0.5,1.0, got {text!r}", code=2)


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        fail(f"--bands must be comma-separated band numbers, e.g. 3,2,1, got {text!r}", code=2)


def grouped(command: Callable[..., T]) -> Callable[..., T]:
    """Let a command take its options as frozen dataclasses: typer reads a command's options from its
    signature, so each parameter annotated with a dataclass is shown to typer as that dataclass's fields
    (``Annotated`` typer options, with their defaults), in its place, so ``--help`` lists them in field order;
    the command is called with the dataclass built from them."""
    hints = typing.get_type_hints(command, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, tuple[Any, list[str]]] = {}
    for name, param in inspect.signature(command).parameters.items():
        kind = hints.get(name, param.annotation)
        if not (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=kind))
            continue
        types = typing.get_type_hints(kind, include_extras=True)
        fields = dataclasses.fields(kind)
        groups[name] = (kind, [f.name for f in fields])
        params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=types[f.name],
                                     default=inspect.Parameter.empty if f.default is dataclasses.MISSING
                                     else f.default) for f in fields]

    @functools.wraps(command)
    def wrapper(**values: Any) -> T:
        for name, (kind, names) in groups.items():
            values[name] = kind(**{n: values.pop(n) for n in names if n in values})
        return command(**values)

    wrapper.__signature__ = inspect.Signature(params, return_annotation=hints.get("return"))  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
