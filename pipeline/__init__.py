"""volseg: chunked, Dask-parallel MONAI segmentation of huge volumes and rasters."""

from __future__ import annotations

import importlib
import logging
from typing import Any

from pipeline.engine import sliding_window
from pipeline.model.models import load_model

logging.getLogger(__name__).addHandler(logging.NullHandler())

#: Front ends imported on first use, so `import pipeline` (and `pipeline --help`) stays light.
_LAZY = {"segment_volume": "pipeline.segment.volume", "segment_raster": "pipeline.segment.raster"}

__all__ = ["load_model", "segment_raster", "segment_volume", "sliding_window"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
