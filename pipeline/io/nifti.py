"""NIfTI edge: validate a scan, stream it into the Zarr work store, stream a mask back out.

Nothing here loads a whole volume: reads go slab by slab along the last axis
(contiguous in a NIfTI file, so a .nii.gz is decompressed once, front to back),
and the mask writer emits the header and then one slab at a time.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import logging
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError, InputNotFoundError
from pipeline.files import require_regular_file
from pipeline.geometry import VolumeGeometry
from pipeline.io.atomic import atomic_path
from pipeline.io.nibabel_without_pydicom import apply_read_scaling, nib
from pipeline.io.outputs import is_gzip
from pipeline.io.transpose import reversed_axes

logger = logging.getLogger(__name__)

#: qform and sform may disagree this much (mm, at a corner) before we warn: float32 rounding, or a
#: rigid qform approximating a slightly sheared sform, is normal.
QFORM_SFORM_TOLERANCE_MM = 0.1
#: Largest magnitude a voxel may have: inference runs in float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Refuse volumes with more voxels than this (a corrupt header, not a scan): 2**36 = 68.7 G voxels.
MAX_VOXELS = 2**36
NIFTI_INTENT_LABEL = 1002


@dataclass(frozen=True)
class NiftiScan:
    """A validated NIfTI file: its array proxy and geometry (nothing read yet)."""

    path: Path
    proxy: Any  #: nibabel ArrayProxy, sliced lazily
    geometry: VolumeGeometry
    dtype: np.dtype  #: of the values as read: float32 when scl_slope/scl_inter scale the stored ones


def open_scan(path: str | Path) -> NiftiScan:
    """Open and validate a 3D NIfTI volume without reading its voxels.

    Raises
    ------
    InputNotFoundError, InputError
        Missing file, not NIfTI, not 3D, empty axis, absurd size, non-numeric dtype.
    """
    path = Path(path)
    require_regular_file(path, "file", InputError, missing=InputNotFoundError)
    with _nibabel_messages() as messages:
        try:
            image = nib.load(path)
        except Exception as e:  # nibabel raises ImageFileError, EOFError, OSError, ValueError...
            raise InputError(f"{path}: not a readable NIfTI file ({_reason(e)})") from e
    for message in messages:
        logger.warning("%s: %s", path, message)
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{path}: not a NIfTI image ({type(image).__name__})")
    shape = tuple(int(s) for s in image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputError(f"{path}: image is {len(shape)}D (shape {tuple(image.shape)}); pass a 3D volume")
    if min(shape) < 1:
        raise InputError(f"{path}: image has an empty axis (shape {shape})")
    if math.prod(shape) > MAX_VOXELS:
        raise InputError(f"{path}: header claims {math.prod(shape):.3g} voxels (shape {shape}); "
                         "refusing (corrupt header?)")
    dtype = image.get_data_dtype()
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise InputError(f"{path}: voxel type {dtype} is not a scalar number")
    _check_size(path, image, shape, dtype)
    # nibabel moves scl_slope/scl_inter from the header into the array proxy (1 and 0 when unused)
    slope, inter = float(getattr(image.dataobj, "slope", 1.0)), float(getattr(image.dataobj, "inter", 0.0))
    if slope != 1.0 or inter != 0.0:
        # scl_slope/scl_inter apply (e.g. uint16 stored + intercept -1024 gives HU): the values are the
        # scaled ones, which the stored type may not hold (negative HU in uint16, fractions in int16)
        dtype = np.dtype(np.float32)
    geometry = VolumeGeometry.from_header(image.header, shape, image.affine)
    if not np.all(np.isfinite(geometry.affine_matrix)) or abs(np.linalg.det(geometry.affine_matrix[:3, :3])) < 1e-12:
        raise InputError(f"{path}: affine is not invertible or not finite; cannot place the mask in space")
    apart = qform_sform_distance(image.header, shape)
    if apart > QFORM_SFORM_TOLERANCE_MM:
        logger.warning("%s: qform and sform disagree (a corner voxel %.3g mm apart); using the sform as nibabel "
                       "does; the mask copies both, so it overlays the scan in any viewer", path, apart)
    return NiftiScan(path=path, proxy=image.dataobj, geometry=geometry, dtype=np.dtype(dtype))


@contextlib.contextmanager
def _nibabel_messages() -> Iterator[list[str]]:
    """Collect what nibabel logs while reading a header instead of letting it print.

    nibabel gives its ``nibabel.global`` logger a handler of its own, so each message printed twice
    (once more through ours), and header problems it then raises for came out as an extra ``ERROR`` line.
    The caller reports them once: in its error, or as a warning naming the file.
    """
    messages: list[str] = []
    nib_logger = logging.getLogger("nibabel.global")

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    saved = nib_logger.handlers[:], nib_logger.propagate
    nib_logger.handlers[:] = [Collect(logging.WARNING)]
    nib_logger.propagate = False
    try:
        yield messages
    finally:
        nib_logger.handlers[:], nib_logger.propagate = saved


def qform_sform_distance(header: Any, shape: tuple[int, ...]) -> float:
    """How far apart (mm) the qform and the sform put the volume's farthest corner; 0 unless both are set."""
    qform, qform_code = header.get_qform(coded=True)
    sform, sform_code = header.get_sform(coded=True)
    if not qform_code or not sform_code:
        return 0.0
    corners = np.array([[*corner, 1.0] for corner in itertools.product(*[(0, side - 1) for side in shape])])
    return float(np.linalg.norm(corners @ (qform - sform).T[:, :3], axis=1).max())


def _check_size(path: Path, image: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """For uncompressed files, catch truncation before reading anything."""
    if is_gzip(path):
        return
    needed = int(image.header.get_data_offset()) + math.prod(shape) * dtype.itemsize
    if path.stat().st_size < needed:
        raise InputError(f"{path}: file is truncated ({path.stat().st_size} bytes, header needs {needed})")


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def iter_slabs(scan: NiftiScan, thickness: int) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(k-slice, data)`` slabs of ``thickness`` along the last axis, in file order.

    One pass over the file through one open stream (a .nii.gz is decompressed once, front to back),
    ending at its end: there gzip checks the CRC-32 and length in the trailer, so a corrupt
    compressed body is refused (after the last slab, before the iteration ends), not segmented.
    Values are those nibabel gives (``scl_slope``/``scl_inter`` applied) cast to ``scan.dtype``,
    and checked after the cast: NaN/inf voxels, and scaled values float32 cannot hold, are refused
    rather than guessed at (a scan with NaNs is broken upstream).

    Raises InputError on truncated or corrupt data and on non-finite values.
    """
    shape = scan.geometry.shape
    stored = np.dtype(scan.proxy.dtype)
    depth = shape[2]
    with _voxel_stream(scan) as fh:
        for k0 in range(0, depth, thickness):
            k = slice(k0, min(k0 + thickness, depth))
            size = shape[0] * shape[1] * (k.stop - k.start) * stored.itemsize
            where = f"voxels at k={k.start}..{k.stop - 1}"
            data = _read(scan.path, fh, size, where)
            raw = np.frombuffer(data, stored).reshape(*shape[:2], k.stop - k.start, order="F")
            yield k, _values(scan, raw, k)
        _read(scan.path, fh, -1, "the end of the file")  # gzip: the trailer's CRC and size are checked here


@contextlib.contextmanager
def _voxel_stream(scan: NiftiScan) -> Iterator[Any]:
    """The file, or its decompressed stream, positioned at the first voxel.

    Compression is chosen by extension, as nibabel does; ``.gz`` through :mod:`gzip` itself, which
    checks the trailer at the end of the stream (nibabel may use ``indexed_gzip``, built for seeking).
    """
    try:
        fh = gzip.open(scan.path, "rb") if scan.path.name.endswith(".gz") else nib.openers.ImageOpener(scan.path)  # type: ignore[arg-type]  # nibabel annotates str | IOBase, opens paths too
    except OSError as e:
        raise InputError(f"{scan.path}: cannot read voxels ({e.strerror or e})") from e
    with fh:
        _read(scan.path, fh, int(scan.proxy.offset), "the header")
        yield fh


def _read(path: Path, fh: Any, size: int, where: str) -> bytes:
    """``size`` bytes (all the rest for -1) of ``fh``; short or corrupt reads are an InputError."""
    try:
        if size >= 0:
            data = fh.read(size)
        else:
            while fh.read(2**20):
                pass
            return b""
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise InputError(f"{path}: cannot read {where} ({_reason(e)}); truncated or corrupt?") from e
    if len(data) < size:
        raise InputError(f"{path}: cannot read {where} (the file ends {size - len(data)} bytes early); "
                         "truncated or corrupt?")
    return data


def _values(scan: NiftiScan, raw: np.ndarray, k: slice) -> np.ndarray:
    """Scaled values of one slab in ``scan.dtype``, refused when any is not finite after the cast."""
    if scan.dtype.kind != "f":
        return raw
    slope, inter = np.asanyarray(scan.proxy.slope), np.asanyarray(scan.proxy.inter)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, as one line
        slab = apply_read_scaling(raw, slope, inter).astype(scan.dtype, copy=False)
        # the network computes in float32: a float64 value beyond its range would become inf there
        finite = np.isfinite(slab) & (np.abs(slab) <= FLOAT32_MAX)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        if raw.dtype.kind == "f" and not np.isfinite(raw).all():
            why = f"{bad} NaN/inf voxels"
        elif float(slope) != 1.0 or float(inter) != 0.0:
            why = (f"{bad} voxels beyond float32 range once scaled (scl_slope {float(slope):g}, "
                   f"scl_inter {float(inter):g})")
        else:
            why = f"{bad} voxels beyond float32 range"
        raise InputError(f"{scan.path}: {why} in slices k={k.start}..{k.stop - 1}; fix or mask the scan first")
    return slab


#: Largest slab read at once, in bytes; thinner slabs than a chunk are used for huge planes.
SLAB_BYTES = 256 * 2**20


def slab_thickness(geometry: VolumeGeometry, dtype: np.dtype, chunk: int) -> int:
    """A chunk-thick slab, or thinner when one plane x chunk would exceed :data:`SLAB_BYTES`."""
    plane = geometry.shape[0] * geometry.shape[1] * dtype.itemsize
    return max(1, min(chunk, SLAB_BYTES // plane))


def stream_to_array(scan: NiftiScan, target: Any) -> None:
    """Copy the scan into ``target`` (a (1, i, j, k) Zarr array), slab by slab along k."""
    thickness = slab_thickness(scan.geometry, scan.dtype, target.chunks[-1])
    for k, slab in iter_slabs(scan, thickness):
        target[0, :, :, k] = slab.astype(target.dtype, copy=False)


def write_labels(labels: Any, geometry: VolumeGeometry, path: Path, *,
                 label_names: dict[int, str] | None = None) -> None:
    """Stream a label array (i, j, k; Zarr or NumPy) to a NIfTI file on ``geometry``'s exact grid.

    The header copies the scan's spatial fields bit for bit (qform/sform and codes,
    pixdim, units), sets the label intent, and the file appears under ``path`` only
    once complete.
    """
    header = (nib.Nifti2Header if geometry.nifti_version == 2 else nib.Nifti1Header)()
    header.set_intent(NIFTI_INTENT_LABEL)
    header["cal_min"], header["cal_max"] = 0, max(label_names or {0: ""})
    header["descrip"] = b"volseg label mask"
    write_volume(labels, geometry, path, header=header)


def write_volume(values: Any, geometry: VolumeGeometry, path: Path, *, header: Any = None) -> None:
    """Stream any (i, j, k) array with ``.dtype``, ``.shape`` and slab indexing (Zarr, NumPy, a view) to
    NIfTI on ``geometry``'s grid, in slabs of its last chunk; ``header`` adds intent/description fields."""
    if header is None:
        header = (nib.Nifti2Header if geometry.nifti_version == 2 else nib.Nifti1Header)()
    header.set_data_dtype(values.dtype)
    geometry.apply_to_header(header)
    offset = header.single_vox_offset
    header.set_data_offset(offset)
    chunks = getattr(values, "chunks", None)
    thickness = chunks[-1] if chunks and isinstance(chunks[-1], int) else 16
    with atomic_path(path) as tmp, _deterministic_writer(tmp, gz=is_gzip(path)) as fh:
        header.write_to(fh)  # header + empty extension flag
        fh.write(b"\x00" * (offset - fh.tell()))
        for k0 in range(0, geometry.shape[2], thickness):
            fh.write(reversed_axes(np.ascontiguousarray(values[:, :, k0 : k0 + thickness])).data)  # Fortran order


@contextlib.contextmanager
def _deterministic_writer(path: Path, *, gz: bool) -> Iterator[Any]:
    """Same labels -> same bytes: the gzip header carries no file name and no time stamp, so a
    resumed run's mask is byte-identical to an uninterrupted one's."""
    with open(path, "wb") as raw:
        if not gz:
            yield raw
            return
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as fh:
            yield fh


def read_reference(path: str | Path, geometry: VolumeGeometry) -> NiftiScan:
    """Open a reference mask and check it sits on ``geometry``'s grid."""
    from pipeline.errors import GridMismatchError

    ref = open_scan(path)
    if ref.dtype.kind == "f":
        logger.warning("%s: reference mask is floating point; values are rounded to labels", ref.path)
    if not ref.geometry.same_grid(geometry):
        raise GridMismatchError(
            f"{ref.path}: reference grid (shape {ref.geometry.shape}) differs from the scan's (shape {geometry.shape}) "
            "in shape or affine; resample it onto the scan first")
    return ref
