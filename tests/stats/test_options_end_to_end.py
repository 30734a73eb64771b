"""--statistics, --labels, --cutout and --tta through the CLI on the shipped samples, checked with NumPy."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def cli(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--no-html"] if "--html" not in args else list(args))
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_volume_options_on_the_sample_ct(data_dir: Path, tmp_path: Path) -> None:
    ct_path = data_dir / "medical" / "example_ct_sm.nii.gz"
    ref_path = data_dir / "medical" / "example_ct_sm_ct-organs_ref.nii.gz"
    full, subset = tmp_path / "full.nii.gz", tmp_path / "sub.nii.gz"
    cli("segment-volume", str(ct_path), "-r", str(ref_path), "-o", str(full))
    runner.invoke(app, ["segment-volume", str(ct_path), "-r", str(ref_path), "-o", str(subset), "--statistics",
                        "--labels", "liver,spleen", "--cutout", "liver", "--cutout-margin", "9", "--html"])
    ct = np.asanyarray(nib.load(ct_path).dataobj)
    ref = np.asanyarray(nib.load(ref_path).dataobj)
    every = np.asanyarray(nib.load(full).dataobj)
    mask = np.asanyarray(nib.load(subset).dataobj)
    np.testing.assert_array_equal(mask, np.where(np.isin(every, (1, 2)), every, 0))  # --labels
    report = json.loads((tmp_path / "sub.report.json").read_text())
    assert [row["name"] for row in report["labels"]] == ["background", "liver", "spleen"]
    liver = 2 * ((ref == 1) & (mask == 1)).sum() / ((ref == 1).sum() + (mask == 1).sum())
    assert report["labels"][1]["dice"] == pytest.approx(liver, abs=1e-6)
    for row in report["statistics"]["rows"]:  # --statistics: HU inside each kept label of the mask
        inside = ct[mask == row["label"]].astype(np.float64)
        assert row["count"] == inside.size
        assert row["mean"] == pytest.approx(inside.mean(), rel=1e-9)
        assert row["median"] == np.percentile(inside, 50) and row["p95"] == np.percentile(inside, 95)
    table = list(csv.DictReader((tmp_path / "sub.report.csv").open()))
    assert float(table[1]["std"]) == pytest.approx(ct[mask == 1].std(), rel=1e-9)
    assert 'id="statistics"' in (tmp_path / "sub.report.html").read_text()
    cut = nib.load(tmp_path / "sub_cutout.nii.gz")  # --cutout: exact crop, min outside the liver
    lo = report["cutout"]["start"]
    box = tuple(slice(a, a + n) for a, n in zip(lo, cut.shape))
    np.testing.assert_array_equal(np.asanyarray(cut.dataobj), np.where(mask[box] == 1, ct[box], ct.min()))
    shift = np.eye(4)
    shift[:3, 3] = lo
    np.testing.assert_allclose(cut.affine, nib.load(ct_path).affine @ shift, atol=1e-4)
    steps = [int(np.ceil(9 / z - 1e-9)) for z in nib.load(ct_path).header.get_zooms()]
    where = np.nonzero(mask == 1)
    assert lo == [max(0, int(w.min()) - m) for w, m in zip(where, steps)]
    assert list(cut.shape) == [min(n, int(w.max()) + 1 + m) - a for w, m, n, a in zip(where, steps, mask.shape, lo)]


@pytest.mark.slow
def test_tta_mirror_reports_its_passes(data_dir: Path, tmp_path: Path) -> None:
    ct_path = data_dir / "medical" / "example_ct_sm.nii.gz"
    out = tmp_path / "m.nii.gz"
    cli("segment-volume", str(ct_path), "-o", str(out), "--tta", "mirror")
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report["run"]["tta"] == {"mode": "mirror", "axes": [2], "passes_per_window": 2}


@pytest.mark.slow
def test_raster_statistics_and_cutout(data_dir: Path, tmp_path: Path) -> None:
    scene = data_dir / "geo" / "sample_geotiff.tif"
    out = tmp_path / "scene_seg.tif"
    cli("segment-raster", str(scene), "-o", str(out), "--statistics", "--cutout", "building", "--cutout-margin", "5")
    report = json.loads((tmp_path / "scene_seg.report.json").read_text())
    with rasterio.open(scene) as src:
        image, transform, nodata = src.read(1), src.transform, src.nodata
    with rasterio.open(out) as src:
        mask = src.read(1)
    for row in report["statistics"]["rows"]:
        inside = image[mask == row["label"]].astype(np.float64)
        assert row["channel"] == "band 1" and row["count"] == inside.size
        assert row["mean"] == pytest.approx(inside.mean(), rel=1e-9)
        assert row["p5"] == np.percentile(inside, 5)
    lo = report["cutout"]["start"]
    with rasterio.open(tmp_path / "scene_seg_cutout.tif") as cut:
        assert cut.transform == transform @ rasterio.Affine.translation(lo[1], lo[0])
        rows, cols = slice(lo[0], lo[0] + cut.height), slice(lo[1], lo[1] + cut.width)
        np.testing.assert_array_equal(cut.read(1), np.where(mask[rows, cols] == 1, image[rows, cols], nodata))


def test_unknown_label_is_one_line(data_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["segment-volume", str(data_dir / "medical" / "example_ct_sm.nii.gz"),
                                 "-o", str(tmp_path / "x.nii.gz"), "--labels", "livr"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: unknown label for --labels 'livr'; did you mean 'liver'? (the model's labels: background, liver, "
        "spleen, kidneys, lungs, bone)"]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--tta", "flip"], 1, "error: unknown --tta 'flip' (choices: none, mirror, mirror-all)"),
    (["--cutout", "spleen", "--labels", "liver"], 1, "error: --cutout spleen: dropped from the mask by --labels"),
    (["--cutout-margin", "-1"], 2, "error: Invalid value for '--cutout-margin'"),
])
def test_bad_mask_options_are_one_line(data_dir: Path, tmp_path: Path, args: list[str], code: int,
                                       message: str) -> None:
    result = runner.invoke(app, ["segment-volume", str(data_dir / "medical" / "example_ct_sm.nii.gz"),
                                 "-o", str(tmp_path / "x.nii.gz"), *args])
    assert result.exit_code == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert not list(tmp_path.iterdir())


def test_existing_cutout_is_refused_before_any_work(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "x_cutout.nii.gz").write_bytes(b"keep")
    result = runner.invoke(app, ["segment-volume", str(data_dir / "medical" / "example_ct_sm.nii.gz"),
                                 "-o", str(tmp_path / "x.nii.gz"), "--cutout", "liver"])
    assert result.exit_code == 1 and "x_cutout.nii.gz" in result.stderr and "exists" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_cutout.nii.gz"]
    assert (tmp_path / "x_cutout.nii.gz").read_bytes() == b"keep"
