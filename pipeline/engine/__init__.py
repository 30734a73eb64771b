"""One engine for 2D and 3D: split (windows), predict (per worker), merge (per block)."""

from pipeline.engine.api import blend, count_windows, sliding_window
from pipeline.engine.predictor import InferenceSettings

__all__ = ["InferenceSettings", "blend", "count_windows", "sliding_window"]
