"""The options of a segmentation run, grouped in two frozen values shared by the CLI, the flows and the API.

Why two groups: :class:`SegmentOptions` says *what* a run produces (outputs, model backend, blocks) and
belongs in a fingerprint or a flow parameter; :class:`RunSettings` says *where* it runs (work directory,
cluster, an existing client, progress bars) and changes nothing in the result. The Python entry points
(``segment_volume``, ``segment_raster``) also take the fields as plain keywords, converted once here by
:func:`resolve_options`, so ``segment_volume(scan, overwrite=True)`` stays the short call it was.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.config.cluster import ClusterSettings


@dataclass(frozen=True, slots=True)
class SegmentOptions:
    """What a run writes and with which engine settings; the defaults are the CLI's.

    ``probabilities`` is for volumes only, ``bands`` and ``vectors`` for rasters only (a domain refuses
    options it does not own: see :attr:`pipeline.segment.domain.Domain.options`).
    """

    overwrite: bool = False  #: replace existing outputs (otherwise :class:`OutputExistsError`)
    html: bool = True  #: also write ``<mask>.report.html``
    ome_zarr: bool = False  #: also write ``<mask>.ome.zarr`` (NGFF image + labels)
    instances: Sequence[str] | None = None  #: class names (or values) whose connected objects get ids
    chunks: Sequence[int] | None = None  #: block side per axis (default: the engine's, clipped to the input)
    backend: str | None = None  #: CPU inference backend overriding the card's (auto, torch, openvino)
    trust: bool = False  #: let a MONAI bundle's config run code beyond monai classes
    probabilities: bool = False  #: volumes: also write ``<mask>_probabilities.zarr``
    bands: Sequence[int] | None = None  #: rasters: 1-based bands in model order (default: the card's)
    vectors: str | os.PathLike[str] | None = None  #: rasters: also write polygons (``.gpkg``/``.geojson``)
    statistics: bool = False  #: input values inside each label in the report (``evaluate/label_statistics.py``)
    labels: Sequence[str] | None = None  #: keep only these labels (names or values) in the mask and the scores
    cutout: Sequence[str] | None = None  #: also write the input inside these labels, cropped: ``<mask>_cutout``
    cutout_margin: float = 0.0  #: margin of the cutout around the labels, mm (volumes) or m (rasters)
    tta: str = "none"  #: test-time mirroring: none, mirror (the card's trained axes), mirror-all


@dataclass(frozen=True, slots=True)
class RunSettings:
    """Where and how visibly a run executes; nothing here changes the mask."""

    work_dir: str | os.PathLike[str] | None = None  #: work store root (default: beside the output)
    cluster: ClusterSettings | None = None  #: local cluster settings or a scheduler address
    client: Any = None  #: an existing ``distributed.Client`` (wins over ``cluster``)
    progress: bool = False  #: draw a progress bar over the blocks


@dataclass(frozen=True, slots=True)
class SeriesOptions:
    """A DICOM series run only (:func:`pipeline.segment.dicom.segment_series`): which series, and its DICOM SEG."""

    series_uid: str | None = None  #: SeriesInstanceUID to segment when the folder holds several image series
    dicom_seg: str | None = None  #: ``"binary"`` or ``"labelmap"``: also write ``<mask stem>.dcm``, a DICOM SEG


_SEGMENT_FIELDS = frozenset(f.name for f in dataclasses.fields(SegmentOptions))
_RUN_FIELDS = frozenset(f.name for f in dataclasses.fields(RunSettings))


def resolve_options(options: SegmentOptions | None, runtime: RunSettings | None,
                    keywords: dict[str, Any]) -> tuple[SegmentOptions, RunSettings]:
    """``options`` / ``runtime`` (defaults when None) with ``keywords`` applied over them, by field name.

    Raises
    ------
    TypeError
        A keyword that is no field of either group, as for any Python function.
    """
    unknown = sorted(set(keywords) - _SEGMENT_FIELDS - _RUN_FIELDS)
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
    ours = {k: v for k, v in keywords.items() if k in _SEGMENT_FIELDS}
    run = {k: v for k, v in keywords.items() if k in _RUN_FIELDS}
    return (dataclasses.replace(options or SegmentOptions(), **ours),
            dataclasses.replace(runtime or RunSettings(), **run))
