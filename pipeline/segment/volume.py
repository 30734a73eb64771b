"""The NIfTI volume domain and ``segment_volume``: NIfTI scan -> work store -> Dask + MONAI -> NIfTI mask + report.

An adapter for :mod:`pipeline.segment.driver` (protocol: :mod:`pipeline.segment.domain`): it opens and
validates the scan's header, streams the scan into the work store in one pass, checks a reference on
the same grid, writes the mask with the scan's header fields bit for bit, and describes the scan in
the report (voxels, ml).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.errors import CardError
from pipeline.evaluate.instances import volume_instances
from pipeline.evaluate.metrics import Scores
from pipeline.evaluate.metrics import label_counts as count_labels
from pipeline.geometry import VolumeGeometry
from pipeline.io.nifti import NiftiScan, open_scan, stream_to_array, write_labels
from pipeline.io.outputs import Output, default_volume_output, volume_outputs
from pipeline.io.store import WorkStore, create_array
from pipeline.model.models import Model
from pipeline.report.compare import check_reference_labels, confusion_against
from pipeline.report.tables import label_rows
from pipeline.segment.domain import PlanInputs
from pipeline.segment.driver import PathArg, segment
from pipeline.segment.options import RunSettings, SegmentOptions, resolve_options
from pipeline.segment.result import SegmentationResult


@dataclass
class VolumeSource:
    """One opened NIfTI scan (header read and checked; no voxel read yet)."""

    scan: NiftiScan

    @property
    def path(self) -> Path:
        return self.scan.path

    @property
    def geometry(self) -> VolumeGeometry:
        return self.scan.geometry

    def bind(self, model: Model, options: SegmentOptions) -> None:
        if model.card.spatial_dims != 3 or model.card.in_channels != 1:
            raise CardError(f"model {model.name!r} is {model.card.spatial_dims}D with {model.card.in_channels} "
                            "channel(s); segment-volume needs a 3D single-channel model")

    def default_output(self) -> Path:
        return default_volume_output(self.path)

    def outputs(self, mask: Path, options: SegmentOptions, *, instances: bool) -> list[Output]:
        return volume_outputs(mask, html=options.html, ome_zarr=options.ome_zarr,
                              probabilities=options.probabilities, instances=instances)

    def reads(self, reference: PathArg | None) -> list[Any]:
        return [self.path, reference]

    def plan_inputs(self) -> PlanInputs:
        return PlanInputs(in_channels=1, itemsize=self.scan.dtype.itemsize)

    def open_reference(self, reference: PathArg, model: Model) -> Any:
        check_reference_labels(Path(reference), self.geometry, model.card.out_channels)
        return reference

    def fingerprint(self) -> dict[str, Any]:
        return {}

    def source_attrs(self) -> dict[str, Any]:
        return {"dtype": self.scan.dtype.name}

    def tile_chunks(self, default: tuple[int, ...]) -> tuple[int, ...]:
        return default

    def tile(self, group: zarr.Group, chunks: tuple[int, ...], attributes: dict[str, Any],
             client: Any) -> tuple[zarr.Array, zarr.Array | None, int | None]:
        image = create_array(group, "image", shape=(1, *self.geometry.shape), chunks=(1, *chunks),
                             dtype=self.scan.dtype, attributes=attributes)
        stream_to_array(self.scan, image)
        return image, None, None

    def extras(self, work: WorkStore, model: Model, client: Any, options: SegmentOptions) -> dict[str, Any]:
        return {}

    def find_instances(self, group: zarr.Group, classes: list[str], model: Model, mask: Path,
                       client: Any) -> dict[str, Any]:
        return volume_instances(group, classes, model.labels, self.geometry, mask, client=client)

    def write(self, labels: zarr.Array, valid: zarr.Array | None, model: Model, mask: Path, work: WorkStore,
              options: SegmentOptions) -> None:
        write_labels(labels, self.geometry, mask, label_names={k: v.name for k, v in model.labels.items()})

    def confusion(self, labels: zarr.Array, valid: zarr.Array | None, n_labels: int, reference: Any) -> np.ndarray:
        if reference:
            return confusion_against(reference, self.geometry, lambda k: np.asarray(labels[:, :, k]),
                                     n_labels=n_labels).dense(n_labels)
        return label_counts(labels, n_labels)

    def report_input(self, sha256: str, valid_pixels: int | None) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": sha256, "shape": list(self.geometry.shape),
                "zooms": list(self.geometry.zooms), "dtype": self.scan.dtype.name}

    def report_extras(self, options: SegmentOptions, facts: dict[str, Any]) -> dict[str, Any]:
        return {}

    def label_rows(self, measured: Scores, model: Model, *, has_reference: bool) -> list[dict[str, Any]]:
        return label_rows(measured, model.labels, self.geometry.voxel_volume_ml, has_reference=has_reference)


def label_counts(labels: Any, n_labels: int) -> np.ndarray:
    """A confusion matrix with every voxel counted as reference 0: only its column sums are used."""
    total = np.zeros((n_labels, n_labels), dtype=np.int64)
    total[0] = count_labels(labels, n_labels)
    return total


@dataclass(frozen=True)
class VolumeDomain:
    """NIfTI ``.nii`` / ``.nii.gz`` scans, segmented by a 3D single-channel model."""

    name: str = "volume"
    default_model: str | None = None  #: :func:`pipeline.model.models.load_model`'s default (``ct-organs``)
    options: frozenset[str] = frozenset({"probabilities"})

    def open(self, path: PathArg) -> VolumeSource:
        return VolumeSource(open_scan(Path(path)))


VOLUME = VolumeDomain()


def segment_volume(scan: PathArg, *, model: PathArg | Model | None = None, output: PathArg | None = None,
                   reference: PathArg | None = None, options: SegmentOptions | None = None,
                   runtime: RunSettings | None = None, **keywords: Any) -> SegmentationResult:
    """Segment a 3D NIfTI scan into a label mask on exactly its grid, with a report.

    Parameters
    ----------
    scan : the input ``.nii`` / ``.nii.gz``; never modified.
    model : a card name, a card path, a loaded :class:`Model`, or None for the default model (``ct-organs``).
    output : mask path; default ``<scan>_seg.nii.gz`` beside the scan. The report goes beside it
        as ``<mask>.report.json`` and ``.csv``; ``probabilities`` adds ``<mask>_probabilities.zarr``.
    reference : optional reference mask on the same grid, in the model's label values.
    options : what to write (:class:`SegmentOptions`: overwrite, html, ome_zarr, instances, chunks, backend,
        trust, probabilities); ``bands`` and ``vectors`` are refused.
    runtime : where to run (:class:`RunSettings`: work_dir, cluster, client, progress). The work store is
        removed after success and kept after an interruption: running the same call again resumes it.
    **keywords : any field of ``options`` or ``runtime`` by name, applied over them
        (``segment_volume(scan, overwrite=True, client=client)``).

    Raises
    ------
    InputError, CardError, ModelError, SettingsError, OutputExistsError, OutputError
    """
    ours, run = resolve_options(options, runtime, keywords)
    return segment(scan, VOLUME, model=model, output=output, reference=reference, options=ours, runtime=run)
