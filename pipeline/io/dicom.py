"""DICOM edge: pick one CT/MR series in a folder or ``.zip``, check it is one regular volume, and stream it
into the Zarr work store slice by slice.

The volume gets the geometry value the NIfTI path uses (:class:`~pipeline.geometry.VolumeGeometry`, an
affine in RAS as nibabel reports it), so the engine, the NIfTI mask writer and the report do not know
the input was DICOM. Array axes: ``i`` along a row (``ImageOrientationPatient[:3]``, column index), ``j``
down a column (row index), ``k`` across slices, sorted along the slice normal (row x column direction) by
``ImagePositionPatient``, never by file name or InstanceNumber. Values are ``RescaleSlope`` x stored +
``RescaleIntercept`` (per slice); stored values equal to ``PixelPaddingValue`` (up to
``PixelPaddingRangeLimit``) are invalid. A gantry tilt becomes a sheared affine (the slices stay where they
are, as in the scanner). Localizers, mixed orientations or sizes, duplicate positions, uneven spacing
(missing slices), colour images and non-image SOP classes are refused with one line naming the series.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.geometry import VolumeGeometry
from pipeline.io.dicom_files import Member, members_sha256, open_member, read_headers

logger = logging.getLogger(__name__)

#: SOP classes read as volumes: (Enhanced / Legacy Converted Enhanced) CT, MR and PET images.
IMAGE_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2",
    "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4",
    "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.128.1",
})
#: Directions (unit vectors) and positions agree within this (mm, or cosine units).
ORIENTATION_TOLERANCE = 1e-4
#: Slice gaps may differ from their median by this fraction before the spacing counts as uneven.
SPACING_TOLERANCE = 0.01
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
MAX_VOXELS = 2**36


@dataclass(frozen=True, slots=True)
class Frame:
    """One 2D image of the volume: a file (and a frame of it for multi-frame instances) and its rescale."""

    member: Member
    index: int | None  #: frame index in a multi-frame instance; None for a single-frame one
    position: tuple[float, float, float]  #: ImagePositionPatient (LPS mm)
    slope: float
    intercept: float


@dataclass(frozen=True)
class DicomSeries:
    """A validated series: frames in volume order, its geometry and headers (no pixel data read)."""

    path: Path  #: the folder or zip given
    series_uid: str
    frames: tuple[Frame, ...]  #: slice k of the volume is frames[k]
    headers: tuple[Any, ...]  #: pydicom datasets without pixel data, one per instance in volume order (as members)
    geometry: VolumeGeometry
    dtype: np.dtype  #: float32 when a rescale applies, else the stored type
    padding: tuple[int, int] | None  #: stored values [low, high] that are padding (invalid)

    @property
    def members(self) -> list[Member]:
        return list(dict.fromkeys(f.member for f in self.frames))

    def sha256(self) -> str:
        """The content's identity: the instances' bytes in volume order."""
        return members_sha256(self.members)


def open_series(path: str | os.PathLike[str], *, series_uid: str | None = None) -> DicomSeries:
    """Open and validate one CT/MR series under ``path`` (a folder or ``.zip``), reading headers only.

    ``series_uid`` picks a series; without it the folder must hold exactly one image series (other
    instances such as SR are ignored with a note), otherwise the error lists the series to choose from.

    Raises
    ------
    InputNotFoundError, InputError
    """
    path = Path(path)
    series: dict[str, list[tuple[Member, Any]]] = {}
    for member, header in read_headers(path):
        series.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((member, header))
    uid = _choose(path, series, series_uid)
    where = f"{path}: series {uid}"
    headers = [h for _, h in series[uid]]
    classes = {str(h.SOPClassUID) for h in headers}
    if len(classes) > 1:
        raise InputError(f"{where}: mixes SOP classes ({', '.join(sorted(_class_name(c) for c in classes))})")
    frames = sorted(_frames(where, series[uid]), key=lambda f: float(np.dot(f.position, _normal(headers[0]))))
    geometry = _geometry(where, headers[0], frames)
    by_member = dict(series[uid])
    headers = [by_member[m] for m in dict.fromkeys(f.member for f in frames)]  # instances in volume order
    rescaled = any(f.slope != 1.0 or f.intercept != 0.0 for f in frames)
    stored = np.dtype(f"{'i' if int(headers[0].PixelRepresentation) else 'u'}{int(headers[0].BitsAllocated) // 8}")
    return DicomSeries(path=path, series_uid=uid, frames=tuple(frames), headers=tuple(headers), geometry=geometry,
                       dtype=np.dtype(np.float32) if rescaled else stored, padding=_padding(headers[0]))


def describe_series(items: list[tuple[Member, Any]]) -> str:
    """``UID (CT, 'description', 30 instances)``: how a series is named in messages."""
    header = items[0][1]
    return (f"{header.get('SeriesInstanceUID', '?')} ({header.get('Modality', '?')}, "
            f"{str(header.get('SeriesDescription', ''))!r}, {len(items)} instances)")


def _class_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name


def _choose(path: Path, series: dict[str, list[tuple[Member, Any]]], wanted: str | None) -> str:
    images = [uid for uid, items in series.items() if str(items[0][1].SOPClassUID) in IMAGE_CLASSES]
    if wanted is not None:
        if wanted not in series:
            listing = "; ".join(describe_series(items) for items in series.values())
            raise InputError(f"{path}: no series {wanted}; found: {listing}")
        if wanted not in images:
            raise InputError(f"{path}: series {wanted} is {_class_name(str(series[wanted][0][1].SOPClassUID))}, "
                             "not a CT/MR/PET image series")
        return wanted
    if not images:
        kinds = sorted({_class_name(str(items[0][1].SOPClassUID)) for items in series.values()})
        raise InputError(f"{path}: no CT/MR/PET image series, only {', '.join(kinds)}")
    if len(images) > 1:
        listing = "; ".join(describe_series(series[uid]) for uid in images)
        raise InputError(f"{path}: {len(images)} image series; choose one with --series UID: {listing}")
    for uid in set(series) - set(images):
        logger.info("%s: ignoring series %s", path, describe_series(series[uid]))
    return images[0]


def _functional(header: Any, frame: int | None, name: str) -> Any:
    """A functional group item of a multi-frame instance (per-frame first, then shared); the header itself
    for single-frame instances, whose attributes sit at the top level."""
    if frame is None:
        return header
    for groups in (header.get("PerFrameFunctionalGroupsSequence"), header.get("SharedFunctionalGroupsSequence")):
        if groups is not None:
            item = groups[frame if len(groups) > 1 else 0]
            if name in item:
                return item[name].value[0]
    return header


def _frame_count(header: Any) -> int | None:
    return int(header.NumberOfFrames) if "PerFrameFunctionalGroupsSequence" in header else None


def _orientation(header: Any, frame: int | None = None) -> np.ndarray:
    return np.array(_functional(header, frame, "PlaneOrientationSequence").ImageOrientationPatient, dtype=np.float64)


def _spacing(header: Any, frame: int | None = None) -> np.ndarray:
    return np.array(_functional(header, frame, "PixelMeasuresSequence").PixelSpacing, dtype=np.float64)


def _normal(header: Any) -> np.ndarray:
    iop = _orientation(header, 0 if _frame_count(header) else None)
    return np.cross(iop[:3], iop[3:])


def _frames(where: str, items: list[tuple[Member, Any]]) -> Iterator[Frame]:
    """Every 2D frame of the series, checked to share orientation, size and pixel spacing."""
    first = items[0][1]
    ref_index = 0 if _frame_count(first) else None
    reference = (_orientation(first, ref_index), _spacing(first, ref_index), (int(first.Rows), int(first.Columns)))
    for member, header in items:
        if any("LOCALIZER" in str(t).upper() for t in header.get("ImageType", [])):
            raise InputError(f"{where}: contains localizer images ({member}); export the volume's series alone")
        if int(header.get("SamplesPerPixel", 1)) != 1:
            raise InputError(f"{where}: colour images ({header.get('PhotometricInterpretation')}); need grey values")
        count = _frame_count(header)
        for index in range(count) if count else [None]:
            orient, spacing = _orientation(header, index), _spacing(header, index)
            size = (int(header.Rows), int(header.Columns))
            if not (np.allclose(orient, reference[0], atol=ORIENTATION_TOLERANCE) and size == reference[2]
                    and np.allclose(spacing, reference[1], atol=ORIENTATION_TOLERANCE)):
                raise InputError(f"{where}: mixes orientations, sizes or pixel spacings ({member}); "
                                 "export one volume per series")
            plane = _functional(header, index, "PlanePositionSequence")
            rescale = _functional(header, index, "PixelValueTransformationSequence")
            x, y, z = (float(v) for v in plane.ImagePositionPatient)
            yield Frame(member=member, index=index, position=(x, y, z),
                        slope=float(rescale.get("RescaleSlope", 1.0)),
                        intercept=float(rescale.get("RescaleIntercept", 0.0)))


def _geometry(where: str, header: Any, frames: Sequence[Frame]) -> VolumeGeometry:
    """The RAS affine (nibabel's convention) of frames sorted along the normal, after checking their spacing."""
    index = 0 if _frame_count(header) else None
    iop, (d_row, d_col) = _orientation(header, index), _spacing(header, index)
    shape = (int(header.Columns), int(header.Rows), len(frames))
    if len(frames) < 2:
        raise InputError(f"{where}: one slice only; a volume needs at least 2")
    if math.prod(shape) > MAX_VOXELS:
        raise InputError(f"{where}: {math.prod(shape):.3g} voxels (shape {shape}); refusing")
    step = _slice_step(where, np.cross(iop[:3], iop[3:]), np.array([f.position for f in frames]))
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = iop[:3] * d_col, iop[3:] * d_row, step, frames[0].position
    return volume_geometry(RAS_FROM_LPS @ lps, shape)


def _slice_step(where: str, normal: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The mean slice-to-slice vector, refusing duplicate or unevenly spaced slices; a gantry tilt is a step
    not along the normal (kept: it is where the slices are), irregular in-plane shifts are refused."""
    gaps = np.diff(positions @ normal)
    median = float(np.median(gaps))
    if gaps.min() <= ORIENTATION_TOLERANCE * 10:
        k = int(np.argmin(gaps))
        raise InputError(f"{where}: duplicate slice positions ({positions[k + 1].round(3).tolist()} twice); "
                         "two acquisitions in one series?")
    if np.abs(gaps - median).max() > SPACING_TOLERANCE * median:
        raise InputError(f"{where}: uneven slice spacing ({gaps.min():.4g} to {gaps.max():.4g} mm, median "
                         f"{median:.4g}); missing slices?")
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    expected = positions[0] + np.arange(len(positions))[:, None] * step
    if np.abs(positions - expected).max() > max(SPACING_TOLERANCE * median, 1e-3):
        raise InputError(f"{where}: slice positions are not on one line; cannot make one volume")
    across = step - np.dot(step, normal) * normal
    if np.linalg.norm(across) > 1e-3 * np.linalg.norm(step):
        tilt = math.degrees(math.atan2(float(np.linalg.norm(across)), float(np.dot(step, normal))))
        logger.warning("%s: gantry tilt of %.2f degrees; the volume keeps its sheared geometry (the mask "
                       "overlays the slices as acquired)", where, tilt)
    return step


def volume_geometry(affine: np.ndarray, shape: tuple[int, int, int]) -> VolumeGeometry:
    """A :class:`VolumeGeometry` as a NIfTI file of this RAS affine would carry it (sform and qform, code
    scanner, mm), so the NIfTI mask of a DICOM series is an ordinary NIfTI file."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_sform(affine, code=1)
    header.set_qform(affine, code=1, strip_shears=True)
    header.set_xyzt_units("mm")
    return VolumeGeometry.from_header(header, shape, affine)


def _padding(header: Any) -> tuple[int, int] | None:
    if "PixelPaddingValue" not in header:
        return None
    low = int(header.PixelPaddingValue)
    high = int(header.get("PixelPaddingRangeLimit", low))
    return min(low, high), max(low, high)


def read_stored(frame: Frame) -> np.ndarray:
    """The stored values of one frame, (rows, cols), decoded by pydicom (any supported transfer syntax)."""
    from pydicom.pixels import pixel_array

    try:
        with open_member(frame.member) as fh:
            return np.asarray(pixel_array(fh, index=frame.index))  # type: ignore[arg-type]  # a binary stream
    except Exception as e:  # pydicom raises ValueError, RuntimeError, NotImplementedError for codecs
        raise InputError(f"{frame.member}: cannot decode pixel data ({str(e).splitlines()[0] if str(e) else e})") from e


def iter_slabs(series: DicomSeries, thickness: int) -> Iterator[tuple[slice, np.ndarray, np.ndarray | None]]:
    """``(k-slice, values (i, j, k) in series.dtype, valid or None)``, ``thickness`` slices at a time.

    Only one slab is ever held: frames are decoded one by one.
    """
    ni, nj, nk = series.geometry.shape
    for k0 in range(0, nk, thickness):
        k = slice(k0, min(k0 + thickness, nk))
        values = np.empty((ni, nj, k.stop - k.start), dtype=series.dtype)
        valid = None if series.padding is None else np.empty(values.shape, dtype=bool)
        for offset, frame in enumerate(series.frames[k]):
            stored = read_stored(frame)
            if stored.shape != (nj, ni):
                raise InputError(f"{frame.member}: pixel data is {stored.shape}, header says {(nj, ni)}")
            values[:, :, offset] = (stored.T * frame.slope + frame.intercept) if series.dtype.kind == "f" else stored.T
            if valid is not None and series.padding is not None:
                low, high = series.padding
                valid[:, :, offset] = ~((stored.T >= low) & (stored.T <= high))
        yield k, values, valid


def stream_to_array(series: DicomSeries, target: Any, valid: Any = None) -> int:
    """Copy the series into ``target`` ((1, i, j, k) Zarr) and, given, its validity into ``valid`` ((i, j, k));
    slab by slab along k. Returns the count of valid voxels."""
    from pipeline.io.nifti import slab_thickness

    thickness = slab_thickness(series.geometry, series.dtype, target.chunks[-1])
    count = 0
    for k, values, ok in iter_slabs(series, thickness):
        target[0, :, :, k] = values.astype(target.dtype, copy=False)
        if valid is not None:
            valid[:, :, k] = True if ok is None else ok
        count += values.size if ok is None else int(ok.sum())
    return count
