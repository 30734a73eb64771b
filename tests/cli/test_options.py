"""Options and the first hour: one-line usage errors, -q/-v anywhere, plain help, settings checked up front,
evaluate on GeoTIFF masks with the card's names."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.cli import segment as segment_cli
from pipeline.cluster import ClusterSettings
from pipeline.errors import InputNotFoundError, SettingsError

runner = CliRunner()


def test_usage_errors_are_one_line_with_exit_2() -> None:
    for args in (["segment-volume", "x.nii.gz", "--frobnicate"], ["segment-volume"], ["evaluate", "a.nii.gz"],
                 ["segment-raster", "x.tif", "--workers", "-1"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


@pytest.mark.parametrize("flag", ["-q", "-v", "-vv", "--quiet"])
def test_shared_options_work_after_the_subcommand(flag: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["segment-volume", str(tmp_path / "missing.nii.gz"), flag])
    assert "No such option" not in result.stderr
    assert result.exit_code == 1 and "missing.nii.gz: file not found" in result.stderr


def test_debug_after_the_subcommand_shows_the_error_and_does_not_leak(tmp_path: Path) -> None:
    debug = runner.invoke(app, ["segment-volume", str(tmp_path / "missing.nii.gz"), "--debug"])
    assert isinstance(debug.exception, InputNotFoundError)  # raised (a traceback), not one line
    plain = runner.invoke(app, ["segment-volume", str(tmp_path / "missing.nii.gz")])
    assert plain.exit_code == 1 and "file not found" in plain.stderr  # the next invocation starts afresh


def test_info_needs_v_and_v_after_the_subcommand_counts() -> None:
    runner.invoke(app, ["models", "list"])
    assert logging.getLogger("pipeline").level == logging.WARNING  # no INFO lines in the progress bar
    runner.invoke(app, ["models", "list", "-v"])
    assert logging.getLogger("pipeline").level == logging.INFO
    runner.invoke(app, ["-q", "models", "list"])
    assert logging.getLogger("pipeline").level == logging.ERROR
    runner.invoke(app, ["models", "list", "-vv"])
    assert logging.getLogger("pipeline").level == logging.DEBUG


def test_help_is_plain_and_per_command() -> None:
    raster = runner.invoke(app, ["segment-raster", "--help"]).stdout
    volume = runner.invoke(app, ["segment-volume", "--help"]).stdout
    for text in (raster, volume):
        assert "<bool>" not in text and "--help <" not in text and "╭" not in text
    assert "voxel" not in raster and "pixels" in raster and "default: buildings" in raster
    assert "ct-organs" not in raster and "buildings" not in volume


def test_report_line_prints_the_csv_with_its_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = SimpleNamespace(mask=tmp_path / "m.nii.gz", report_json=tmp_path / "m.report.json",
                             report_csv=tmp_path / "m.report.csv", probabilities=None, report={"labels": []},
                             summary=lambda: "")
    segment_cli._print_result(result)
    assert f"report: {tmp_path / 'm.report.json'} (+ {tmp_path / 'm.report.csv'})" in capsys.readouterr().out


@pytest.mark.parametrize(("settings", "message"), [
    ({"memory_limit": "nonsense"}, "is not a size like 4GiB"),
    ({"memory_limit": "1KiB"}, "is below the 512.00 MiB"),
    ({"memory_limit": "1000TiB"}, "more than this machine's"),
    ({"address": "nonsense!!"}, "is not tcp://host:port"),
    ({"address": "tcp://host"}, "is not tcp://host:port"),
    ({"address": "tcp://host:99999"}, "is not tcp://host:port"),
    ({"address": "foo://host:1"}, "unknown scheme 'foo'"),
    ({"workers": 4096}, "workers must be 0.."),
    ({"workers": -1}, "workers must be 0.."),
    ({"threads_per_worker": 0}, "threads per worker must be"),
])
def test_cluster_settings_are_checked_when_made(settings: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        ClusterSettings(**settings)  # type: ignore[arg-type]


def test_good_cluster_settings_pass() -> None:
    ClusterSettings(memory_limit="2GiB", workers=2)
    ClusterSettings(workers=0)  # threads in this process, the default
    ClusterSettings(address="tcp://10.0.0.5:8786")
    ClusterSettings(address="127.0.0.1:8786")
    ClusterSettings(address="tls://[::1]:8786")


def test_evaluate_geotiff_masks_with_the_cards_names(data_dir: Path, tmp_path: Path) -> None:
    import rasterio

    reference = data_dir / "geo" / "sample_fp_mask.tif"
    with rasterio.open(reference) as src:
        truth, profile = src.read(1), src.profile
    binary = (truth > 0).astype(np.uint8)
    with rasterio.open(tmp_path / "ref.tif", "w", **{**profile, "dtype": "uint8"}) as dst:
        dst.write(binary, 1)
    predicted = binary.copy()
    predicted[: predicted.shape[0] // 2] = 0  # lose the top half of the buildings
    with rasterio.open(tmp_path / "pred.tif", "w", **{**profile, "dtype": "uint8"}) as dst:
        dst.write(predicted, 1)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "ref.tif"), "-m", "buildings"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)["labels"]}
    assert set(rows) == {"background", "building"}
    kept, total = int(predicted.sum()), int(binary.sum())
    assert rows["building"]["pixels"] == kept and rows["building"]["reference_pixels"] == total
    assert rows["building"]["dice"] == pytest.approx(2 * kept / (kept + total), abs=1e-6)


def test_evaluate_names_nifti_labels_from_the_card(data_dir: Path) -> None:
    ref = data_dir / "medical" / "example_ct_sm_ct-organs_ref.nii.gz"
    result = runner.invoke(app, ["evaluate", str(ref), str(ref), "-m", "ct-organs"])
    assert result.exit_code == 0, result.output
    names = [row["name"] for row in json.loads(result.stdout)["labels"]]
    assert names[:3] == ["background", "liver", "spleen"] and not any(n.startswith("label_") for n in names)


def test_shutdown_races_are_silenced_in_workers_and_driver_then_restored() -> None:
    """The heartbeat traceback (~1 run in 20) and the nanny's "still alive ... killing" after a successful run."""
    from pipeline.cluster import SHUTDOWN_LOGGERS, _driver_logs_restored, _quiet_shutdown

    ran: list[str] = []

    class Client:  # what dask_client's client does with client.run: call it in each worker
        def run(self, function: object, on_error: str) -> None:
            ran.append(on_error)
            function()  # type: ignore[operator]

    heartbeat = logging.getLogger("distributed.worker")
    heartbeat.setLevel(logging.NOTSET)
    with _driver_logs_restored():
        _quiet_shutdown(Client())
        assert ran == ["ignore"]
        assert all(logging.getLogger(name).level == logging.CRITICAL for name in SHUTDOWN_LOGGERS)
    assert heartbeat.level == logging.NOTSET  # a flow's next scan logs worker errors again
