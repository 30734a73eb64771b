"""The report's image panels: input, reference and prediction of a volume's planes (plus a montage) or of
a raster's window."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.io.outputs import (
    NODATA_LABEL,
)
from pipeline.report.focus import Focus
from pipeline.report.images import PANEL_PX, auto_window, compose, display_size, png_data_uri, to_gray
from pipeline.report.planes import PlaneMap, plane_maps

#: Largest full-resolution raster window shown, per side.
RASTER_CROP = 1024


#: Longest side of an embedded raster image (2x the display size, for high-DPI screens); larger windows are strided.
MAX_PNG_SIDE = 2 * PANEL_PX


#: Longest side of an overview image (rasters larger than the crop).
OVERVIEW_SIDE = MAX_PNG_SIDE


#: Slices in the axial montage.
MONTAGE = 12


#: ``(rows, cols) -> (labels, valid)``: a raster reference, window by window.
Truth = Callable[[slice, slice], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Panel:
    """One embedded image with its caption, CSS size and (for volumes) edge letters."""

    title: str
    uri: str
    width: int
    height: int
    sides: dict[str, str] | None = None


def _panel(title: str, rgb: np.ndarray, spacing: Sequence[float], sides: dict[str, str] | None = None,
           longest: int = PANEL_PX) -> Panel:
    width, height = display_size(rgb.shape[:2], spacing, longest)
    return Panel(title, png_data_uri(rgb), width, height, sides)


def _as_labels(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind == "f":
        values = np.rint(values)
    return np.clip(values, 0, 255).astype(np.uint8)


def volume_panels(image: Any, labels: Any, affine: np.ndarray, zooms: Sequence[float], focus: Focus,
                  window: tuple[float, float] | None, lut: np.ndarray,
                  reference: Callable[[tuple[Any, ...]], np.ndarray] | None) -> tuple[list[list[Panel]], Panel]:
    """Rows of (input, reference, prediction) panels for the three planes through ``focus.point``, and a montage.

    ``image`` is the work store's (1, i, j, k) array, ``labels`` its (i, j, k) labels; ``reference``
    reads one plane of the reference given an (i, j, k) index tuple.
    """
    maps = plane_maps(affine)
    planes = {m.view.name: (m, np.asarray(image[(0, *m.index(focus.point[m.axis]))])) for m in maps}
    if window is None:
        window = auto_window(np.concatenate([p.ravel() for _, p in planes.values()]))
    rows = []
    for m, raw in planes.values():
        key = m.index(focus.point[m.axis])
        step = max(1, math.ceil(max(raw.shape) / MAX_PNG_SIDE))  # huge planes: embed at about display size

        def shown(plane: np.ndarray, m: PlaneMap = m, step: int = step) -> np.ndarray:
            return m.orient(plane)[::step, ::step]

        spacing = (zooms[m.rows] * step, zooms[m.cols] * step)
        gray = to_gray(shown(raw), window)
        where = f"{m.view.name} {'ijk'[m.axis]}={focus.point[m.axis]}" + (f", strided x{step}" if step > 1 else "")
        row = [_panel(f"input ({where})", compose(gray, None, lut), spacing, m.sides())]
        if reference is not None:
            row.append(_panel("reference", compose(gray, shown(_as_labels(reference(key))), lut), spacing, m.sides()))
        row.append(_panel("prediction", compose(gray, shown(np.asarray(labels[key])), lut), spacing, m.sides()))
        rows.append(row)
    return rows, _montage(image, labels, maps[0], zooms, focus, window, lut)


def take_planes(array: Any, axis: int, positions: Sequence[int], lead: tuple[int, ...] = ()) -> list[np.ndarray]:
    """Planes ``positions`` along ``axis`` (after fixing the ``lead`` axes), each chunk decompressed once
    (Zarr orthogonal indexing) rather than once per plane."""
    key: list[Any] = [*lead] + [slice(None)] * (array.ndim - len(lead))
    key[axis] = list(positions)
    if hasattr(array, "oindex"):
        block = np.asarray(array.oindex[tuple(key)])
        spatial = axis - len(lead)
        return [np.take(block, n, axis=spatial) for n in range(len(positions))]
    return [np.asarray(array[(*key[:axis], p, *key[axis + 1 :])]) for p in positions]


def _montage(image: Any, labels: Any, axial: PlaneMap, zooms: Sequence[float], focus: Focus,
             window: tuple[float, float], lut: np.ndarray) -> Panel:
    """Up to :data:`MONTAGE` axial slices evenly spread over the predicted foreground, predictions overlaid."""
    lo, hi = focus.low[axial.axis], focus.high[axial.axis]
    positions = sorted({round(v) for v in np.linspace(lo, hi, min(MONTAGE, hi - lo + 1))})
    step = max(1, math.ceil(max(image.shape[1 + axial.rows], image.shape[1 + axial.cols]) / (MAX_PNG_SIDE // 2)))
    images = take_planes(image, 1 + axial.axis, positions, lead=(0,))
    masks = take_planes(labels, axial.axis, positions)
    tiles = [compose(to_gray(axial.orient(im)[::step, ::step], window), axial.orient(mk)[::step, ::step], lut)
             for im, mk in zip(images, masks, strict=True)]
    columns = min(len(tiles), 4)
    h, w = tiles[0].shape[:2]
    sheet = np.full((math.ceil(len(tiles) / columns) * (h + 2), columns * (w + 2), 3), 255, dtype=np.uint8)
    for n, tile in enumerate(tiles):
        r, c = divmod(n, columns)
        sheet[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = tile
    title = f"axial {'ijk'[axial.axis]} = {', '.join(map(str, positions))}"
    return _panel(title, sheet, (zooms[axial.rows] * step, zooms[axial.cols] * step), axial.sides(),
                  longest=PANEL_PX * 2)


def _raster_rgb(data: np.ndarray, valid: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """(C, H, W) bands -> a 0..1 gray (1-2 bands) or RGB (3+ bands: the first three) image."""
    bands = data[:3] if data.shape[0] >= 3 else data[:1]
    out = []
    for band in bands:
        win = window if window is not None else auto_window(band[valid] if valid.any() else band)
        out.append(to_gray(band, win))
    return out[0] if len(out) == 1 else np.stack(out, axis=-1)


def raster_panels(image: Any, labels: Any, valid: Any, spacing: Sequence[float], focus: Focus,
                  window: tuple[float, float] | None, lut: np.ndarray, reference: Truth | None) -> list[Panel]:
    """(input, reference, prediction) of the whole scene when it fits in :data:`RASTER_CROP` (strided to
    :data:`MAX_PNG_SIDE`), else of a full-resolution :data:`MAX_PNG_SIDE` window around ``focus.point``
    plus a strided overview of the scene."""
    height, width = labels.shape
    side = RASTER_CROP if max(height, width) <= RASTER_CROP else MAX_PNG_SIDE
    r0 = min(max(focus.point[0] - side // 2, 0), max(height - side, 0))
    c0 = min(max(focus.point[1] - side // 2, 0), max(width - side, 0))
    rows, cols = slice(r0, min(r0 + side, height)), slice(c0, min(c0 + side, width))
    step = max(1, math.ceil(max(rows.stop - rows.start, cols.stop - cols.start) / MAX_PNG_SIDE))
    grid = (slice(rows.start, rows.stop, step), slice(cols.start, cols.stop, step))
    ok = np.asarray(valid[grid])
    base = _raster_rgb(np.asarray(image[(slice(None), *grid)]), ok, window)
    predicted = np.where(ok, np.asarray(labels[grid]), NODATA_LABEL)
    shown = (spacing[0] * step, spacing[1] * step)
    whole = rows.stop - rows.start == height and cols.stop - cols.start == width
    where = "whole scene" if whole else f"rows {rows.start}..{rows.stop - 1}, cols {cols.start}..{cols.stop - 1}"
    if step > 1:
        where += f", strided x{step}"
    panels = [_panel(f"input ({where})", compose(base, None, lut), shown)]
    if reference is not None:
        truth, truth_ok = reference(rows, cols)
        truth = np.where(truth_ok, _as_labels(truth), NODATA_LABEL)[::step, ::step]
        panels.append(_panel("reference", compose(base, np.where(ok, truth, NODATA_LABEL), lut), shown))
    panels.append(_panel("prediction", compose(base, predicted, lut), shown))
    if not whole:
        step = max(1, math.ceil(max(height, width) / OVERVIEW_SIDE))
        grid = (slice(None, None, step),) * 2
        ok_all = np.asarray(valid[grid])
        overview = _raster_rgb(np.asarray(image[(slice(None), *grid)]), ok_all, window)
        small = np.where(ok_all, np.asarray(labels[grid]), NODATA_LABEL)
        panels.append(_panel(f"overview (strided x{step}), prediction", compose(overview, small, lut),
                             (spacing[0] * step, spacing[1] * step)))
    return panels
