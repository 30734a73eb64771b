"""A self-contained HTML report per volume or scene: overlays, legend, metrics, run facts, plots.

People look at segmentations rather than read numbers, so beside every JSON/CSV report we
write one HTML file (images embedded as PNG data URIs, no external files) with the input,
the reference and the prediction side by side.

Cost stays independent of the input's size: images are rendered from the work store's Zarr
``image``/``labels`` arrays, reading only the chunks under the displayed planes; the slice
position comes from a coarse strided read of the labels (about :data:`FOCUS_BUDGET` elements),
and the reference is read for the displayed planes only.

Volumes are shown in the usual radiological convention (patient right on the screen's left,
anterior / superior up, sagittal with anterior on the left), chosen from the NIfTI affine's
closest axis codes (nibabel's ``io_orientation``; oblique scans are shown on their nearest
axes, not resampled), with each pixel drawn at its physical aspect from the voxel sizes.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.cards import Label
from pipeline.geometry import VolumeGeometry
from pipeline.io.atomic import atomic_path
from pipeline.io.outputs import NODATA_LABEL, html_report_path  # noqa: F401  (named in one place)
from pipeline.report.viewer_files import hex_color

#: Elements read (strided) to find the largest structure.
FOCUS_BUDGET = 2_000_000
#: Largest full-resolution raster window shown, per side.
RASTER_CROP = 1024
#: Longest displayed side of a panel, in CSS pixels.
PANEL_PX = 320
#: Longest side of an embedded raster image (2x the display size, for high-DPI screens); larger windows are strided.
MAX_PNG_SIDE = 2 * PANEL_PX
#: Longest side of an overview image (rasters larger than the crop).
OVERVIEW_SIDE = MAX_PNG_SIDE
#: Slices in the axial montage.
MONTAGE = 12
#: Opacity of label colours over the image.
OVERLAY_ALPHA = 0.5

#: ``(rows, cols) -> (labels, valid)``: a raster reference, window by window.
Truth = Callable[[slice, slice], tuple[np.ndarray, np.ndarray]]


# ---------------------------------------------------------------- pure helpers


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


def strided_step(shape: Sequence[int], budget: int = FOCUS_BUDGET) -> int:
    """Stride per axis so that a strided read holds about ``budget`` elements."""
    return max(1, math.ceil((math.prod(shape) / budget) ** (1 / len(shape))))


def largest_label(rows: Sequence[Mapping[str, Any]], count_key: str) -> int | None:
    """The non-background label with the most predicted voxels/pixels (None if all are empty)."""
    counts = [(row[count_key] or 0, row["label"]) for row in rows if row["label"] != 0]
    best = max(counts, default=(0, None))
    return best[1] if best[0] > 0 else None


@dataclass(frozen=True)
class Focus:
    """Where to look: a point inside the largest structure and the extent of the foreground."""

    point: tuple[int, ...]
    low: tuple[int, ...]
    high: tuple[int, ...]  #: inclusive


def find_focus(labels: Any, label: int | None, budget: int = FOCUS_BUDGET) -> Focus:
    """The labelled voxel nearest to the centroid of ``label`` (on a strided grid), and the foreground extent.

    Falls back to the centre (and the whole array) when nothing is labelled or the grid misses it.
    """
    shape = tuple(labels.shape)
    centre = Focus(tuple(n // 2 for n in shape), (0,) * len(shape), tuple(n - 1 for n in shape))
    if label is None:
        return centre
    step = strided_step(shape, budget)
    coarse = np.asarray(labels[tuple(slice(None, None, step) for _ in shape)])
    where = np.argwhere(coarse == label)
    if where.size == 0:
        return centre
    centroid = where.mean(axis=0)
    nearest = where[np.argmin(((where - centroid) ** 2).sum(axis=1))]
    fg = np.argwhere((coarse > 0) & (coarse != NODATA_LABEL))
    clip = [n - 1 for n in shape]
    return Focus(point=tuple(int(min(v * step, c)) for v, c in zip(nearest, clip, strict=True)),
                 low=tuple(int(v * step) for v in fg.min(axis=0)),
                 high=tuple(int(min(v * step + step - 1, c)) for v, c in zip(fg.max(axis=0), clip, strict=True)))


@dataclass(frozen=True)
class ViewSpec:
    """One of the three planes: which world (RAS) axis is its normal, which ones go down and right.

    ``down``/``right`` are (world axis, sign): sign -1 means the screen coordinate grows as the world
    coordinate falls (e.g. anterior at the top, patient right on the left).
    """

    name: str
    normal: int
    down: tuple[int, int]
    right: tuple[int, int]


#: Radiological convention (as ITK-SNAP and 3D Slicer show them).
VIEWS = (
    ViewSpec("axial", normal=2, down=(1, -1), right=(0, -1)),
    ViewSpec("coronal", normal=1, down=(2, -1), right=(0, -1)),
    ViewSpec("sagittal", normal=0, down=(2, -1), right=(1, -1)),
)
_LETTERS = (("L", "R"), ("P", "A"), ("I", "S"))  # (low end, high end) of RAS axes


@dataclass(frozen=True)
class PlaneMap:
    """How to cut one view out of an (i, j, k) volume and turn it to screen order."""

    view: ViewSpec
    axis: int  #: the voxel axis that is the plane's normal
    rows: int  #: voxel axis shown top to bottom
    cols: int
    flip_rows: bool
    flip_cols: bool

    def sides(self) -> dict[str, str]:
        """The anatomical letter at each edge of the displayed image."""
        (dr, sr), (dc, sc) = self.view.down, self.view.right
        top, bottom = (_LETTERS[dr][1], _LETTERS[dr][0]) if sr < 0 else _LETTERS[dr]
        left, right = (_LETTERS[dc][1], _LETTERS[dc][0]) if sc < 0 else _LETTERS[dc]
        return {"top": top, "bottom": bottom, "left": left, "right": right}

    def index(self, position: int) -> tuple[Any, ...]:
        key: list[Any] = [slice(None)] * 3
        key[self.axis] = position
        return tuple(key)

    def orient(self, plane: np.ndarray) -> np.ndarray:
        """A plane read with :meth:`index` (remaining axes in voxel order) -> screen order."""
        if self.rows > self.cols:
            plane = plane.T
        if self.flip_rows:
            plane = plane[::-1]
        if self.flip_cols:
            plane = plane[:, ::-1]
        return np.ascontiguousarray(plane)


def plane_maps(affine: np.ndarray) -> list[PlaneMap]:
    """The three :class:`PlaneMap` of a volume, from its affine's closest RAS axes."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(np.asarray(affine, dtype=np.float64))
    voxel_of = {int(world): (voxel, int(sign)) for voxel, (world, sign) in enumerate(ornt)}
    maps = []
    for view in VIEWS:
        (rows, row_sign), (cols, col_sign) = voxel_of[view.down[0]], voxel_of[view.right[0]]
        maps.append(PlaneMap(view, axis=voxel_of[view.normal][0], rows=rows, cols=cols,
                             flip_rows=row_sign != view.down[1], flip_cols=col_sign != view.right[1]))
    return maps


# ---------------------------------------------------------------- charts (matplotlib, Agg)


def figure_uri(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, pil_kwargs={"compress_level": 3})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def dice_chart(rows: Sequence[Mapping[str, Any]], labels: Mapping[int, Label]) -> str | None:
    """A horizontal Dice bar per label, in the label's colour (None without Dice values)."""
    scored = [row for row in rows if row.get("dice") is not None]
    if not scored:
        return None
    from matplotlib.figure import Figure

    height = 0.3 * len(scored) + 0.7
    fig = Figure(figsize=(5, height))
    fig.subplots_adjust(left=0.25, right=0.95, bottom=0.45 / height, top=1 - 0.1 / height)
    ax = fig.add_subplot()
    names = [row["name"] for row in scored]
    colours = [np.array(labels[row["label"]].color) / 255 if row["label"] in labels else (0.5, 0.5, 0.5)
               for row in scored]
    ax.barh(names, [row["dice"] for row in scored], color=colours, edgecolor="black", linewidth=0.5)
    for y, row in enumerate(scored):
        ax.text(min(row["dice"] + 0.01, 0.88), y, f"{row['dice']:.3f}", va="center", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("Dice")
    return figure_uri(fig)


def confusion_chart(matrix: Sequence[Sequence[int]], names: Sequence[str]) -> str | None:
    """Heatmap of the confusion matrix, rows = reference, normalised per reference label."""
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] < 2 or counts.sum() == 0:
        return None
    from matplotlib.figure import Figure

    n = counts.shape[0]
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = 1.6 + 0.5 * n
    fig = Figure(figsize=(side, side))
    fig.subplots_adjust(left=1.2 / side, bottom=1.2 / side, right=1 - 0.1 / side, top=1 - 0.1 / side)
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names[:n], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), names[:n], fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("reference")
    if n <= 12:
        for (r, c), value in np.ndenumerate(share):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value > 0.6 else "black")
    return figure_uri(fig)


# ---------------------------------------------------------------- panels


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


# ---------------------------------------------------------------- the page


def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(loader=PackageLoader("pipeline.report", "templates"),
                      autoescape=select_autoescape(["j2", "html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    return env


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_page(template: str, **context: Any) -> str:
    """Render one of the package's Jinja2 templates."""
    return _environment().get_template(template).render(**context)


def legend(labels: Mapping[int, Label]) -> list[dict[str, Any]]:
    return [{"value": v, "name": label.name, "hex": hex_color(label.color)}
            for v, label in sorted(labels.items())]


def write_html(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def volume_report(report: Mapping[str, Any], group: Any, labels: Mapping[int, Label], *, geometry: VolumeGeometry,
                  window: tuple[float, float] | None, reference: Any, path: Path) -> Path:
    """Write the HTML report of a volume from its work store ``group`` (``image``, ``labels``).

    ``reference`` is a path to the reference NIfTI (read for the displayed planes only), or None.
    """
    from pipeline.io.nifti import read_reference

    lut = label_lut(labels)
    predicted = group["labels"]
    focus = find_focus(predicted, largest_label(report["labels"], "voxels"))
    read_plane = None
    if reference:
        ref = read_reference(reference, geometry)
        shape = ref.geometry.shape

        def read_plane(key: tuple[Any, ...]) -> np.ndarray:
            plane_shape = [n for n, k in zip(shape, key, strict=True) if isinstance(k, slice)]
            return np.asarray(ref.proxy[key]).reshape(plane_shape)

    rows, montage = volume_panels(group["image"], predicted, geometry.affine_matrix, geometry.zooms, focus, window, lut,
                                  read_plane)
    text = render_page("report.html.j2", kind="volume", report=report, rows=rows, montage=montage,
                       legend=legend(labels), focus=focus, title=Path(report["input"]["path"]).name,
                       dice_chart=dice_chart(report["labels"], labels),
                       confusion_chart=_confusion(report, labels))
    return write_html(path, text)


def raster_report(report: Mapping[str, Any], group: Any, labels: Mapping[int, Label], *,
                  spacing: Sequence[float], window: tuple[float, float] | None, reference: Truth | None,
                  path: Path) -> Path:
    """Write the HTML report of a raster scene from its work store ``group`` (``image``, ``labels``, ``valid``)."""
    lut = label_lut(labels)
    predicted = group["labels"]
    focus = find_focus(predicted, largest_label(report["labels"], "pixels"))
    panels = raster_panels(group["image"], predicted, group["valid"], spacing, focus, window, lut, reference)
    text = render_page("report.html.j2", kind="raster", report=report, rows=[panels], montage=None,
                       legend=legend(labels), focus=focus, title=Path(report["input"]["path"]).name,
                       dice_chart=dice_chart(report["labels"], labels),
                       confusion_chart=_confusion(report, labels))
    return write_html(path, text)


def _confusion(report: Mapping[str, Any], labels: Mapping[int, Label]) -> str | None:
    matrix = report.get("confusion_matrix")
    if not matrix or not report.get("reference"):
        return None
    names = [labels[v].name if v in labels else str(v) for v in range(len(matrix))]
    return confusion_chart(matrix, names)
