"""Segmentation: one driver (:mod:`.driver`) over one adapter per input kind (:mod:`.volume`, :mod:`.raster`,
:mod:`.dicom`).

The adapter protocol, and how to add a domain, is in :mod:`pipeline.segment.domain`. The entry points are
imported on first use, so ``import pipeline.segment.options`` (the CLI's) stays free of torch and Dask.
"""

from __future__ import annotations

import importlib
from typing import Any

from pipeline.segment.options import RunSettings, SegmentOptions, SeriesOptions

_LAZY = {
    "segment": "pipeline.segment.driver",
    "segment_volume": "pipeline.segment.volume",
    "segment_raster": "pipeline.segment.raster",
    "segment_series": "pipeline.segment.dicom",
    "SegmentationResult": "pipeline.segment.result",
}

__all__ = ["RunSettings", "SegmentOptions", "SegmentationResult", "SeriesOptions", "segment", "segment_raster",
           "segment_series", "segment_volume"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline.segment' has no attribute {name!r}")
