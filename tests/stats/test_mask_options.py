"""The mask options are checked against the model before any work, one line each."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import SettingsError
from pipeline.segment.mask_options import extra_outputs, resolve
from pipeline.model.models import load_model


@pytest.fixture(scope="module")
def ct_organs():  # noqa: ANN201
    return load_model("ct-organs")


def test_resolves_names(ct_organs) -> None:  # noqa: ANN001
    found = resolve(ct_organs, labels=["liver,spleen"], cutout=["liver"], cutout_margin=5, tta="mirror")
    assert found.kept == (1, 2) and found.cutout == (1,) and found.cutout_margin == 5.0
    assert found.fingerprint() == {"labels_kept": [1, 2]}
    outputs = extra_outputs(found, Path("out/scan_seg.nii.gz"))
    assert [(o.path.name, o.format) for o in outputs] == [("scan_seg_cutout.nii.gz", "nifti")]
    assert extra_outputs(resolve(ct_organs), Path("x.nii.gz")) == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"labels": ["liver"], "cutout": ["spleen"]}, "--cutout spleen: dropped from the mask by --labels"),
    ({"cutout": ["livr"]}, "unknown label for --cutout 'livr'; did you mean 'liver'?"),
    ({"cutout_margin": -1.0}, "--cutout-margin must be a finite number >= 0, got -1.0"),
    ({"cutout_margin": float("nan")}, "--cutout-margin must be a finite number >= 0, got nan"),
    ({"tta": "flip"}, "unknown --tta 'flip'"),
])
def test_refusals(ct_organs, kwargs: dict, message: str) -> None:  # noqa: ANN001
    with pytest.raises(SettingsError) as e:
        resolve(ct_organs, **kwargs)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_tta_needs_a_network() -> None:
    with pytest.raises(SettingsError, match="classical model has no network windows"):
        resolve(load_model("otsu-foreground"), tta="mirror")
