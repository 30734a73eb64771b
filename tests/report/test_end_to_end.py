"""Sidecars from real runs: the sample CT and the sample SpaceNet tile, then QGIS renders the styled mask."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from PIL import Image

from pipeline.config.cards import load_card
from pipeline.errors import OutputExistsError
from pipeline.model.models import resolve_card_path
from pipeline.segment import segment_volume
from pipeline.segment.raster import segment_raster
from tests.report.conftest import CT, CT_REF, DATA, pyqgis


@pytest.mark.slow
def test_volume_run_writes_report_and_viewer_files(tmp_path: Path, tiny6_card: Path, client2: Any) -> None:
    out = tmp_path / "ct_seg.nii.gz"
    result = segment_volume(CT, model=tiny6_card, output=out, reference=CT_REF, client=client2, ome_zarr=True)
    assert result.html == tmp_path / "ct_seg.report.html"
    assert [p.name for p in result.viewer_files] == ["ct_seg.itksnap.txt", "ct_seg.ctbl"]
    assert result.ome_zarr == tmp_path / "ct_seg.ome.zarr"
    assert (result.ome_zarr / "labels" / "prediction").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["ct_seg.nii.gz", "ct_seg.report.json", "ct_seg.report.csv", "ct_seg.report.html", "ct_seg.itksnap.txt",
         "ct_seg.ctbl", "ct_seg.ome.zarr"])
    report = json.loads(result.report_json.read_text())
    matrix = np.array(report["confusion_matrix"])
    assert matrix.sum() == np.prod(report["input"]["shape"])
    assert [row["voxels"] for row in report["labels"]] == matrix.sum(axis=0).tolist()
    html = result.html.read_text()
    for row in report["labels"]:
        assert f"<td>{row['dice']:.3f}</td>" in html if row["dice"] is not None else True
    assert html.count("data:image/png") == 3 * 3 + 1 + 2
    for path in (result.mask, result.report_json, result.report_csv, *result.viewer_files):
        path.unlink()
    with pytest.raises(OutputExistsError, match=r"ct_seg\.report\.html"):  # sidecars are checked before any work
        segment_volume(CT, model=tiny6_card, output=out, client=client2)
    assert not result.mask.exists()


@pytest.mark.slow
def test_raster_run_and_qgis_renders_the_styled_mask(tmp_path: Path, data_dir: Path, client2: Any) -> None:
    scene = DATA / "geo" / "sample_geotiff.tif"
    result = segment_raster(scene, output=tmp_path / "tile_seg.tif", reference=DATA / "geo" / "geotiff_labels.geojson",
                            client=client2)
    assert [p.name for p in result.viewer_files] == ["tile_seg.qml"]
    assert result.html is not None
    assert result.html.is_file()
    html = result.html.read_text()
    assert html.count("data:image/png") == 3 + 2  # whole scene: input, reference, prediction; Dice; confusion
    assert "ha</th>" in html or "area (ha)" in html
    with rasterio.open(result.mask) as src:
        mask = src.read(1)
    building_share = float((mask == 1).mean())
    assert 0.01 < building_share < 0.5

    python = pyqgis()
    png = tmp_path / "qgis.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(tmp_path)}
    done = subprocess.run([python, str(Path(__file__).with_name("qgis_render.py")), str(result.mask), str(png), "300"],
                          capture_output=True, text=True, timeout=180, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    style = json.loads(done.stdout.strip().splitlines()[-1])
    card = load_card(resolve_card_path("buildings"))
    assert style["renderer"] == "paletted"
    # the names come from our .qml (the COG's colour table alone gives QGIS no class names)
    assert {c["value"]: c["label"] for c in style["classes"]} == {v: label.name for v, label in card.labels.items()}
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    building = (pixels == card.labels[1].color).all(axis=1).mean()
    background = (pixels == card.labels[0].color).all(axis=1).mean()
    assert abs(building - building_share) < 0.02, (building, building_share)  # the mask, in the class colours
    assert building + background > 0.98
