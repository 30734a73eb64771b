"""Label-name sidecars so a mask opens in a viewer with the model's names and colours.

A NIfTI mask carries label values only; ITK-SNAP and 3D Slicer show names and colours
when given a label description file / colour table next to it. A raster mask's COG
already has a colour table and class names; QGIS picks up a ``.qml`` style with the
same base name automatically, which also gives it a paletted legend with names.

Formats, as their viewers document them:

- ITK-SNAP label description file: ``#`` comment lines, then one line per label
  ``IDX R G B A VIS MSH "LABEL"`` (RGB 0..255, A opacity 0..1, VIS/MSH 0 or 1).
- 3D Slicer colour table (``.ctbl``): header ``# Color table file <path>``, ``# N values``,
  then ``index name R G B A`` (0..255; spaces in names replaced by underscores).
- QGIS layer style (``.qml``): a ``paletted`` ``rasterrenderer`` with one ``paletteEntry``
  (value, ``#rrggbb`` colour, alpha, label) per class.

The texts are built by pure functions; :func:`write_viewer_files` does the I/O.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

from pipeline.config.cards import Label
from pipeline.io.atomic import atomic_path
from pipeline.io.outputs import NODATA_LABEL, mask_stem, viewer_paths  # noqa: F401  (named in one place)

ITKSNAP_HEADER = """\
################################################
# ITK-SnAP Label Description File
# File format:
# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
# Fields:
#    IDX:   Zero-based index
#    -R-:   Red color component (0..255)
#    -G-:   Green color component (0..255)
#    -B-:   Blue color component (0..255)
#    -A-:   Label transparency (0.00 .. 1.00)
#    VIS:   Label visibility (0 or 1)
#    MSH:   Label mesh visibility (0 or 1)
#  LABEL:   Label description
################################################
"""


def _clean(name: str) -> str:
    """A name on one line without double quotes (both formats are line- and quote-delimited)."""
    return re.sub(r"\s+", " ", name.replace('"', "'")).strip() or "unnamed"


def itksnap_labels(labels: Mapping[int, Label]) -> str:
    """ITK-SNAP label description text; background (0) is transparent and hidden, as ITK-SNAP's 'Clear Label'."""
    lines = [ITKSNAP_HEADER.rstrip("\n")]
    for value, label in sorted(labels.items()):
        r, g, b = label.color
        shown = 0 if value == 0 else 1
        alpha = "0" if value == 0 else "1"
        lines.append(f"{value:5d} {r:5d} {g:4d} {b:4d} {alpha:>8}  {shown}  {shown}    \"{_clean(label.name)}\"")
    return "\n".join(lines) + "\n"


def slicer_color_table(labels: Mapping[int, Label], *, title: str = "volseg") -> str:
    """3D Slicer discrete colour table (``.ctbl``) text; background fully transparent."""
    lines = [f"# Color table file {title}", f"# {len(labels)} values"]
    for value, label in sorted(labels.items()):
        r, g, b = label.color
        name = _clean(label.name).replace(" ", "_")
        lines.append(f"{value} {name} {r} {g} {b} {0 if value == 0 else 255}")
    return "\n".join(lines) + "\n"


def hex_color(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def qgis_style(labels: Mapping[int, Label], *, nodata: int | None = NODATA_LABEL) -> str:
    """QGIS ``.qml`` with a paletted renderer on band 1; ``nodata`` pixels transparent, background opaque."""
    root = ET.Element("qgis", version="3.22.0", styleCategories="AllStyleCategories")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(pipe, "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1",
                             nodataColor="")
    transparency = ET.SubElement(renderer, "rasterTransparency")
    if nodata is not None:
        single = ET.SubElement(transparency, "singleValuePixelList")
        ET.SubElement(single, "pixelListEntry", min=str(nodata), max=str(nodata), percentTransparent="100")
    palette = ET.SubElement(renderer, "colorPalette")
    for value, label in sorted(labels.items()):
        ET.SubElement(palette, "paletteEntry", value=str(value), color=hex_color(label.color), alpha="255",
                      label=_clean(label.name))
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", colorizeOn="0", colorizeRed="255",
                  colorizeGreen="128", colorizeBlue="128", colorizeStrength="100")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + body + "\n"


def write_viewer_files(mask: Path, labels: Mapping[int, Label], kind: str) -> tuple[Path, ...]:
    """Write the sidecars of :func:`viewer_paths` atomically; returns their paths."""
    paths = viewer_paths(mask, kind)
    texts: tuple[str, ...]
    if kind == "raster":
        texts = (qgis_style(labels),)
    else:
        texts = (itksnap_labels(labels), slicer_color_table(labels, title=paths[1].name))
    for path, text in zip(paths, texts, strict=True):
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return paths
