"""A self-contained HTML report per volume or scene: overlays, legend, metrics, run facts, plots.

People look at segmentations rather than read numbers, so beside every JSON/CSV report we
write one HTML file (images embedded as PNG data URIs, no external files) with the input,
the reference and the prediction side by side.

Cost stays independent of the input's size: images are rendered from the work store's Zarr
``image``/``labels`` arrays, reading only the chunks under the displayed planes; the slice
position comes from a coarse strided read of the labels (about :data:`pipeline.report.focus.FOCUS_BUDGET`
elements),
and the reference is read for the displayed planes only.

Volumes are shown in the usual radiological convention (patient right on the screen's left,
anterior / superior up, sagittal with anterior on the left), chosen from the NIfTI affine's
closest axis codes (nibabel's ``io_orientation``; oblique scans are shown on their nearest
axes, not resampled), with each pixel drawn at its physical aspect from the voxel sizes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.cards import Label
from pipeline.geometry import VolumeGeometry
from pipeline.io.atomic import atomic_path
from pipeline.report.charts import confusion_chart, dice_chart
from pipeline.report.focus import find_focus, largest_label
from pipeline.report.images import label_lut
from pipeline.report.panels import Truth, raster_panels, volume_panels
from pipeline.report.viewer_files import hex_color


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
