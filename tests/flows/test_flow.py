"""The flow under one Prefect test harness, with the fake segmenter and no Dask cluster."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows import segment_new_scans as flow_module
from tests.flows import fakes
from tests.flows.conftest import scan_files, write_catalog

pytestmark = pytest.mark.usefixtures("prefect_harness", "fake_segmenter", "no_cluster")


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake segmenter needs no Dask: hand the tasks ``client=None`` instead of starting a cluster."""

    @contextlib.contextmanager
    def none(settings: Any) -> Iterator[None]:
        yield None

    monkeypatch.setattr(flow_module, "dask_client", none)
    monkeypatch.setattr(flow_module, "segment_scan", flow_module.segment_scan.with_options(retry_delay_seconds=0))


def artifacts(flow_run_id: Any) -> dict[str, Any]:
    """The run's artifacts by key, through the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        in_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        found = client.read_artifacts(artifact_filter=in_run)
    return {str(a.key): a for a in found}


def table(flow_run_id: Any) -> list[dict[str, Any]]:
    data = artifacts(flow_run_id)["segment-new-scans"].data
    rows: list[dict[str, Any]] = json.loads(data) if isinstance(data, str) else data
    return rows


def summary_of(state: Any) -> dict[str, Any]:
    """The flow's return value: its summary dict."""
    summary: dict[str, Any] = state.result()
    return summary


def test_bad_input_fails_alone_and_a_second_run_processes_nothing(ct_catalog: Path) -> None:
    state = flow_module.segment_new_scans(catalog=str(ct_catalog), return_state=True)
    assert state.is_completed(), state.message
    summary = summary_of(state)
    assert [Path(p).name for p in summary["done"]] == ["a.nii.gz", "b.nii.gz"]
    assert [Path(p).name for p in summary["failed"]] == ["broken.nii.gz"]
    rows = table(state.state_details.flow_run_id)
    by_scan = {(Path(r["scan"]).name, r["label"]): r for r in rows}
    assert by_scan[("a.nii.gz", "class1")]["dice"] == 0.6
    assert by_scan[("b.nii.gz", "class1")]["dice"] is None
    broken = by_scan[("broken.nii.gz", None)]
    assert broken["status"] == "failed"
    assert broken["reason"].endswith("not a readable NIfTI file (fake)")
    markdown = artifacts(state.state_details.flow_run_id)["segment-new-scans-reports"].data
    assert "2 done, 1 failed" in markdown
    assert "a_seg.report.json](file://" in markdown

    again = flow_module.segment_new_scans(catalog=str(ct_catalog), return_state=True)
    assert again.is_completed()
    assert {r["status"] for r in table(again.state_details.flow_run_id)} == {"failed-before"}
    assert fakes.CALLS == {"a.nii.gz": 1, "b.nii.gz": 1, "broken.nii.gz": 1}


def test_transient_errors_are_retried_and_input_errors_are_not(tmp_path: Path, tiny_card: Path) -> None:
    scan_files(tmp_path / "scans", "flaky.nii.gz", "broken.nii.gz")
    path = write_catalog(tmp_path, [{"name": "ct", "kind": "medical", "directory": "scans", "model": str(tiny_card)}])
    state = flow_module.segment_new_scans(catalog=str(path), return_state=True)
    assert state.is_completed(), state.message
    assert fakes.CALLS == {"flaky.nii.gz": 2, "broken.nii.gz": 1}
    assert [Path(p).name for p in summary_of(state)["done"]] == ["flaky.nii.gz"]


def test_a_pipeline_failure_fails_the_run_after_the_other_scans(tmp_path: Path, tiny_card: Path) -> None:
    scan_files(tmp_path / "scans", "crash.nii.gz", "fine.nii.gz")
    path = write_catalog(tmp_path, [{"name": "ct", "kind": "medical", "directory": "scans", "model": str(tiny_card)}])
    state = flow_module.segment_new_scans(catalog=str(path), return_state=True)
    assert state.is_failed()
    assert "1 scan(s) failed in the pipeline" in (state.message or "")
    assert "RuntimeError: fake bug" in (state.message or "")
    assert (tmp_path / "out" / "ct" / "fine_seg.manifest.json").exists()
    assert fakes.CALLS == {"crash.nii.gz": 1, "fine.nii.gz": 1}
    [row] = [r for r in table(state.state_details.flow_run_id) if r["status"] == "failed"]
    assert row["reason"] == "RuntimeError: fake bug"


def test_a_full_disk_is_retried_fails_the_run_and_leaves_the_scan_for_the_next_run(
        tmp_path: Path, tiny_card: Path) -> None:
    """Storage trouble is the operator's: Prefect retries it, the run ends Failed, the row says
    ``storage: ...``, no ``failed`` manifest, and the next run (space freed) segments the scan."""
    scan_files(tmp_path / "scans", "full.nii.gz", "fine.nii.gz")
    path = write_catalog(tmp_path, [{"name": "ct", "kind": "medical", "directory": "scans", "model": str(tiny_card)}])
    state = flow_module.segment_new_scans(catalog=str(path), return_state=True)
    assert state.is_failed()
    assert "full.nii.gz: storage: No space left on device" in (state.message or "")
    assert fakes.CALLS == {"full.nii.gz": 3, "fine.nii.gz": 1}  # the task's 2 retries applied
    [row] = [r for r in table(state.state_details.flow_run_id) if Path(r["scan"]).name == "full.nii.gz"]
    assert row["status"] == "retry"
    assert row["reason"].startswith("storage: No space left on device (")
    assert not (tmp_path / "out" / "ct" / "full_seg.manifest.json").exists()
    assert "1 left for storage trouble" in artifacts(state.state_details.flow_run_id)["segment-new-scans-reports"].data

    fakes.DISK_FULL["full"] = False  # the operator freed space
    again = flow_module.segment_new_scans(catalog=str(path), return_state=True)
    assert again.is_completed(), again.message
    assert [Path(p).name for p in summary_of(again)["done"]] == ["full.nii.gz"]
    assert fakes.CALLS["full.nii.gz"] == 4


def test_source_parameter_limits_the_run(ct_catalog: Path) -> None:
    state = flow_module.segment_new_scans(catalog=str(ct_catalog), source="ct", return_state=True)
    assert state.is_completed()
    bad = flow_module.segment_new_scans(catalog=str(ct_catalog), source="mri", return_state=True)
    assert bad.is_failed()
    assert "no source named 'mri'" in (bad.message or "")
