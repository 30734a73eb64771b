"""Fixtures for catalog, manifest and flow tests: catalogs in tmp_path, a fake segmenter, one Prefect harness."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import segmenters as segmenters_module
from pipeline.config.segmenters import Segmenter
from tests.flows import fakes


def write_catalog(directory: Path, sources: list[dict[str, Any]], **top: Any) -> Path:
    """A catalog file in ``directory`` (paths inside are relative to it) with small defaults."""
    data = {"output_root": "out", "work_root": "work", "cluster": {"workers": 1},
            "schedule": {"cron": "0 2 * * *", "timezone": "UTC"}, "sources": sources, **top}
    path = directory / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def scan_files(directory: Path, *names: str) -> list[Path]:
    """Small distinct files standing in for scans (the fake segmenter only hashes them)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = directory / name
        path.write_bytes(f"scan {name}".encode())
        paths.append(path)
    return paths


@pytest.fixture
def fake_segmenter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route the ``medical`` kind to :func:`tests.flows.fakes.fake_segment`, with fresh call counts."""
    original = segmenters_module.SEGMENTERS["medical"]
    fake = Segmenter("tests.flows.fakes", "fake_segment", original.suffixes, original.output_suffix)
    monkeypatch.setitem(segmenters_module.SEGMENTERS, "medical", fake)
    fakes.CALLS.clear()
    fakes.MANIFEST_SEEN.clear()
    fakes.DISK_FULL["full"] = True


@pytest.fixture
def ct_catalog(tmp_path: Path, tiny_card: Path) -> Path:
    """A catalog over three fake scans (a, b, broken) with the tiny model and references for ``a``."""
    scan_files(tmp_path / "scans", "a.nii.gz", "b.nii.gz", "broken.nii.gz")
    scan_files(tmp_path / "refs", "a_ref.nii.gz")
    return write_catalog(tmp_path, [{"name": "ct", "kind": "medical", "directory": "scans", "glob": "*.nii.gz",
                                     "model": str(tiny_card), "reference": {"directory": "refs",
                                                                            "name": "{stem}_ref.nii.gz"}}])
