"""Pixels of the report's images: intensity windows to gray, label colours blended on top, PNG data URIs."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.config.cards import Label

#: Longest displayed side of a panel, in CSS pixels.
PANEL_PX = 320


#: Opacity of label colours over the image.
OVERLAY_ALPHA = 0.5


def label_lut(labels: Mapping[int, Label]) -> np.ndarray:
    """(256, 4) uint8 RGBA per label value; background (0), unknown values and nodata transparent."""
    lut = np.zeros((256, 4), dtype=np.uint8)
    for value, label in labels.items():
        if 0 < value < 256:
            lut[value] = (*label.color, 255)
    return lut


def to_gray(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map intensities to 0..1 through ``window`` (clip + scale)."""
    lo, hi = window
    scale = (hi - lo) or 1.0
    return np.clip((np.asarray(image, dtype=np.float32) - lo) / scale, 0.0, 1.0)


def auto_window(values: np.ndarray) -> tuple[float, float]:
    """The 1st..99th percentile of finite values (for images without a card window)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, (1, 99))
    return float(lo), float(hi if hi > lo else lo + 1)


def compose(gray: np.ndarray, labels: np.ndarray | None, lut: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) uint8: a 0..1 image (gray (H, W) or colour (H, W, 3)) with label colours blended on top."""
    base = gray if gray.ndim == 3 else np.repeat(gray[..., None], 3, axis=2)
    rgb = base * 255.0
    if labels is not None:
        colours = lut[np.clip(labels, 0, 255).astype(np.uint8)]
        weight = colours[..., 3:4].astype(np.float32) / 255.0 * alpha
        rgb = rgb * (1 - weight) + colours[..., :3] * weight
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def png_data_uri(rgb: np.ndarray) -> str:
    """Encode an (H, W, 3) uint8 array as a ``data:image/png`` URI with Pillow (not matplotlib, whose import
    costs ~0.6 s of every run that draws no chart)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format="png", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def display_size(shape: Sequence[int], spacing: Sequence[float], longest: int = PANEL_PX) -> tuple[int, int]:
    """CSS (width, height) in pixels that show a (rows, cols) image at its physical aspect."""
    height_mm, width_mm = shape[0] * spacing[0], shape[1] * spacing[1]
    scale = longest / max(height_mm, width_mm, 1e-9)
    return max(1, round(width_mm * scale)), max(1, round(height_mm * scale))
