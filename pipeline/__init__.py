"""volseg: chunked, Dask-parallel MONAI segmentation of huge volumes and rasters."""

from __future__ import annotations

import logging

from pipeline.engine import sliding_window
from pipeline.models import load_model

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["load_model", "sliding_window"]
