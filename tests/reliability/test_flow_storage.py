"""A scheduled run whose output disk is really full (a tmpfs filled to the last byte): the scan is retried by
Prefect, left for the next run (no ``failed`` manifest), the run ends Failed, and once space is freed the next
run segments it, resuming the blocks the failed run kept."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows import segment_new_scans as flow_module
from pipeline.io.hashing import sha256_file
from tests.factories import make_card
from tests.flows.conftest import write_catalog
from tests.flows.test_flow import table
from tests.reliability.helpers import finished_blocks, many_block_scan

#: Free bytes left: room for the output's lock file (one page), not for the mask.
HEADROOM = 8192
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/out``: a 1 MiB tmpfs with a filler file taking all but :data:`HEADROOM` (mounting needs root)."""
    mount = tmp_path / "out"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        with open(mount / "filler", "wb", buffering=0) as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 4096)
        os.truncate(mount / "filler", (mount / "filler").stat().st_size - HEADROOM)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_output_disk_leaves_the_scan_for_the_next_run(
        tmp_path: Path, full_disk: Path, client1: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    @contextlib.contextmanager
    def shared(settings: Any) -> Iterator[Any]:
        yield client1

    monkeypatch.setattr(flow_module, "dask_client", shared)
    monkeypatch.setattr(flow_module, "segment_scan", flow_module.segment_scan.with_options(retry_delay_seconds=0))
    (tmp_path / "scans").mkdir()
    scan = many_block_scan(tmp_path / "scans" / "a.nii.gz", shape=(64, 64, 32))
    scan_hash = sha256_file(scan)
    make_card(tmp_path, name="tiny", roi_size=(32, 32, 16))
    catalog = write_catalog(tmp_path, [{"name": "ct", "kind": "medical", "directory": "scans", "glob": "*.nii.gz",
                                        "model": "tiny.yaml"}])
    with pytest.raises(OSError) as full:
        (full_disk / "probe").write_bytes(b"x" * (HEADROOM + 4096))
    assert full.value.errno == errno.ENOSPC
    (full_disk / "probe").unlink()

    state = flow_module.segment_new_scans(catalog=str(catalog), return_state=True)
    assert state.is_failed(), state.message
    assert "storage: No space left on device" in (state.message or "")
    [row] = table(state.state_details.flow_run_id)
    assert row["status"] == "retry"
    assert row["reason"].startswith("storage: No space left on device (")
    assert not list(full_disk.glob("ct/*.manifest.json")) and not list(full_disk.glob("ct/*_seg.nii.gz"))
    assert not list(full_disk.glob("ct/.*.partial"))
    kept = finished_blocks(tmp_path / "work" / "ct")
    assert kept > 0  # the blocks are kept for the next run
    assert sha256_file(scan) == scan_hash

    (full_disk / "filler").unlink()  # the operator frees space
    again = flow_module.segment_new_scans(catalog=str(catalog), return_state=True)
    assert again.is_completed(), again.message
    assert [Path(p).name for p in again.result()["done"]] == ["a.nii.gz"]
    report = json.loads((full_disk / "ct" / "a_seg.report.json").read_text())
    assert report["run"]["blocks_resumed"] == report["run"]["blocks"] == kept
    assert json.loads((full_disk / "ct" / "a_seg.manifest.json").read_text())["status"] == "done"
