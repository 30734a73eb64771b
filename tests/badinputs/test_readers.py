"""Unit tests for the reader fixes the corpus drove: qform/sform disagreement, corrupt raster tiles,
file-system errors in the CLI, and ``pipeline catalog check``."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.cli.running import run
from pipeline.io.geotiff import copy_window
from pipeline.io.nifti import open_scan, qform_sform_distance
from tests.badinputs.make_corpus import _catalog, _corrupt_tile, _nifti, _raster, _scene

runner = CliRunner()


def _shifted(dx: float) -> np.ndarray:
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    affine[0, 3] = dx
    return affine


@pytest.mark.parametrize(("dx", "qform_code", "expected"), [(40.0, 1, 40.0), (0.0, 1, 0.0), (40.0, 0, 0.0)])
def test_qform_sform_distance(tmp_path: Path, dx: float, qform_code: int, expected: float) -> None:
    path = _nifti(tmp_path / "scan.nii", np.zeros((4, 5, 6), np.int16), qform=_shifted(dx), qform_code=qform_code)
    assert qform_sform_distance(nib.load(path).header, (4, 5, 6)) == pytest.approx(expected, abs=1e-4)


def test_rotated_qform_is_measured_at_the_far_corner(tmp_path: Path) -> None:
    qform = np.diag([1.5, 1.5, 3.0, 1.0])
    qform[:3, :3] = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]]) @ qform[:3, :3]  # 90 degrees about z
    path = _nifti(tmp_path / "scan.nii", np.zeros((10, 10, 2), np.int16), qform=qform)
    far = np.array([9 * 1.5, 9 * 1.5, 0.0])  # corner (9, 9, k): sform -> (13.5, 13.5), qform -> (-13.5, 13.5)
    assert qform_sform_distance(nib.load(path).header, (10, 10, 2)) == pytest.approx(2 * far[0], abs=1e-3)


def test_open_scan_warns_when_qform_and_sform_disagree(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _nifti(tmp_path / "scan.nii.gz", np.zeros((4, 5, 6), np.int16), qform=_shifted(40.0))
    with caplog.at_level(logging.WARNING, logger="pipeline.io.nifti"):
        scan = open_scan(path)
    assert any("qform and sform disagree" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(scan.geometry.affine_matrix, nib.load(path).header.get_sform())  # sform wins


def test_open_scan_is_quiet_when_they_agree(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _nifti(tmp_path / "scan.nii.gz", np.zeros((4, 5, 6), np.int16))
    with caplog.at_level(logging.WARNING, logger="pipeline.io.nifti"):
        open_scan(path)
    assert not caplog.records


def test_copy_window_returns_the_error_of_a_corrupt_tile(tmp_path: Path) -> None:
    """A bad tile is an input error returned to the client, not a failed Dask task (logged with a traceback)."""
    scene = _corrupt_tile(_raster(tmp_path / "scene.tif", _scene()), 1, 1)
    result = copy_window(str(scene), (1,), "uint8", slice(64, 128), slice(64, 128), str(tmp_path / "unused.zarr"))
    assert isinstance(result, str)
    assert str(scene) in result
    assert "cannot read rows 64..127" in result
    assert not (tmp_path / "unused.zarr").exists()


def test_cli_turns_a_file_system_error_into_one_line(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.cli.running

    monkeypatch.setitem(pipeline.cli.running.state, "debug", False)  # an earlier CliRunner call may have passed --debug

    def refused() -> None:
        raise NotADirectoryError(20, "Not a directory", "/data/notes.txt/work")

    with pytest.raises(typer.Exit) as exit_info:
        run(refused)
    assert exit_info.value.exit_code == 1
    assert capsys.readouterr().err == "error: /data/notes.txt/work: Not a directory\n"


def test_catalog_check_lists_the_scans_it_would_segment(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    result = runner.invoke(app, ["catalog", "check", str(catalog)])
    assert result.exit_code == 0, result.output
    scan, output = tmp_path / "scans" / "scan.nii.gz", tmp_path / "out" / "ct" / "scan_seg.nii.gz"
    assert f"ct: {scan} -> {output}" in result.stdout
    assert result.stdout.splitlines()[-1] == f"{catalog}: valid"
    assert not output.exists()


def test_catalog_check_names_the_file_and_key(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, source={"kind": "medicla"})
    result = runner.invoke(app, ["catalog", "check", str(catalog)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {catalog}: sources.0.kind: ")


def test_the_pickle_payload_is_real(tmp_path: Path) -> None:
    """The corpus's weights payload does run under a plain unpickler, so its absence in the corpus means
    ``weights_only=True`` stopped it (and not that the payload was a dud)."""
    import torch

    from pipeline.errors import ModelError
    from pipeline.io.hashing import sha256_file
    from pipeline.model.models import load_weights
    from tests.badinputs.make_corpus import MARKER, _Payload

    torch.save(_Payload(tmp_path / MARKER), tmp_path / "evil.pt")
    with pytest.raises(ModelError, match=r"evil\.pt: refused to load weights \(not plain tensors: .*open"):
        load_weights(tmp_path / "evil.pt", sha256_file(tmp_path / "evil.pt"))
    assert not (tmp_path / MARKER).exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # what an unsafe loader would do
    assert (tmp_path / MARKER).exists()


def test_the_yaml_payload_is_real(tmp_path: Path) -> None:
    import yaml

    from pipeline.config.cards import load_card
    from pipeline.errors import CardError

    card = tmp_path / "card.yaml"
    card.write_text(f"description: !!python/object/apply:os.system ['touch {tmp_path / 'PWNED'}']\n")
    with pytest.raises(CardError, match="not a valid YAML model card"):
        load_card(card)
    assert not (tmp_path / "PWNED").exists()
    yaml.unsafe_load(card.read_text())  # what yaml.load without SafeLoader would do
    assert (tmp_path / "PWNED").exists()
