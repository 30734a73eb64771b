"""Every file a run writes, named in one place, and the one guard that checks them before any work.

Why one module: each front end (``segment-volume``, ``segment-raster``, ``evaluate``) used to check the
outputs it remembered, with suffixes matched case-sensitively in five places; a report CSV, an
instance map or a reference could then be replaced without ``--overwrite``. Here the complete list of
outputs comes from the mask path and the options, and :func:`check_outputs` refuses, before torch,
Dask or a cluster are touched: a name whose suffix the format does not own, an output that is a file
the run reads (by any spelling: symlinks, ``..``, hard links), an output that is not a regular file
(a directory, FIFO, dangling symlink) unless it is a Zarr store volseg wrote, and an existing output
without ``overwrite``. Only the standard library is imported, so the CLI can call it first.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipeline.config.choices import VECTOR_SUFFIXES
from pipeline.errors import InputError, OutputError, OutputExistsError

#: Mask value (and declared nodata) of pixels that were nodata in the input: the one definition every writer,
#: viewer file and page uses.
NODATA_LABEL = 255

#: Suffixes each written format owns (matched case-insensitively, longest first).
NIFTI_SUFFIXES = (".nii.gz", ".nii")
GEOTIFF_SUFFIXES = (".tif", ".tiff")
JSON_SUFFIXES = (".json",)
MASK_SUFFIXES = (*NIFTI_SUFFIXES, *GEOTIFF_SUFFIXES)

#: Format -> (suffixes, message when a name has none of them).
FORMATS: dict[str, tuple[tuple[str, ...], str]] = {
    "nifti": (NIFTI_SUFFIXES, "the mask is NIfTI; name it .nii.gz or .nii"),
    "geotiff": (GEOTIFF_SUFFIXES, "the mask is a Cloud-Optimized GeoTIFF; name it .tif or .tiff"),
    "vectors": (VECTOR_SUFFIXES, "unknown vector format {suffix!r} (choices: .gpkg, .geojson)"),
    "json": (JSON_SUFFIXES, "the report is JSON; name it .json"),
    "csv": ((".csv",), "a table must be named .csv"),
    "html": ((".html",), "a page must be named .html"),
    "text": ((".txt", ".ctbl", ".qml"), "a viewer file must be named .txt, .ctbl or .qml"),
    "zarr": ((".zarr",), "a Zarr store must be named .zarr"),
    "dicom": ((".dcm",), "a DICOM Segmentation must be named .dcm"),
}


@dataclass(frozen=True)
class Output:
    """One file (or Zarr store, ``store=True``) a run will write, and the format that names it."""

    path: Path
    format: str
    store: bool = False


# ------------------------------------------------------------------------------------------ naming

def split_suffix(name: str, suffixes: Sequence[str] = MASK_SUFFIXES) -> tuple[str, str]:
    """``"scan_seg.NII.GZ"`` -> ``("scan_seg", ".NII.GZ")``; ``("name", "")`` when no suffix matches."""
    lower = name.lower()
    for suffix in sorted(suffixes, key=len, reverse=True):
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return name, ""


def mask_stem(mask: Path) -> str:
    """``scan_seg.nii.gz`` / ``scene_seg.TIF`` -> ``scan_seg`` / ``scene_seg``: every sidecar is named after it."""
    stem, suffix = split_suffix(mask.name)
    return stem if suffix else mask.stem


def is_gzip(path: Path) -> bool:
    """Whether a NIfTI output is gzip-compressed (``.nii.gz``, any case)."""
    return path.name.lower().endswith(".gz")


def default_volume_output(scan: Path) -> Path:
    """``scan.nii.gz`` -> ``scan_seg.nii.gz`` beside it (the scan's suffix kept as written)."""
    stem, suffix = split_suffix(scan.name, NIFTI_SUFFIXES)
    return scan.with_name(f"{stem}_seg{suffix or '.nii.gz'}")


def default_series_output(series: Path) -> Path:
    """A DICOM series folder ``CT/`` -> ``CT_seg.nii.gz`` beside it; ``study.zip`` -> ``study_seg.nii.gz``."""
    series = series if series.name else series.resolve()  # "." names no folder
    stem = series.stem if series.name.lower().endswith(".zip") else series.name
    return series.with_name(f"{stem}_seg.nii.gz")


def default_raster_output(scene: Path) -> Path:
    """``scene.tif`` (or ``.vrt``...) -> ``scene_seg.tif`` beside it."""
    return scene.with_name(f"{scene.stem}_seg.tif")


def report_json_path(mask: Path) -> Path:
    return mask.with_name(f"{mask_stem(mask)}.report.json")


def report_csv_path(json_path: Path) -> Path:
    """The CSV beside a JSON report: ``x.report.json`` -> ``x.report.csv``, ``scores.JSON`` -> ``scores.csv``."""
    return json_path.with_name(split_suffix(json_path.name, JSON_SUFFIXES)[0] + ".csv")


def html_report_path(mask: Path) -> Path:
    return mask.with_name(f"{mask_stem(mask)}.report.html")


def viewer_paths(mask: Path, kind: str) -> tuple[Path, ...]:
    """ITK-SNAP + Slicer label files for volumes, the QGIS style for rasters."""
    stem = mask_stem(mask)
    if kind == "raster":
        return (mask.with_name(f"{stem}.qml"),)
    return mask.with_name(f"{stem}.itksnap.txt"), mask.with_name(f"{stem}.ctbl")


def ome_zarr_path(mask: Path) -> Path:
    return mask.with_name(f"{mask_stem(mask)}.ome.zarr")


def dicom_seg_path(mask: Path) -> Path:
    """``scan_seg.nii.gz`` -> ``scan_seg.dcm``: the DICOM Segmentation of a DICOM series' mask."""
    return mask.with_name(f"{mask_stem(mask)}.dcm")


def probabilities_path(mask: Path) -> Path:
    return mask.with_name(f"{mask_stem(mask)}_probabilities.zarr")


def instance_mask_path(mask: Path) -> Path:
    """``scan_seg.nii.gz`` -> ``scan_seg_instances.nii.gz``; ``scene_seg.TIF`` -> ``scene_seg_instances.TIF``."""
    stem, suffix = split_suffix(mask.name)
    return mask.with_name(f"{stem}_instances{suffix}")


def cutout_path(mask: Path) -> Path:
    """``scan_seg.nii.gz`` -> ``scan_seg_cutout.nii.gz``: the input cut out by ``--cutout``."""
    stem, suffix = split_suffix(mask.name)
    return mask.with_name(f"{stem}_cutout{suffix}")


def instance_csv_path(mask: Path) -> Path:
    return mask.with_name(f"{mask_stem(mask)}.instances.csv")


# ------------------------------------------------------------------------------------------ plans

def _sidecars(mask: Path, kind: str, *, html: bool, ome_zarr: bool, instances: bool) -> list[Output]:
    json_path = report_json_path(mask)
    found = [Output(json_path, "json"), Output(report_csv_path(json_path), "csv")]
    found += [Output(p, "text") for p in viewer_paths(mask, kind)]
    if html:
        found.append(Output(html_report_path(mask), "html"))
    if ome_zarr:
        found.append(Output(ome_zarr_path(mask), "zarr", store=True))
    if instances:
        found += [Output(instance_mask_path(mask), "nifti" if kind == "volume" else "geotiff"),
                  Output(instance_csv_path(mask), "csv")]
    return found


def volume_outputs(mask: Path, *, html: bool = True, ome_zarr: bool = False, probabilities: bool = False,
                   instances: bool = False) -> list[Output]:
    """Everything ``segment-volume`` writes for ``mask``, the mask first."""
    mask = Path(mask)
    found = [Output(mask, "nifti"), *_sidecars(mask, "volume", html=html, ome_zarr=ome_zarr, instances=instances)]
    if probabilities:
        found.append(Output(probabilities_path(mask), "zarr", store=True))
    return found


def raster_outputs(mask: Path, *, html: bool = True, ome_zarr: bool = False, instances: bool = False,
                   vectors: Path | None = None) -> list[Output]:
    """Everything ``segment-raster`` writes for ``mask``, the mask first."""
    mask = Path(mask)
    found = [Output(mask, "geotiff"), *_sidecars(mask, "raster", html=html, ome_zarr=ome_zarr, instances=instances)]
    if vectors is not None:
        found.insert(1, Output(Path(vectors), "vectors"))
    return found


def report_outputs(json_path: Path) -> list[Output]:
    """What ``pipeline evaluate -o`` writes: the JSON and the CSV beside it."""
    json_path = Path(json_path)
    return [Output(json_path, "json"), Output(report_csv_path(json_path), "csv")]


def vector_reads(path: Path) -> list[Path]:
    """A reference vector file and, for a shapefile, the sidecars it is read with."""
    path = Path(path)
    if path.suffix.lower() != ".shp":
        return [path]
    return [path, *(path.with_suffix(s) for s in (".shx", ".dbf", ".prj", ".cpg"))]


def model_reads(model: Any) -> list[Path]:
    """What a loaded :class:`~pipeline.model.models.Model` was read from: its card and weights, or a bundle's
    directory."""
    card_path = Path(model.card_path)
    if card_path.is_dir():
        return [card_path]
    card = model.card
    reads = [card_path]
    weights = getattr(card, "weights", None)
    if weights:
        reads.append(card_path.parent / str(weights))
        if getattr(card, "architecture", None) == "bundle":
            reads.append(reads[-1].parent.parent)
    return reads


def model_arg_reads(model: str | os.PathLike[str] | None) -> list[Path]:
    """Without loading anything: the ``--model`` argument when it names a file or directory (else none)."""
    if model is None or not os.path.exists(model):
        return []
    path = Path(model)
    return [path] if path.is_dir() else [path, *(path.with_suffix(s) for s in (".yaml", ".yml", ".pt", ".ts"))]


# ------------------------------------------------------------------------------------------ the guard

#: Marks a Zarr store volseg wrote (``attributes.volseg`` in its ``zarr.json``): the only directories
#: ``--overwrite`` may replace.
STORE_KEY = "volseg"


def is_volseg_store(path: Path) -> bool:
    """A directory holding a Zarr v3 ``zarr.json`` whose attributes carry :data:`STORE_KEY`."""
    try:
        meta = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("attributes"), dict) and STORE_KEY in meta["attributes"]


def mark_store(path: Path, kind: str) -> None:
    """Add ``attributes.volseg.store = kind`` to a Zarr store's root ``zarr.json`` (before publishing it)."""
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta.setdefault("attributes", {}).setdefault(STORE_KEY, {})["store"] = kind
    meta_path.write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """The resolved path and, when it exists, (device, inode): equal for every spelling and hard link."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return real, None
    return real, (st.st_dev, st.st_ino)


def _overlaps(write: tuple[str, tuple[int, int] | None], read: tuple[str, tuple[int, int] | None]) -> bool:
    """Same file, or one inside the other (an output inside a bundle read, a reference inside an output store)."""
    (w, w_id), (r, r_id) = write, read
    if w_id is not None and w_id == r_id:
        return True
    return w == r or w.startswith(r.rstrip(os.sep) + os.sep) or r.startswith(w.rstrip(os.sep) + os.sep)


def _kind(path: Path) -> str | None:
    """What is at ``path`` when it is not something ``--overwrite`` may replace (None: nothing, or a file)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (the parent check says why it cannot be)
        return None
    if stat.S_ISLNK(st.st_mode) and not path.exists():
        return "a dangling symlink"
    st = os.stat(path) if stat.S_ISLNK(st.st_mode) else st
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISFIFO(st.st_mode):
        return "a FIFO"
    return "not a regular file"


def _check_parent(path: Path) -> None:
    """The nearest existing ancestor must be a writable directory (missing ones are created later)."""
    parent = Path(os.path.abspath(path)).parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{parent}: not a directory, cannot hold {path.name}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{parent}: output directory is not writable")


def check_outputs(writes: Iterable[Output], reads: Iterable[str | os.PathLike[str] | None], *,
                  overwrite: bool) -> None:
    """Refuse the run before any work when one of its outputs could not or must not be written.

    Raises (naming the first offending output): :class:`OutputError` for a suffix the format does
    not own, an output that is a directory, FIFO or dangling symlink (a Zarr store volseg wrote is
    the one directory ``overwrite`` replaces), or an unwritable directory; :class:`InputError` for an
    output that is, contains or lies inside a file the run reads, ``overwrite`` or not;
    :class:`OutputExistsError` for an existing output without ``overwrite``.
    """
    writes = list(writes)
    inputs = [(Path(r), _identity(Path(r))) for r in reads if r is not None and str(r) != ""]
    for out in writes:
        ident = _identity(out.path)
        for read, read_ident in inputs:
            if _overlaps(ident, read_ident):
                raise InputError(f"{out.path}: output would overwrite an input of this run ({read})")
    for out in writes:
        kind = _kind(out.path)
        if kind is not None and not (out.store and kind == "a directory" and is_volseg_store(out.path)):
            what = "a file or a Zarr store volseg wrote" if out.store else "a file"
            raise OutputError(f"{out.path}: is {kind}, not {what}; --overwrite replaces only those")
        suffixes, message = FORMATS[out.format]
        if not split_suffix(out.path.name, suffixes)[1]:
            raise OutputError(f"{out.path}: " + message.format(suffix=out.path.suffix))
        if os.path.lexists(out.path) and not overwrite:
            raise OutputExistsError(f"{out.path}: output exists; pass --overwrite to replace it")
        _check_parent(out.path)


def lock_path(output: Path) -> Path:
    """The output's lock, ``.<name>.lock`` beside its resolved path: every run writing it takes the same one,
    whatever its work directory."""
    real = Path(os.path.realpath(output.parent)) / output.name
    return real.with_name(f".{real.name}.lock")


@contextlib.contextmanager
def created_parents(writes: Iterable[Output]) -> Iterator[None]:
    """Create missing output directories; on failure remove those it created that are still empty."""
    made: list[Path] = []
    try:
        for out in writes:
            missing = []
            parent = Path(os.path.abspath(out.path)).parent
            while not parent.exists():
                missing.append(parent)
                parent = parent.parent
            for directory in reversed(missing):
                try:
                    directory.mkdir()
                except OSError as e:
                    raise OutputError(f"{directory}: cannot create the output directory ({e.strerror or e})") from e
                made.append(directory)
        yield
    except BaseException:
        for directory in reversed(made):
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


# ------------------------------------------------------------------------------------------ front ends

def _asked(instances: Sequence[str] | None) -> bool:
    return any(part.strip() for value in instances or () for part in str(value).split(","))


class OutputChoices(Protocol):
    """The options that decide the sidecars a run writes (``SegmentOptions`` and the CLI flags have them)."""

    @property
    def overwrite(self) -> bool: ...
    @property
    def html(self) -> bool: ...
    @property
    def ome_zarr(self) -> bool: ...
    @property
    def instances(self) -> Sequence[str] | None: ...
    @property
    def cutout(self) -> Sequence[str] | None: ...


def preflight_volume(scan: Path, choices: OutputChoices, *, output: Path | None, reference: Path | None,
                     model: str | None, probabilities: bool, series: bool = False, dicom_seg: bool = False) -> None:
    """The output guard of ``segment-volume`` from the command line alone, before torch or Dask are imported
    (:func:`pipeline.segment.segment_volume` checks again with the loaded model's files). ``series``: ``scan``
    is a DICOM series folder or zip (its mask's default name differs), ``dicom_seg``: a SEG is written too."""
    mask = output or (default_series_output(scan) if series else default_volume_output(scan))
    writes = volume_outputs(mask, html=choices.html, ome_zarr=choices.ome_zarr, probabilities=probabilities,
                            instances=_asked(choices.instances))
    writes += [Output(cutout_path(mask), "nifti")] if _asked(choices.cutout) else []
    if dicom_seg:
        writes.append(Output(dicom_seg_path(mask), "dicom"))
    check_outputs(writes, [scan, reference, *model_arg_reads(model)], overwrite=choices.overwrite)


def preflight_raster(scene: Path, choices: OutputChoices, *, output: Path | None, reference: Path | None,
                     model: str | None, vectors: Path | None) -> None:
    """:func:`preflight_volume` for ``segment-raster``."""
    mask = output or default_raster_output(scene)
    writes = raster_outputs(mask, html=choices.html, ome_zarr=choices.ome_zarr, instances=_asked(choices.instances),
                            vectors=vectors)
    writes += [Output(cutout_path(mask), "geotiff")] if _asked(choices.cutout) else []
    reads = [scene, *(vector_reads(reference) if reference else ()), *model_arg_reads(model)]
    check_outputs(writes, reads, overwrite=choices.overwrite)
