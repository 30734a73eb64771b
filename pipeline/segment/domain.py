"""The adapter protocol: what one input kind (NIfTI volume, GeoTIFF raster, ...) supplies to the driver.

:func:`pipeline.segment.driver.segment` runs every shared step once: load and check the model, check
the outputs, estimate the plan, fingerprint and resume the work store, start or reuse the cluster,
preload the model, infer, find instances, write the report and the sidecars. A domain supplies only
what depends on the file format. **Adding a domain (a DICOM series, an OME-Zarr store) is adding one
module** with a :class:`Domain` and its :class:`Source`, plus one entry in :data:`DOMAINS`:

``Domain`` (a stateless value, one per kind)
    ``name``           the sidecar kind: ``"volume"`` (ITK-SNAP/Slicer label files, ml) or ``"raster"``
                       (QGIS style, map units); it picks the viewer files and the HTML page layout.
    ``default_model``  the card used when none is given (``None``: :func:`pipeline.model.models.load_model`'s).
    ``options``        the domain-only :class:`~pipeline.segment.options.SegmentOptions` fields it takes
                       (``probabilities``, ``bands``, ``vectors``); the driver refuses the others when set.
    ``open(path)``     open and validate the input (header only, nothing big read) -> a ``Source``;
                       raises :class:`~pipeline.errors.InputError` (and subclasses) naming the file.

``Source`` (one opened input; attributes ``path`` and ``geometry``, a ``VolumeGeometry``/``RasterGeometry``)
    ``bind(model, options)``            check the model fits (dims, channels; select bands) or raise ``CardError``.
    ``default_output()``                the mask path when none is given (names from :mod:`pipeline.io.outputs`).
    ``outputs(mask, options, instances)``  every file the run writes (``pipeline.io.outputs.Output``).
    ``reads(reference)``                the files the run reads (never to be overwritten).
    ``plan_inputs()``                   ``PlanInputs`` for :func:`pipeline.segment.plan_estimate.estimate_plan`.
    ``open_reference(reference, model)``  check a reference before any work; returns the handle that
                                        ``confusion`` and the sidecars read it through.
    ``fingerprint()``                   extra keys that make a work store reusable (e.g. the bands).
    ``source_attrs()``                  extra ``source`` attributes of the tiled ``image`` array.
    ``tile(group, chunks, attributes, client)``  write the input into the work store as ``image``
                                        ``(C, *spatial)`` (and ``valid`` for inputs with nodata):
                                        returns ``(image, valid | None, valid pixel count | None)``.
    ``tile_chunks(default)``            the Zarr chunks of ``image`` without user blocks (``default``: the
                                        engine's; a raster rounds it to the file's own tiles).
    ``extras(work, model, client, options)``  domain outputs computed on the cluster (raster polygons);
                                        returns report facts (``{"features": n}``) or ``{}``.
    ``find_instances(group, classes, model, mask, client)``  the report's ``instances`` section.
    ``write(labels, valid, model, mask, work, options)``  the mask (and domain outputs), atomically.
    ``confusion(labels, valid, n_labels, reference)``  dense (reference, prediction) counts, reference 0
                                        everywhere when ``reference`` is None.
    ``report_input(sha256, valid_pixels)``  the report's ``input`` section.
    ``report_extras(options, facts)``  extra top-level report keys (raster: vectors, pixel area, unit).
    ``label_rows(measured, model, has_reference)``  the report's per-label rows (units per domain).
    ``sha256()``                        optional: the input's identity when it is not the file at ``path``
                                        (a DICOM series folder); the driver hashes ``path`` otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import zarr

    from pipeline.evaluate.metrics import Scores
    from pipeline.geometry import RasterGeometry, VolumeGeometry
    from pipeline.io.outputs import Output
    from pipeline.io.store import WorkStore
    from pipeline.model.models import Model
    from pipeline.segment.options import SegmentOptions


@dataclass(frozen=True, slots=True)
class PlanInputs:
    """What the plan estimate needs to know about the input beyond its shape."""

    in_channels: int
    itemsize: int  #: bytes per stored input value
    valid_mask: bool = False  #: a ``valid`` array is tiled beside the image


class Source(Protocol):
    """One opened input (see the module docstring for each method's contract)."""

    @property
    def path(self) -> Path: ...
    @property
    def geometry(self) -> VolumeGeometry | RasterGeometry: ...

    def bind(self, model: Model, options: SegmentOptions) -> None: ...
    def default_output(self) -> Path: ...
    def outputs(self, mask: Path, options: SegmentOptions, *, instances: bool) -> list[Output]: ...
    def reads(self, reference: str | os.PathLike[str] | None) -> list[Any]: ...
    def plan_inputs(self) -> PlanInputs: ...
    def open_reference(self, reference: str | os.PathLike[str], model: Model) -> Any: ...
    def fingerprint(self) -> dict[str, Any]: ...
    def source_attrs(self) -> dict[str, Any]: ...
    def tile_chunks(self, default: tuple[int, ...]) -> tuple[int, ...]: ...
    def tile(self, group: zarr.Group, chunks: tuple[int, ...], attributes: dict[str, Any],
             client: Any) -> tuple[zarr.Array, zarr.Array | None, int | None]: ...
    def extras(self, work: WorkStore, model: Model, client: Any, options: SegmentOptions) -> dict[str, Any]: ...
    def find_instances(self, group: zarr.Group, classes: list[str], model: Model, mask: Path,
                       client: Any) -> dict[str, Any]: ...
    def write(self, labels: zarr.Array, valid: zarr.Array | None, model: Model, mask: Path, work: WorkStore,
              options: SegmentOptions) -> None: ...
    def confusion(self, labels: zarr.Array, valid: zarr.Array | None, n_labels: int, reference: Any) -> np.ndarray: ...
    def report_input(self, sha256: str, valid_pixels: int | None) -> dict[str, Any]: ...
    def report_extras(self, options: SegmentOptions, facts: dict[str, Any]) -> dict[str, Any]: ...
    def label_rows(self, measured: Scores, model: Model, *, has_reference: bool) -> list[dict[str, Any]]: ...


class Domain(Protocol):
    """One input kind: its name (the sidecar kind), default model, own options and opener."""

    @property
    def name(self) -> str: ...
    @property
    def default_model(self) -> str | None: ...
    @property
    def options(self) -> frozenset[str]: ...

    def open(self, path: str | os.PathLike[str]) -> Source: ...


#: The domain-only option fields; a domain takes the ones in its ``options``.
DOMAIN_OPTIONS = frozenset({"probabilities", "bands", "vectors"})

#: Domain name -> ``module:attribute`` of its adapter, imported on first use (a volume run never imports
#: rasterio). Adding a domain adds one line here.
DOMAINS: dict[str, str] = {
    "volume": "pipeline.segment.volume:VOLUME",
    "raster": "pipeline.segment.raster:RASTER",
    "dicom": "pipeline.segment.dicom:DICOM",
}


def domain_for(name: str) -> Domain:
    """The adapter registered as ``name``.

    Raises
    ------
    KeyError
        ``name`` is not in :data:`DOMAINS`.
    """
    import importlib

    module, attribute = DOMAINS[name].split(":")
    domain: Domain = getattr(importlib.import_module(module), attribute)
    return domain
