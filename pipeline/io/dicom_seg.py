"""DICOM Segmentation of a series' mask, through highdicom: what a PACS viewer overlays on the series.

One segment per label present in the mask (the card's name; its colour as the recommended CIELab display
colour; its coded category and type, or generic Tissue), algorithm identification (model name, version =
weights sha256), frames referencing their source instances on the series' Frame of Reference, empty frames
omitted. ``binary`` (the default, displayed by most viewers) or ``labelmap`` (DICOM 2024's Label Map SEG,
one frame per slice). UIDs derive from the series, model and code version, so the same run gives the same
instance (a PACS then keeps one copy).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.io.atomic import atomic_path
from pipeline.io.dicom import DicomSeries

logger = logging.getLogger(__name__)

#: Segmentation types a user may ask for (``--dicom-seg-type``).
SEG_TYPES = ("binary", "labelmap")
#: Segmented property category and type of labels whose card gives no code (SNOMED CT "Tissue").
GENERIC = ("85756007", "SCT", "Tissue")
SERIES_NUMBER = 9901


@dataclass(frozen=True)
class SegFacts:
    """What was written: the file, segment number -> label value, frames and size."""

    path: Path
    segments: dict[int, int]
    frames: int
    bytes: int
    segmentation_type: str

    def to_report(self) -> dict[str, Any]:
        return {"path": str(self.path), "segmentation_type": self.segmentation_type, "frames": self.frames,
                "bytes": self.bytes, "segments": {str(k): v for k, v in self.segments.items()}}


def _label_counts(labels: Any, n_labels: int) -> np.ndarray:
    counts = np.zeros(n_labels, dtype=np.int64)
    for k in range(0, labels.shape[-1], 16):
        counts += np.bincount(np.asarray(labels[..., k : k + 16]).ravel(), minlength=n_labels)[:n_labels]
    return counts


def _descriptions(present: list[int], model: Any) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    algorithm = hd.AlgorithmIdentificationSequence(
        name=model.name, version=model.sha256,
        family=codes.cid7162.ArtificialIntelligence if model.card.kind != "classical"
        else codes.cid7162.MorphologicalOperations)
    out = []
    for number, value in enumerate(present, start=1):
        label = model.labels[value]
        if label.code is not None:
            category = Code(label.code.category.value, label.code.category.scheme, label.code.category.meaning)
            kind = Code(label.code.type.value, label.code.type.scheme, label.code.type.meaning)
        else:
            category = kind = Code(*GENERIC)
        out.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label.name[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, display_color=hd.color.CIELabColor.from_rgb(*label.color)))
    return out


def _frames(labels: Any, series: DicomSeries, lut: np.ndarray) -> np.ndarray:
    """Segment numbers per source frame, (frames, rows, cols) uint8/16, in the source's frame order."""
    if len(series.headers) > 1 and any(f.index is not None for f in series.frames):
        raise InputError(f"{series.path}: series {series.series_uid}: several multi-frame instances; "
                         "a SEG can reference one multi-frame image or single-frame images")
    ni, nj, nk = series.geometry.shape
    out = np.zeros((nk, nj, ni), dtype=lut.dtype)
    for k, frame in enumerate(series.frames):
        out[k if frame.index is None else frame.index] = lut[np.asarray(labels[:, :, k])].T
    return out


def write_dicom_seg(labels: Any, series: DicomSeries, model: Any, path: Path, *, segmentation_type: str = "binary",
                    software_version: str = "unknown") -> SegFacts:
    """Write the DICOM SEG of ``labels`` ((i, j, k) on ``series``' grid, Zarr or NumPy) to ``path``.

    Raises
    ------
    InputError
        The series cannot be referenced (several multi-frame instances).
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    n_labels = len(model.labels)
    present = [v for v, count in enumerate(_label_counts(labels, n_labels)) if v > 0 and count > 0]
    lut = np.zeros(n_labels, dtype=np.uint8 if len(present) < 256 else np.uint16)
    for number, value in enumerate(present, start=1):
        lut[value] = number
    seed = [series.series_uid, model.sha256, software_version, segmentation_type]
    seg = hd.seg.Segmentation(
        source_images=list(series.headers), pixel_array=_frames(labels, series, lut),
        segmentation_type=segmentation_type.upper(), segment_descriptions=_descriptions(present, model),
        series_instance_uid=generate_uid(entropy_srcs=[*seed, "series"]), series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(entropy_srcs=[*seed, "instance"]), instance_number=1,
        manufacturer="volseg", manufacturer_model_name=model.name[:64], software_versions=software_version[:64],
        device_serial_number="none", series_description=f"volseg {model.name}"[:64],
        content_label="VOLSEG", content_description=f"{model.name} segmentation"[:64],
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    size = path.stat().st_size
    logger.info("%s: DICOM SEG (%s), %d segments, %d frames, %.1f kB", path, segmentation_type, len(present),
                int(seg.NumberOfFrames), size / 1e3)
    return SegFacts(path=path, segments=dict(enumerate(present, start=1)), frames=int(seg.NumberOfFrames),
                    bytes=size, segmentation_type=segmentation_type)
