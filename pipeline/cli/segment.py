"""``segment-volume`` and ``segment-raster``: options in, one segment call, the outputs printed.

Each command's options are one frozen dataclass (:class:`VolumeFlags`, :class:`RasterFlags`; fields in
``--help`` order, expanded for typer by :func:`~pipeline.cli.options.grouped`), turned into the library's
:class:`~pipeline.segment.options.SegmentOptions` and :class:`~pipeline.segment.options.RunSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pipeline.cli.app import app
from pipeline.cli.options import (
    AddressOpt,
    ArrayOpt,
    AxesOpt,
    BackendOpt,
    BandsOpt,
    ChunkOpt,
    CutoutOpt,
    DebugOpt,
    DicomSegOpt,
    DicomSegTypeOpt,
    HtmlOpt,
    InstancesOpt,
    LabelsOpt,
    LevelOpt,
    MemoryOpt,
    ModelOpt,
    OmeZarrOpt,
    OrientationOpt,
    OutputOpt,
    OverwriteOpt,
    ProbabilitiesOpt,
    QuietOpt,
    RasterChunkOpt,
    RasterMarginOpt,
    RasterModelOpt,
    ReferenceOpt,
    ScanArg,
    SceneArg,
    SeriesOpt,
    SpacingOpt,
    StatisticsOpt,
    ThreadsOpt,
    TrustOpt,
    TtaOpt,
    VectorsOpt,
    VerboseOpt,
    VolumeMarginOpt,
    WorkDirOpt,
    WorkersOpt,
    grouped,
    parse_bands,
    parse_chunks,
    parse_floats,
)
from pipeline.cli.running import fail, run

if TYPE_CHECKING:
    from pipeline.segment.options import RunSettings, SegmentOptions, SeriesOptions


@dataclass(frozen=True)
class _CommonFlags:
    """The options both segment commands share. Each command's class redefines ``model``, ``chunk_size`` and
    ``cutout_margin`` with its own help (a redefined field keeps its place in ``--help``) and adds its own
    options after these."""

    model: str | None = None
    output: OutputOpt = None
    reference: ReferenceOpt = None
    overwrite: OverwriteOpt = False
    workers: WorkersOpt = 0
    threads: ThreadsOpt = None
    memory_limit: MemoryOpt = "auto"
    dask_address: AddressOpt = None
    chunk_size: str | None = None
    work_dir: WorkDirOpt = None
    html: HtmlOpt = True
    ome_zarr: OmeZarrOpt = False
    instances: InstancesOpt = None
    statistics: StatisticsOpt = False
    labels: LabelsOpt = None
    cutout: CutoutOpt = None
    cutout_margin: float = 0.0
    tta: TtaOpt = "none"
    trust: TrustOpt = False
    backend: BackendOpt = None

    def runtime(self) -> RunSettings:
        return _runtime(self.work_dir, self.workers, self.threads, self.memory_limit, self.dask_address)

    def _options(self, ndim: int, **domain: Any) -> SegmentOptions:
        """The shared :class:`SegmentOptions`, plus the command's own (``domain``)."""
        from pipeline.segment.options import SegmentOptions

        return SegmentOptions(overwrite=self.overwrite, html=self.html, ome_zarr=self.ome_zarr,
                              instances=self.instances, chunks=parse_chunks(self.chunk_size, ndim),
                              backend=self.backend, trust=self.trust, statistics=self.statistics, labels=self.labels,
                              cutout=self.cutout, cutout_margin=self.cutout_margin, tta=self.tta, **domain)


@dataclass(frozen=True)
class VolumeFlags(_CommonFlags):
    """``segment-volume``'s options after SCAN, in ``--help`` order."""

    model: ModelOpt = None
    chunk_size: ChunkOpt = None
    cutout_margin: VolumeMarginOpt = 0.0
    probabilities: ProbabilitiesOpt = False
    level: LevelOpt = 0
    orientation: OrientationOpt = None
    array: ArrayOpt = None
    spacing: SpacingOpt = None
    axes: AxesOpt = None
    series: SeriesOpt = None
    dicom_seg: DicomSegOpt = False
    dicom_seg_type: DicomSegTypeOpt = "binary"

    def options(self) -> SegmentOptions:
        return self._options(3, probabilities=self.probabilities)


@dataclass(frozen=True)
class RasterFlags(_CommonFlags):
    """``segment-raster``'s options after SCENE, in ``--help`` order."""

    model: RasterModelOpt = None
    chunk_size: RasterChunkOpt = None
    cutout_margin: RasterMarginOpt = 0.0
    bands: BandsOpt = None
    vectors: VectorsOpt = None

    def options(self) -> SegmentOptions:
        return self._options(2, bands=parse_bands(self.bands), vectors=self.vectors)


@app.command("segment-volume")
@grouped
def segment_volume_cmd(source: ScanArg, flags: VolumeFlags, verbose: VerboseOpt = 0, quiet: QuietOpt = False,
                       debug: DebugOpt = False) -> None:
    """Segment a NIfTI scan, or a DICOM series (a folder or .zip): writes <scan>_seg.nii.gz and
    <scan>_seg.report.json/.csv (and <scan>_seg.dcm with --dicom-seg); or a Zarr volume in place (writes
    labels/<model> into the store, or into -o other.ome.zarr)."""
    from pipeline.io.ngff import is_zarr_input
    from pipeline.io.outputs import preflight_volume

    if is_zarr_input(source):
        _segment_zarr(source, flags)
        return
    scan = Path(source)
    dicom = _dicom_input(scan, flags.series, flags.dicom_seg, flags.dicom_seg_type)
    run(lambda: preflight_volume(scan, flags, output=flags.output, reference=flags.reference, model=flags.model,
                                 probabilities=flags.probabilities, series=dicom is not None,
                                 dicom_seg=flags.dicom_seg))
    options = flags.options()
    _segment_file(scan, dicom, model=flags.model, output=flags.output, reference=flags.reference, options=options,
                  runtime=flags.runtime())


def _segment_file(scan: Path, dicom: SeriesOptions | None, **keywords: Any) -> None:
    """segment-volume on a NIfTI file or a DICOM series: one call to the library, then the outputs printed."""
    if dicom is not None:
        from pipeline.segment.dicom import segment_series

        result = run(lambda: segment_series(scan, dicom=dicom, **keywords))
    else:
        from pipeline.segment.volume import segment_volume

        result = run(lambda: segment_volume(scan, **keywords))
    _print_result(result)


def _segment_zarr(store: str, flags: VolumeFlags) -> None:
    """segment-volume on a Zarr store: one call to :func:`pipeline.segment.ngff.segment_zarr`."""
    from pipeline.segment.options import SegmentOptions

    if flags.reference or flags.probabilities or flags.ome_zarr or flags.instances:
        fail("--reference, --probabilities, --ome-zarr and --instances are not available for Zarr inputs", code=2)
    spacing = None if flags.spacing is None else parse_floats(flags.spacing, "--spacing")
    options = SegmentOptions(overwrite=flags.overwrite, chunks=parse_chunks(flags.chunk_size, 3), trust=flags.trust,
                             backend=flags.backend)
    runtime = flags.runtime()
    from pipeline.segment.ngff import ZarrLayout, segment_zarr

    layout = ZarrLayout(level=flags.level, orientation=flags.orientation, array=flags.array, spacing=spacing,
                        axes=flags.axes)
    result = run(lambda: segment_zarr(store, model=flags.model, output=flags.output, layout=layout, options=options,
                                      runtime=runtime))
    typer.echo(f"labels: {result.labels}")
    typer.echo(f"report: {result.report_json} (+ {result.report_csv})")
    typer.echo(result.summary())


def _dicom_input(scan: Path, series: str | None, dicom_seg: bool, seg_type: str) -> SeriesOptions | None:
    """``segment_series``'s ``dicom`` value when ``scan`` is a DICOM folder or zip, None for a NIfTI file; the
    DICOM options given for a NIfTI file, or an unknown SEG type, are usage errors."""
    from pipeline.io.dicom_files import is_series_path
    from pipeline.io.dicom_seg import SEG_TYPES
    from pipeline.segment.options import SeriesOptions

    if not is_series_path(scan):
        if series or dicom_seg:
            fail(f"{scan}: --series and --dicom-seg are for DICOM series (a folder or .zip), not a NIfTI file", code=2)
        return None
    if seg_type not in SEG_TYPES:
        fail(f"--dicom-seg-type must be one of {', '.join(SEG_TYPES)}, got {seg_type!r}", code=2)
    return SeriesOptions(series_uid=series, dicom_seg=seg_type if dicom_seg else None)


@app.command("segment-raster")
@grouped
def segment_raster_cmd(scene: SceneArg, flags: RasterFlags, verbose: VerboseOpt = 0, quiet: QuietOpt = False,
                       debug: DebugOpt = False) -> None:
    """Segment a raster: writes <scene>_seg.tif (COG) and <scene>_seg.report.json/.csv.

    --reference also takes vectors (.geojson, .gpkg), rasterised onto the scene's grid.
    """
    from pipeline.io.outputs import preflight_raster

    run(lambda: preflight_raster(scene, flags, output=flags.output, reference=flags.reference, model=flags.model,
                                 vectors=flags.vectors))
    from pipeline.segment.raster import segment_raster

    options = flags.options()
    runtime = flags.runtime()
    result = run(lambda: segment_raster(scene, model=flags.model, output=flags.output, reference=flags.reference,
                                        options=options, runtime=runtime))
    _print_result(result)
    if result.vectors:
        typer.echo(f"vectors: {result.vectors} ({result.report['features']} polygons)")


def _runtime(work_dir: Path | None, workers: int, threads: int | None, memory_limit: str,
             dask_address: str | None) -> RunSettings:
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
