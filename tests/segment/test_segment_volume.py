"""segment_volume end to end on real and synthetic scans, against MONAI in memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import zarr
from monai.inferers import sliding_window_inference

from pipeline import load_model
from pipeline.evaluate.metrics import confusion, scores
from pipeline.segment import segment_volume
from tests.factories import oblique_affine, write_nifti
from tests.io.test_nifti_geometry import assert_same_geometry


def monai_reference(scan: Path, card: Path) -> np.ndarray:
    """argmax(sliding_window_inference(preprocess(x))) on the whole volume: the result to match."""
    model = load_model(card)
    x = model.preprocess(np.asanyarray(nib.load(scan).dataobj)[None])
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(x)[None], model.roi_size, 4, model.network,
                                          model.overlap, mode="gaussian")[0].numpy()
    return logits


def softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(axis=0, keepdims=True))
    return e / e.sum(axis=0)


@pytest.mark.slow
def test_real_ct_matches_monai(tmp_path: Path, data_dir: Path, tiny_card: Path, client2: Any) -> None:
    scan = data_dir / "medical" / "example_ct_sm.nii.gz"
    out = tmp_path / "ct_seg.nii.gz"
    result = segment_volume(scan, model=tiny_card, output=out, client=client2, chunks=(48, 40, 16),
                            probabilities=True)
    logits = monai_reference(scan, tiny_card)
    mask = np.asanyarray(nib.load(out).dataobj)
    assert mask.dtype == np.uint8
    assert (mask == logits.argmax(0)).mean() >= 0.9999
    probs = zarr.open_array(result.probabilities)[...].astype(np.float32)
    assert np.abs(probs - softmax(logits)).max() < 1e-3  # float16 storage resolution
    assert_same_geometry(scan, out)
    report = json.loads(result.report_json.read_text())
    assert report["model"] == "tiny" and report["input"]["sha256"]
    n_windows = report["run"]["windows"]
    from pipeline.engine import count_windows

    assert n_windows == count_windows((122, 101, 30), (32, 32, 16), 0.25)
    # several blocks: overlaps were spilled through the work directory, and the report says how much at most
    # (never more than the whole scan's sums: 3 classes + the weight, float32)
    assert report["run"]["blocks"] > 1
    assert 0 < report["run"]["spill_peak_mb"] <= 4 * 4 * 122 * 101 * 30 / 2**20
    stages = report["run"]["stages"]
    assert list(stages) == ["startup", "tile", "inference", "write", "report"]
    named = {k: v for k, v in stages.items() if k != "startup"}  # start-up began with the process, not the call
    assert all(v > 0 for v in named.values()) and sum(named.values()) <= report["run"]["seconds_total"]
    counts = np.bincount(mask.ravel(), minlength=3)
    assert [row["voxels"] for row in report["labels"]] == counts.tolist()
    assert report["labels"][1]["volume_ml"] == pytest.approx(counts[1] * 0.027, rel=1e-6)
    assert result.report_csv.read_text().startswith("label,name,voxels")


@pytest.mark.slow
def test_report_against_reference(tmp_path: Path, data_dir: Path, tiny_card: Path, client2: Any) -> None:
    scan = data_dir / "medical" / "example_ct_sm.nii.gz"
    ct = nib.load(scan)
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, size=ct.shape).astype(np.uint8)  # label 2 absent from the reference
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(truth, ct.affine, ct.header), ref)
    result = segment_volume(scan, model=tiny_card, output=tmp_path / "m.nii.gz", reference=ref, client=client2)
    pred = np.asanyarray(nib.load(tmp_path / "m.nii.gz").dataobj)
    expected = scores(confusion(truth, pred, 3))
    report = result.report
    for row, want in zip(report["labels"], expected.labels, strict=True):
        assert row["dice"] == pytest.approx(want.dice, abs=1e-6) if want.dice is not None else row["dice"] is None
        assert row["reference_voxels"] == want.reference
    assert report["pixel_accuracy"] == pytest.approx(expected.pixel_accuracy)
    assert report["mean_pixel_accuracy"] == pytest.approx(expected.mean_pixel_accuracy)


@pytest.mark.slow
@pytest.mark.parametrize(("shape", "dtype", "affine"), [
    ((37, 29, 19), np.int16, oblique_affine(lps=True)),  # not multiples of the chunk, oblique LPS
    ((70, 12, 40), np.uint8, oblique_affine((0.4, 0.4, 3.0))),  # smaller than the roi on one axis
    ((40, 33, 1), np.float32, np.diag([1.5, 1.5, 4.0, 1.0])),  # one voxel thick
])
def test_synthetic_volumes(tmp_path: Path, tiny_card: Path, client2: Any, shape: tuple[int, ...], dtype: type,
                           affine: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    data = (rng.standard_normal(shape) * 300).clip(0 if dtype == np.uint8 else -1000, 255 if dtype == np.uint8 else 1000)
    scan = write_nifti(tmp_path / "s.nii.gz", data.astype(dtype), affine)
    out = tmp_path / "s_seg.nii.gz"
    segment_volume(scan, model=tiny_card, output=out, client=client2, chunks=(24, 24, 24))
    mask = np.asanyarray(nib.load(out).dataobj)
    assert (mask == monai_reference(scan, tiny_card).argmax(0)).mean() >= 0.9999
    assert_same_geometry(scan, out)


def test_scaled_storage_segments_like_the_values_it_stores(tmp_path: Path, data_dir: Path, client2: Any) -> None:
    """HU stored as uint16 + scl_inter -1024 (as some DICOM converters write), or as int16 x scl_slope 0.5: the
    engine sees the scaled values (not the stored type's), so the masks equal the plain int16 scan's, byte for byte."""
    import struct

    original = nib.load(data_dir / "medical" / "example_ct_sm.nii.gz")
    hu = np.asarray(original.dataobj).astype(np.int32).clip(-1024, None)
    masks = []
    for name, stored, slope, inter in (("plain", hu.astype(np.int16), 1.0, 0.0),
                                       ("shifted", (hu + 1024).astype(np.uint16), 1.0, -1024.0),
                                       ("halved", (hu * 2).astype(np.int16), 0.5, 0.0)):
        scan = tmp_path / f"{name}.nii"
        nib.save(nib.Nifti1Image(stored, original.affine), scan)
        with open(scan, "r+b") as fh:  # scl_slope, scl_inter as a converter writes them (nibabel would rescale)
            fh.seek(112)
            fh.write(struct.pack("<ff", slope, inter))
        assert np.array_equal(np.asarray(nib.load(scan).dataobj), hu)
        result = segment_volume(scan, model="ct-organs", output=tmp_path / f"{name}_seg.nii.gz", client=client2,
                                html=False)
        masks.append(np.asarray(nib.load(result.mask).dataobj))
    assert len(np.unique(masks[0])) >= 4  # real organs found, so equality means something
    np.testing.assert_array_equal(masks[1], masks[0])
    np.testing.assert_array_equal(masks[2], masks[0])


@pytest.mark.slow
def test_cli_end_to_end(tmp_path: Path, data_dir: Path, tiny_card: Path) -> None:
    """The console script with its own LocalCluster; then `pipeline evaluate` on its output."""
    scan = data_dir / "medical" / "example_ct_sm.nii.gz"
    out = tmp_path / "ct_seg.nii.gz"
    exe = Path(sys.executable).parent / "pipeline"
    done = subprocess.run([exe, "segment-volume", scan, "-m", tiny_card, "-o", out, "--workers", "1"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert f"mask:   {out}" in done.stdout and "Mvox/s" in done.stdout
    assert (tmp_path / "ct_seg.report.json").is_file() and (tmp_path / "ct_seg.report.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct_seg.ctbl", "ct_seg.itksnap.txt", "ct_seg.nii.gz",
                                                      "ct_seg.report.csv", "ct_seg.report.html", "ct_seg.report.json"]
    evaluated = subprocess.run([exe, "evaluate", out, out], capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(evaluated.stdout)
    assert report["pixel_accuracy"] == 1.0
    assert all(row["dice"] in (1.0, None) for row in report["labels"])


@pytest.mark.slow
def test_zscore_statistics_are_global(tmp_path: Path, cards_dir: Path, client2: Any) -> None:
    """A z-score card: mean/std come from one pass over the whole volume, not per chunk."""
    from tests.factories import make_card

    card = make_card(cards_dir, name="tiny-mr", roi_size=(16, 16, 16), preprocess={"kind": "zscore", "threshold": 10})
    rng = np.random.default_rng(5)
    data = np.zeros((45, 38, 21), np.int16)
    data[5:40, 4:30, 3:18] = rng.normal(300, 80, size=(35, 26, 15)).astype(np.int16)
    scan = write_nifti(tmp_path / "mr.nii.gz", data, oblique_affine())
    out = tmp_path / "mr_seg.nii.gz"
    segment_volume(scan, model=card, output=out, client=client2, chunks=(16, 16, 8))
    mask = np.asanyarray(nib.load(out).dataobj)
    assert (mask == monai_reference(scan, card).argmax(0)).mean() >= 0.9999


@pytest.mark.slow
def test_cli_on_an_existing_cluster(tmp_path: Path, data_dir: Path, tiny_card: Path, client2: Any) -> None:
    """`--dask-address`: the run uses a scheduler it did not start, and leaves it running."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "ct_seg.nii.gz"
    before = len(client2.scheduler_info()["workers"])
    result = CliRunner().invoke(app, ["segment-volume", str(data_dir / "medical" / "example_ct_sm.nii.gz"),
                                      "-m", str(tiny_card), "-o", str(out),
                                      "--dask-address", client2.scheduler.address])
    assert result.exit_code == 0, result.output
    assert nib.load(out).shape == (122, 101, 30)
    assert len(client2.scheduler_info()["workers"]) == before  # the cluster is still there, untouched
    bad = CliRunner().invoke(app, ["segment-volume", str(data_dir / "medical" / "example_ct_sm.nii.gz"),
                                   "-m", str(tiny_card), "-o", str(tmp_path / "x.nii.gz"),
                                   "--dask-address", "tcp://127.0.0.1:9"])
    assert bad.exit_code == 1 and "cannot reach Dask scheduler" in bad.stderr
    assert not (tmp_path / "x.nii.gz").exists()
