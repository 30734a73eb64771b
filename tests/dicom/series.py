"""Build real DICOM CT series from a NIfTI volume, with geometry derived from its affine.

The NIfTI array order ``(i, j, k)`` maps to DICOM as volseg's reader expects: ``i`` runs along a row
(the direction of increasing column, ``ImageOrientationPatient[:3]``), ``j`` down a column and ``k``
from slice to slice; nibabel's RAS affine becomes LPS (x and y negated). Files are written in a
shuffled order with shuffled InstanceNumbers, so a reader that sorts by name or number fails.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Stored values are HU + 1024 in uint16, as most scanners write them.
INTERCEPT = -1024.0


def lps_geometry(affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    """Row direction, column direction, slice step (mm vector) and PixelSpacing (row, column) of an affine."""
    lps = RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64)
    di, dj = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    return lps[:3, 0] / di, lps[:3, 1] / dj, lps[:3, 2], (float(dj), float(di))


def _study(study: Dataset | None) -> Dataset:
    if study is not None:
        return study
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Volseg^Test", "VOLSEG-1", "19700101", "O"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = generate_uid(), "20260101", "120000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "A1", ""
    ds.FrameOfReferenceUID = generate_uid()
    return ds


def _base(study: Dataset, sop_class: UID, series_uid: str, series_number: int, shape: tuple[int, int]) -> Dataset:
    ds = Dataset()
    for element in study:
        ds.add(element)
    ds.SOPClassUID, ds.SeriesInstanceUID, ds.SeriesNumber = sop_class, series_uid, series_number
    ds.Modality, ds.Manufacturer, ds.PositionReferenceIndicator = "CT", "volseg tests", ""
    ds.SeriesDate, ds.SeriesTime, ds.ContentDate, ds.ContentTime = "20260101", "120000", "20260101", "120000"
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.KVP, ds.BodyPartExamined = "120", "ABDOMEN"
    return ds


def _file_meta(ds: Dataset, transfer_syntax: UID) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.set_original_encoding(False, True)
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax)


def stored_values(hu: np.ndarray) -> np.ndarray:
    """HU as the uint16 stored values (clipped to what HU + 1024 can hold)."""
    return np.clip(np.rint(hu) - INTERCEPT, 0, 65535).astype(np.uint16)


def write_series(volume: np.ndarray, affine_ras: np.ndarray, folder: Path, *, study: Dataset | None = None,
                 series_number: int = 1, transfer_syntax: UID = ExplicitVRLittleEndian,
                 padding: int | None = None, positions: Sequence[np.ndarray] | None = None,
                 image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"), seed: int = 0) -> list[Path]:
    """Write ``volume`` (HU, NIfTI order i, j, k) as one CT Image file per slice k; returns the files.

    ``positions`` overrides each slice's ImagePositionPatient (LPS mm), e.g. to build a gantry tilt or a
    missing slice; ``padding`` sets Pixel Padding Value (a stored value).
    """
    folder.mkdir(parents=True, exist_ok=True)
    row, col, step, spacing = lps_geometry(affine_ras)
    origin = (RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64))[:3, 3]
    study, series_uid = _study(study), generate_uid()
    rng = np.random.default_rng(seed)
    numbers = rng.permutation(volume.shape[2]) + 1
    paths = []
    for k in range(volume.shape[2]):
        ds = _base(study, CTImageStorage, series_uid, series_number, (volume.shape[1], volume.shape[0]))
        ds.SOPInstanceUID, ds.InstanceNumber, ds.ImageType = generate_uid(), int(numbers[k]), list(image_type)
        position = origin + k * step if positions is None else positions[k]
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row, *col)]
        ds.PixelSpacing = [round(v, 6) for v in spacing]
        ds.SliceThickness = round(float(np.linalg.norm(step)), 6)
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, INTERCEPT, "HU"
        if padding is not None:
            ds.PixelPaddingValue = padding
        ds.PixelData = np.ascontiguousarray(stored_values(volume[:, :, k]).T).tobytes()
        _file_meta(ds, transfer_syntax)
        path = folder / f"IM{rng.integers(1_000_000):06d}_{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced(volume: np.ndarray, affine_ras: np.ndarray, path: Path, *, study: Dataset | None = None,
                   transfer_syntax: UID = ExplicitVRLittleEndian, seed: int = 0) -> Path:
    """Write ``volume`` as one multi-frame Enhanced CT Image, frames in a shuffled order."""
    row, col, step, spacing = lps_geometry(affine_ras)
    origin = (RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64))[:3, 3]
    ds = _base(_study(study), EnhancedCTImageStorage, generate_uid(), 1, (volume.shape[1], volume.shape[0]))
    ds.SOPInstanceUID, ds.InstanceNumber, ds.ImageType = generate_uid(), 1, ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    now = datetime.datetime(2026, 1, 1, 12)
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    order = np.random.default_rng(seed).permutation(volume.shape[2])
    ds.NumberOfFrames = volume.shape[2]
    shared = Dataset()
    measures, orientation, rescale = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [round(v, 6) for v in spacing], float(np.linalg.norm(step))
    orientation.ImageOrientationPatient = [round(float(v), 8) for v in (*row, *col)]
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 1, INTERCEPT, "HU"
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orientation]
    shared.PixelValueTransformationSequence = [rescale]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in order:
        plane, item = Dataset(), Dataset()
        plane.ImagePositionPatient = [round(float(v), 6) for v in origin + k * step]
        item.PlanePositionSequence = [plane]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = b"".join(np.ascontiguousarray(stored_values(volume[:, :, k]).T).tobytes() for k in order)
    _file_meta(ds, transfer_syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_non_image(path: Path, sop_class: UID, *, study: Dataset | None = None, modality: str = "SR") -> Path:
    """A header-only instance of a non-image SOP class (SR, RTSTRUCT), enough for a reader to classify it."""
    ds = Dataset()
    for element in _study(study):
        ds.add(element)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = sop_class, generate_uid(), generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 99, 1
    _file_meta(ds, ExplicitVRLittleEndian)
    ds.save_as(path, enforce_file_format=True)
    return path
