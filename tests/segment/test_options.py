"""The driver's option handling: keywords map onto the frozen option groups, and a domain refuses the
options of another domain before any model is loaded or anything is written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import SettingsError
from pipeline.segment import RunSettings, SegmentOptions, segment_raster, segment_volume
from pipeline.segment.domain import DOMAINS, domain_for
from pipeline.segment.options import resolve_options
from tests.factories import write_nifti

DATA = Path(__file__).resolve().parents[2] / "data"


def test_keywords_land_in_their_group_over_the_given_values() -> None:
    given = SegmentOptions(html=False, chunks=(8, 8, 8))
    options, runtime = resolve_options(given, RunSettings(progress=True), {"overwrite": True, "work_dir": "w"})
    assert options == dataclasses.replace(given, overwrite=True)
    assert runtime == RunSettings(work_dir="w", progress=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.overwrite = False  # type: ignore[misc]


def test_an_unknown_keyword_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="'overwrit'"):
        resolve_options(None, None, {"overwrit": True})


def test_every_registered_domain_loads_and_names_its_options() -> None:
    for name in DOMAINS:
        domain = domain_for(name)
        assert domain.name in {"volume", "raster"}  # the sidecar kind (segment/domain.py); a DICOM series is a volume
        assert domain.name == name or name not in {"volume", "raster"}
        assert domain.options <= {"probabilities", "bands", "vectors"}


def test_a_volume_refuses_raster_options_before_any_work(tmp_path: Path) -> None:
    scan = write_nifti(tmp_path / "scan.nii.gz", np.zeros((8, 8, 8), np.float32))
    with pytest.raises(SettingsError, match=r"scan\.nii\.gz: vectors is not available for a volume input"):
        segment_volume(scan, vectors=tmp_path / "v.gpkg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz"]


def test_a_raster_refuses_probabilities_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="probabilities is not available for a raster input"):
        segment_raster(DATA / "geo" / "sample_geotiff.tif", output=tmp_path / "m.tif",
                       options=SegmentOptions(probabilities=True))
    assert list(tmp_path.iterdir()) == []
