"""``pipeline segment-volume x.ome.zarr``: Zarr stores route to the in-place driver; bad ones fail in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from pipeline.cli import app
from tests.factories import run_and_check_clean_failure
from tests.io.test_ngff_input import ct_store, write_ngff, zyx  # noqa: F401 (ct_store is a fixture)

runner = CliRunner()


def test_missing_level_is_one_line(tmp_path: Path) -> None:
    store = write_ngff(tmp_path / "v.ome.zarr", [np.zeros((4, 5, 6), np.int16)], axes=zyx(), scales=[[1.0] * 3],
                       translation=[0.0] * 3, chunks=(4, 5, 6))
    run_and_check_clean_failure(runner, app, ["segment-volume", str(store), "--level", "3", "--model", "ct-body"],
                                tmp_path, "level 3 does not exist (levels 0..0)")


def test_nifti_only_options_are_refused(tmp_path: Path) -> None:
    store = write_ngff(tmp_path / "v.ome.zarr", [np.zeros((4, 5, 6), np.int16)], axes=zyx(), scales=[[1.0] * 3],
                       translation=[0.0] * 3, chunks=(4, 5, 6))
    result = runner.invoke(app, ["segment-volume", str(store), "--probabilities"])
    assert result.exit_code == 2 and "not available for Zarr inputs" in result.stderr


@pytest.mark.slow
def test_classical_card_writes_labels_into_another_store(ct_store: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "labels.ome.zarr"
    args = ["segment-volume", str(ct_store), "--model", "ct-body", "-o", str(out), "--orientation", "SAR"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    labels = np.asarray(zarr.open_array(zarr.storage.LocalStore(out / "labels" / "ct-body"), path="0"))
    assert labels.shape == (30, 101, 122) and 0.3 < labels.mean() < 0.9  # body mask of the real CT
    assert not (ct_store / "labels" / "ct-body").exists()  # the input store is untouched with -o
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "pass --overwrite" in again.stderr
