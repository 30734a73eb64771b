"""Viewer sidecars parse in the formats ITK-SNAP, 3D Slicer and QGIS document."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pipeline.config.cards import Label
from pipeline.report.viewer_files import (
    itksnap_labels,
    qgis_style,
    slicer_color_table,
    viewer_paths,
    write_viewer_files,
)

LABELS = {0: Label(name="background", color=(0, 0, 0)), 1: Label(name="liver", color=(220, 120, 60)),
          2: Label(name='left "kidney" cortex', color=(240, 200, 40)), 3: Label(name="bone", color=(255, 255, 255))}

#: ITK-SNAP's documented line: IDX -R- -G- -B- -A-- VIS MSH "LABEL" (A a float 0..1).
ITKSNAP_LINE = re.compile(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([01])\s+([01])\s+"([^"]*)"\s*$')


def test_itksnap_label_file_parses_as_documented() -> None:
    text = itksnap_labels(LABELS)
    assert text.splitlines()[1] == "# ITK-SnAP Label Description File"
    entries = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = ITKSNAP_LINE.match(line)
        assert match, line
        idx, r, g, b, a, vis, _msh, name = match.groups()
        assert 0 <= float(a) <= 1
        entries[int(idx)] = ((int(r), int(g), int(b)), float(a), int(vis), name)
    assert set(entries) == set(LABELS)
    for value, label in LABELS.items():
        assert entries[value][0] == label.color
    assert entries[0][1:3] == (0.0, 0)  # background clear and hidden, like ITK-SNAP's "Clear Label"
    assert entries[1][1:3] == (1.0, 1)
    assert entries[1][3] == "liver"
    assert entries[2][3] == "left 'kidney' cortex"  # a double quote would end the field


def test_slicer_color_table_parses_as_documented() -> None:
    lines = slicer_color_table(LABELS, title="ct_seg.ctbl").splitlines()
    assert lines[0] == "# Color table file ct_seg.ctbl"
    assert lines[1] == f"# {len(LABELS)} values"
    rows = [line.split() for line in lines if not line.startswith("#")]
    assert all(len(row) == 6 for row in rows)  # index name R G B A, names without spaces
    table = {int(row[0]): (row[1], tuple(map(int, row[2:5])), int(row[5])) for row in rows}
    assert table[0] == ("background", (0, 0, 0), 0)
    assert table[1] == ("liver", (220, 120, 60), 255)
    assert table[2][0] == "left_'kidney'_cortex"
    assert all(0 <= c <= 255 for _, rgb, _ in table.values() for c in rgb)


def test_qgis_style_is_a_paletted_renderer_with_names_and_transparent_nodata() -> None:
    text = qgis_style(LABELS)
    assert text.startswith("<!DOCTYPE qgis")
    root = ET.fromstring(text.split("\n", 1)[1])
    assert root.tag == "qgis"
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None
    assert renderer.get("type") == "paletted"
    assert renderer.get("band") == "1"
    entries = renderer.findall("colorPalette/paletteEntry")
    assert [int(e.get("value")) for e in entries] == sorted(LABELS)
    for entry in entries:
        label = LABELS[int(entry.get("value"))]
        assert entry.get("color") == "#{:02x}{:02x}{:02x}".format(*label.color)
        assert entry.get("label") == label.name.replace('"', "'")
        assert entry.get("alpha") == "255"
    nodata = renderer.find("rasterTransparency/singleValuePixelList/pixelListEntry")
    assert nodata is not None
    assert nodata.get("min") == nodata.get("max") == "255"
    assert nodata.get("percentTransparent") == "100"


def test_written_beside_the_mask(tmp_path: Path) -> None:
    volume = write_viewer_files(tmp_path / "scan_seg.nii.gz", LABELS, "volume")
    assert [p.name for p in volume] == ["scan_seg.itksnap.txt", "scan_seg.ctbl"]
    raster = write_viewer_files(tmp_path / "scene_seg.tif", LABELS, "raster")
    assert [p.name for p in raster] == ["scene_seg.qml"]  # QGIS loads <name>.qml beside <name>.tif itself
    assert all(p.is_file() for p in (*volume, *raster))
    assert volume[0].read_text() == itksnap_labels(LABELS)
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


@pytest.mark.parametrize(("mask", "names"), [("a.nii", ["a.itksnap.txt", "a.ctbl"]), ("b.tiff", ["b.qml"])])
def test_paths(mask: str, names: list[str]) -> None:
    kind = "raster" if mask.endswith("tiff") else "volume"
    assert [p.name for p in viewer_paths(Path(mask), kind)] == names
