"""Fixtures for the report tests: a real work store from the sample CT, and external viewer tools.

Viewer tools (Chromium, QGIS) come from Debian packages (``scripts/setup-system``). Without them the
tests that drive them skip locally, but fail under ``CI=true``: CI must never pass by skipping them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import zarr

from pipeline.config.cards import Label, load_card
from pipeline.evaluate.metrics import confusion, scores
from pipeline.io.nifti import open_scan
from pipeline.model.models import resolve_card_path
from pipeline.report.tables import label_rows

DATA = Path(__file__).resolve().parents[2] / "data"
CT = DATA / "medical" / "example_ct_sm.nii.gz"
CT_REF = DATA / "medical" / "example_ct_sm_ct-organs_ref.nii.gz"


def require(available: bool, what: str) -> None:
    """Skip without ``what`` locally; fail in CI (``CI=true``), where scripts/setup-system installs it."""
    if available:
        return
    message = f"{what} is not installed (run scripts/setup-system as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    require(path is not None, "chromium")
    return str(path)


def pyqgis() -> str:
    """The system Python that has PyQGIS (Debian's python3-qgis), not the venv's."""
    python = "/usr/bin/python3"
    ok = Path(python).exists() and subprocess.run([python, "-c", "import qgis.core"], capture_output=True,
                                                  timeout=60, check=False).returncode == 0
    require(ok, "QGIS (python3-qgis)")
    return python


def napari_xvfb() -> str:
    """``xvfb-run``, with napari, its Qt binding and the OME-Zarr reader plugin in this venv (the ``viewers`` extra)."""
    xvfb = shutil.which("xvfb-run")
    require(xvfb is not None, "xvfb-run (xvfb)")
    modules = ("napari", "PyQt5", "napari_ome_zarr")
    require(all(importlib.util.find_spec(m) is not None for m in modules),
            "napari + PyQt5 + napari-ome-zarr (the 'viewers' extra: scripts/setup-venv)")
    return str(xvfb)


@pytest.fixture(scope="session")
def tiny6_card(cards_dir: Path) -> Path:
    """Untrained seeded 3D UNet with the ct-organs label count (6), so the shipped reference fits."""
    from tests.factories import make_card

    return make_card(cards_dir, name="tiny6", n_labels=6, roi_size=(32, 32, 16))


@pytest.fixture(scope="session")
def ct_labels() -> dict[int, Label]:
    return dict(load_card(resolve_card_path("ct-organs")).labels)


def make_store(directory: Path, image: np.ndarray, labels: np.ndarray, geometry_attrs: dict[str, Any],
               chunks: tuple[int, ...]) -> zarr.Group:
    """A work store laid out as segment_volume leaves it: image (1, i, j, k) + labels (i, j, k)."""
    group = zarr.open_group(zarr.storage.LocalStore(directory / "work.zarr"), mode="w", zarr_format=3)
    group.create_array("image", shape=(1, *image.shape), chunks=(1, *chunks), dtype=image.dtype,
                       attributes={"geometry": geometry_attrs})[:] = image[None]
    group.create_array("labels", shape=labels.shape, chunks=chunks, dtype=labels.dtype)[:] = labels
    return group


def volume_report_dict(prediction: np.ndarray, reference: np.ndarray | None, labels: dict[int, Label],
                       voxel_ml: float, input_path: Path) -> dict[str, Any]:
    """A report as segment_volume builds it, from the real metric and row functions."""
    n = len(labels)
    truth = reference if reference is not None else np.zeros_like(prediction)
    matrix = confusion(truth.astype(np.int64), prediction.astype(np.int64), n)
    measured = scores(matrix)
    has_ref = reference is not None
    return {
        "model": "ct-organs", "model_sha256": "f" * 64,
        "input": {"path": str(input_path), "sha256": "0" * 64, "shape": list(prediction.shape),
                  "zooms": [3.0, 3.0, 3.0], "dtype": "int16"},
        "output": "ct_seg.nii.gz", "reference": str(CT_REF) if has_ref else None,
        "labels": label_rows(measured, labels, voxel_ml, has_reference=has_ref),
        "pixel_accuracy": measured.pixel_accuracy if has_ref else None,
        "mean_pixel_accuracy": measured.mean_pixel_accuracy if has_ref else None,
        "confusion_matrix": matrix.tolist() if has_ref else None,
        "run": {"seconds_total": 12.5, "seconds_inference": 9.0, "mvox_per_s": 0.03, "windows": 6, "blocks": 9,
                "chunks": [64, 64, 32], "peak_rss_mb": 1024.0, "code_version": "0.1.0+gtest"},
    }


@pytest.fixture(scope="session")
def ct_case(tmp_path_factory: pytest.TempPathFactory, ct_labels: dict[int, Label]) -> dict[str, Any]:
    """The sample CT in a work store, with the shipped reference degraded a little as the 'prediction'."""
    scan = open_scan(CT)
    image = np.asarray(scan.proxy)
    reference = np.asarray(nib.load(CT_REF).dataobj).astype(np.uint8)
    prediction = reference.copy()
    prediction[reference == 2] = 0  # spleen missed -> Dice 0
    prediction[:, :, ::7][prediction[:, :, ::7] == 1] = 0  # liver thinned
    group = make_store(tmp_path_factory.mktemp("ct_store"), image, prediction, scan.geometry.to_attrs(), (64, 64, 16))
    report = volume_report_dict(prediction, reference, ct_labels, scan.geometry.voxel_volume_ml, CT)
    return {"scan": scan, "group": group, "report": report, "prediction": prediction, "reference": reference}
