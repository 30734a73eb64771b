"""volseg: chunked, Dask-parallel MONAI segmentation of huge volumes and rasters."""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

#: When this package was first imported: the start of a run's clock (see pipeline.segment.stages). Not the
#: process's creation time, which is the launching shell's when a script ``exec``s the CLI after other work.
IMPORTED_AT = time.time()

from pipeline.engine import sliding_window  # noqa: E402  (after the clock starts)
from pipeline.model.models import load_model  # noqa: E402

logging.getLogger(__name__).addHandler(logging.NullHandler())

#: Front ends imported on first use, so `import pipeline` (and `pipeline --help`) stays light.
_LAZY = {"segment_volume": "pipeline.segment.volume", "segment_raster": "pipeline.segment.raster"}

__all__ = ["load_model", "segment_raster", "segment_volume", "sliding_window"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
