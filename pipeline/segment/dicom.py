"""The DICOM series domain and ``segment_series``: a folder or ``.zip`` of one CT/MR series -> work store ->
Dask + MONAI -> NIfTI mask + report (+ a DICOM SEG with ``dicom_seg``).

An adapter for :mod:`pipeline.segment.driver`. A series is a volume whose geometry the reader
(:mod:`pipeline.io.dicom`) turns into the same :class:`~pipeline.geometry.VolumeGeometry` a NIfTI scan
has, so everything but opening, tiling, naming and the SEG is the NIfTI adapter's
(:class:`~pipeline.segment.volume.VolumeSource`). Stored values equal to Pixel Padding Value are
invalid: the network sees them as neutral, no statistic counts them, and they are 0 (background) in the
mask and the SEG.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.errors import SettingsError
from pipeline.io.dicom import DicomSeries, open_series, stream_to_array
from pipeline.io.dicom_seg import SEG_TYPES, SegFacts, write_dicom_seg
from pipeline.io.nifti import write_labels
from pipeline.io.outputs import Output, default_series_output, dicom_seg_path
from pipeline.io.store import WorkStore, create_array
from pipeline.model.models import Model
from pipeline.segment.domain import PlanInputs
from pipeline.segment.driver import PathArg, segment
from pipeline.segment.options import RunSettings, SegmentOptions, SeriesOptions, resolve_options
from pipeline.segment.result import SegmentationResult
from pipeline.segment.volume import VolumeSource
from pipeline.version import code_version


@dataclass
class DicomSource(VolumeSource):
    """One opened DICOM series (headers read and checked; no pixel data read yet)."""

    scan: DicomSeries  # type: ignore[assignment]  # the same path/geometry/dtype surface as a NiftiScan
    seg_type: str | None = None
    seg: SegFacts | None = field(default=None, init=False)

    def default_output(self) -> Path:
        return default_series_output(self.path)

    def outputs(self, mask: Path, options: SegmentOptions, *, instances: bool) -> list[Output]:
        found = super().outputs(mask, options, instances=instances)
        return [*found, Output(dicom_seg_path(mask), "dicom")] if self.seg_type else found

    def reads(self, reference: PathArg | None) -> list[Any]:
        files = [self.path] if self.path.is_file() else [Path(m.name) for m in self.scan.members]
        return [*files, reference]

    def sha256(self) -> str:
        return self.scan.sha256()

    def plan_inputs(self) -> PlanInputs:
        return PlanInputs(in_channels=1, itemsize=self.scan.dtype.itemsize, valid_mask=self.scan.padding is not None)

    def fingerprint(self) -> dict[str, Any]:
        return {"series_uid": self.scan.series_uid}

    def tile(self, group: zarr.Group, chunks: tuple[int, ...], attributes: dict[str, Any],
             client: Any) -> tuple[zarr.Array, zarr.Array | None, int | None]:
        image = create_array(group, "image", shape=(1, *self.geometry.shape), chunks=(1, *chunks),
                             dtype=self.scan.dtype, attributes=attributes)
        if self.scan.padding is None:
            stream_to_array(self.scan, image)
            return image, None, None
        valid = create_array(group, "valid", shape=self.geometry.shape, chunks=chunks, dtype=bool, channel_axis=False)
        return image, valid, stream_to_array(self.scan, image, valid)

    def write(self, labels: zarr.Array, valid: zarr.Array | None, model: Model, mask: Path, work: WorkStore,
              options: SegmentOptions) -> None:
        if valid is not None:
            _clear_invalid(labels, valid)
        write_labels(labels, self.geometry, mask, label_names={k: v.name for k, v in model.labels.items()})
        if self.seg_type:
            self.seg = write_dicom_seg(labels, self.scan, model, dicom_seg_path(mask),
                                       segmentation_type=self.seg_type, software_version=code_version())

    def report_input(self, sha256: str, valid_pixels: int | None) -> dict[str, Any]:
        first = self.scan.headers[0]
        return {**super().report_input(sha256, valid_pixels), "series_uid": self.scan.series_uid,
                "study_uid": str(first.get("StudyInstanceUID", "")), "modality": str(first.get("Modality", "")),
                "instances": len(self.scan.headers), "valid_voxels": valid_pixels}

    def report_extras(self, options: SegmentOptions, facts: dict[str, Any]) -> dict[str, Any]:
        return {"dicom_seg": self.seg.to_report()} if self.seg else {}


def _clear_invalid(labels: zarr.Array, valid: zarr.Array) -> None:
    """Padding voxels become background, one slab at a time (idempotent, so a resumed run may repeat it)."""
    step = int(labels.chunks[-1])
    for k0 in range(0, labels.shape[-1], step):
        k = slice(k0, k0 + step)
        labels[:, :, k] = np.where(valid[:, :, k], labels[:, :, k], 0)


@dataclass(frozen=True)
class DicomDomain:
    """A folder or ``.zip`` holding a CT/MR series; ``series_uid`` picks one of several, ``seg_type``
    (``binary``/``labelmap``) also writes its DICOM SEG."""

    series_uid: str | None = None
    seg_type: str | None = None
    name: str = "volume"  #: the sidecar kind: a series is a volume (ITK-SNAP/Slicer files, ml)
    default_model: str | None = None
    options: frozenset[str] = frozenset({"probabilities"})

    def open(self, path: PathArg) -> DicomSource:
        return DicomSource(open_series(path, series_uid=self.series_uid), seg_type=self.seg_type)


DICOM = DicomDomain()


def segment_series(path: PathArg, *, dicom: SeriesOptions | None = None, model: PathArg | Model | None = None,
                   output: PathArg | None = None, reference: PathArg | None = None,
                   options: SegmentOptions | None = None, runtime: RunSettings | None = None,
                   **keywords: Any) -> SegmentationResult:
    """Segment a DICOM series (a folder or ``.zip``) into a NIfTI mask on its grid, with a report.

    Parameters
    ----------
    path : the folder or zip; never modified.
    dicom : :class:`SeriesOptions`: ``series_uid``, the series to segment when ``path`` holds several image
        series; ``dicom_seg``, ``"binary"`` or ``"labelmap"``: also write ``<mask stem>.dcm``, a DICOM
        Segmentation referencing the series (the report's ``dicom_seg`` says its segments, frames and size).
    model, output, reference, options, runtime, keywords : as :func:`pipeline.segment.segment_volume`; the
        mask defaults to ``<folder>_seg.nii.gz`` beside the folder (``<zip stem>_seg.nii.gz``).

    Raises
    ------
    InputError, CardError, ModelError, SettingsError, OutputExistsError, OutputError
    """
    dicom = dicom or SeriesOptions()
    if dicom.dicom_seg is not None and dicom.dicom_seg not in SEG_TYPES:
        raise SettingsError(f"unknown DICOM SEG type {dicom.dicom_seg!r} (choices: {', '.join(SEG_TYPES)})")
    ours, run = resolve_options(options, runtime, keywords)
    domain = DicomDomain(series_uid=dicom.series_uid, seg_type=dicom.dicom_seg)
    return segment(path, domain, model=model, output=output, reference=reference, options=ours, runtime=run)
