"""What is written beside a mask after its JSON/CSV report: viewer files, the HTML report, OME-Zarr.

One call from the segmentation driver (:mod:`pipeline.segment.driver`), made
inside the work store block, so images are rendered from the Zarr ``image``/``labels`` arrays.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.geometry import RasterGeometry, VolumeGeometry
from pipeline.io.outputs import html_report_path, ome_zarr_path
from pipeline.io.store import one_chunk_at_a_time
from pipeline.model.models import Model
from pipeline.report.html_report import raster_report, volume_report
from pipeline.report.viewer_files import write_viewer_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sidecars:
    """Paths of the files written beside a mask (None / empty when not asked for)."""

    html: Path | None = None
    viewer_files: tuple[Path, ...] = ()
    ome_zarr: Path | None = None


def _window(model: Model) -> tuple[float, float] | None:
    """The card's intensity window, so images look like what the model saw (None: auto)."""
    pre = model.card.preprocess
    return (pre.a_min, pre.a_max) if pre is not None and pre.kind == "window" else None


def write_sidecars(report: dict[str, Any], group: Any, model: Model, mask: Path, *,
                   geometry: VolumeGeometry | RasterGeometry, reference: Any = None, html: bool = True,
                   ome_zarr: bool = False) -> Sidecars:
    """Write viewer files, and optionally the HTML report and an OME-Zarr copy, beside ``mask``.

    ``reference`` is the reference NIfTI path for volumes, the window reader (``(rows, cols) ->
    (labels, valid)``) for rasters, or None.
    """
    started = time.perf_counter()
    kind = "raster" if isinstance(geometry, RasterGeometry) else "volume"
    viewers = write_viewer_files(mask, model.labels, kind)
    page = None
    if html:
        page = html_report_path(mask)
        with one_chunk_at_a_time():
            if isinstance(geometry, RasterGeometry):
                raster_report(report, group, model.labels, spacing=geometry.pixel_size, window=_window(model),
                              reference=reference, path=page)
            else:
                volume_report(report, group, model.labels, geometry=geometry, window=_window(model),
                              reference=reference, path=page)
    store = None
    if ome_zarr:
        from pipeline.io.omezarr import write_ome_zarr

        valid = group["valid"] if kind == "raster" else None
        store = write_ome_zarr(group["image"], group["labels"], geometry, ome_zarr_path(mask), labels=model.labels,
                               valid=valid, window=_window(model))
    logger.debug("%s: sidecars in %.3f s", mask, time.perf_counter() - started)
    return Sidecars(html=page, viewer_files=viewers, ome_zarr=store)
