"""Discovery and idempotency rules, manifests written last and atomically, and the per-output lock."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.batch.discovery import discover
from pipeline.batch.jobs import ScanOutcome, ScanStatus
from pipeline.batch.manifest import FileRecord, read_manifest, write_manifest
from pipeline.batch.scan_run import is_transient, run_scan
from pipeline.batch.summary import table_rows
from pipeline.config.catalog import load_catalog
from pipeline.errors import InputError, StorageError
from pipeline.io.lock import output_lock
from tests.factories import make_card
from tests.flows import fakes
from tests.flows.conftest import scan_files, write_catalog

pytestmark = pytest.mark.usefixtures("fake_segmenter")


def run_all(catalog_path: Path) -> dict[str, ScanStatus]:
    """Discover and run every pending scan, as the flow does, without Prefect."""
    outcomes = {}
    for job in discover(load_catalog(catalog_path)).pending:
        try:
            outcomes[job.scan.name] = run_scan(job).status
        except InputError:
            outcomes[job.scan.name] = ScanStatus.FAILED
    return outcomes


def test_new_scans_are_found_with_their_references(ct_catalog: Path, tiny_card: Path) -> None:
    plan = discover(load_catalog(ct_catalog))
    jobs = {job.scan.name: job for job in plan.pending}
    assert sorted(jobs) == ["a.nii.gz", "b.nii.gz", "broken.nii.gz"]  # refs/ is not a source directory
    a = jobs["a.nii.gz"]
    assert a.reference == ct_catalog.parent / "refs" / "a_ref.nii.gz"
    assert jobs["b.nii.gz"].reference is None
    assert a.output == ct_catalog.parent / "out" / "ct" / "a_seg.nii.gz"
    assert a.manifest_path.name == "a_seg.manifest.json"
    assert a.lock_path.name == ".a_seg.lock"
    assert a.model == str(tiny_card)
    assert a.model_name == "tiny"
    assert len(a.model_sha256) == 64
    assert plan.up_to_date == 0
    assert not plan.failed_before


def test_a_second_run_processes_nothing(ct_catalog: Path) -> None:
    assert run_all(ct_catalog) == {"a.nii.gz": "done", "b.nii.gz": "done", "broken.nii.gz": "failed"}
    plan = discover(load_catalog(ct_catalog))
    assert plan.pending == []
    assert plan.up_to_date == 2
    [known] = plan.failed_before
    assert known.status is ScanStatus.FAILED_BEFORE
    assert "not a readable NIfTI file (fake)" in (known.reason or "")
    assert "[not retried: unchanged since" in (known.reason or "")
    assert fakes.CALLS == {"a.nii.gz": 1, "b.nii.gz": 1, "broken.nii.gz": 1}


def test_done_manifest_records_input_model_code_and_outputs(ct_catalog: Path) -> None:
    run_all(ct_catalog)
    out = ct_catalog.parent / "out" / "ct"
    manifest = read_manifest(out / "a_seg.manifest.json")
    assert manifest is not None
    assert manifest.status == "done"
    assert manifest.reason is None
    scan = ct_catalog.parent / "scans" / "a.nii.gz"
    assert manifest.input == FileRecord.of(scan)
    assert manifest.model == "tiny"
    assert manifest.code_version
    assert manifest.finished_at.tzinfo is not None
    assert manifest.outputs == {"mask": str(out / "a_seg.nii.gz"), "report_json": str(out / "a_seg.report.json"),
                                "report_csv": str(out / "a_seg.report.csv")}
    failed = read_manifest(out / "broken_seg.manifest.json")
    assert failed is not None
    assert failed.status == "failed"
    assert failed.outputs == {}
    assert failed.reason is not None
    assert failed.reason.endswith("not a readable NIfTI file (fake)")
    assert fakes.MANIFEST_SEEN == {"a.nii.gz": False, "b.nii.gz": False, "broken.nii.gz": False}


def test_changed_input_is_segmented_again(ct_catalog: Path) -> None:
    run_all(ct_catalog)
    (ct_catalog.parent / "scans" / "b.nii.gz").write_bytes(b"new content")
    assert [job.scan.name for job in discover(load_catalog(ct_catalog)).pending] == ["b.nii.gz"]
    assert run_all(ct_catalog) == {"b.nii.gz": "done"}


def test_same_size_and_mtime_skips_rehashing_but_new_bytes_do_not(tmp_path: Path) -> None:
    [path] = scan_files(tmp_path, "s.nii.gz")
    before = FileRecord.of(path)
    stale = before.model_copy(update={"sha256": "0" * 64})
    assert FileRecord.of(path, stale).sha256 == "0" * 64  # unchanged stat: the recorded hash is trusted
    path.write_bytes(b"other bytes")
    os.utime(path, ns=(before.mtime_ns + 10**9, before.mtime_ns + 10**9))
    assert FileRecord.of(path, before).sha256 != before.sha256


def test_new_model_version_is_segmented_again(ct_catalog: Path, tmp_path: Path) -> None:
    run_all(ct_catalog)
    retrained = make_card(tmp_path, name="tiny", roi_size=(32, 32, 16), seed=1)  # same name, new weights
    text = ct_catalog.read_text()
    ct_catalog.write_text(text.replace(str(load_catalog(ct_catalog).sources[0].model), str(retrained)))
    plan = discover(load_catalog(ct_catalog))
    assert sorted(job.scan.name for job in plan.pending) == ["a.nii.gz", "b.nii.gz", "broken.nii.gz"]
    assert run_all(ct_catalog) == {"a.nii.gz": "done", "b.nii.gz": "done", "broken.nii.gz": "failed"}
    assert fakes.CALLS["a.nii.gz"] == 2


def test_missing_output_or_corrupt_manifest_means_not_done(ct_catalog: Path) -> None:
    run_all(ct_catalog)
    out = ct_catalog.parent / "out" / "ct"
    (out / "a_seg.report.json").unlink()
    (out / "b_seg.manifest.json").write_text('{"status": "do')
    assert sorted(job.scan.name for job in discover(load_catalog(ct_catalog)).pending) == ["a.nii.gz", "b.nii.gz"]


def test_a_known_failure_is_retried_when_its_reference_changes(ct_catalog: Path) -> None:
    (ct_catalog.parent / "refs" / "broken_ref.nii.gz").write_bytes(b"ref")
    run_all(ct_catalog)
    assert discover(load_catalog(ct_catalog)).pending == []
    (ct_catalog.parent / "refs" / "broken_ref.nii.gz").write_bytes(b"fixed ref")
    assert [job.scan.name for job in discover(load_catalog(ct_catalog)).pending] == ["broken.nii.gz"]


def test_references_in_the_scan_directory_are_not_scans(tmp_path: Path, tiny_card: Path) -> None:
    scan_files(tmp_path / "scans", "a.nii.gz", "a_ref.nii.gz", "notes.txt", ".hidden.nii.gz")
    path = write_catalog(tmp_path, [{"name": "ct", "kind": "medical", "directory": "scans", "model": str(tiny_card),
                                     "reference": {"name": "{stem}_ref.nii.gz"}}])
    [job] = discover(load_catalog(path)).pending
    assert job.scan.name == "a.nii.gz"
    assert job.reference == tmp_path / "scans" / "a_ref.nii.gz"


def test_unexpected_failure_leaves_no_manifest_and_is_retried(tmp_path: Path, tiny_card: Path) -> None:
    scan_files(tmp_path / "scans", "crash.nii.gz")
    path = write_catalog(tmp_path, [{"name": "ct", "kind": "medical", "directory": "scans", "model": str(tiny_card)}])
    [job] = discover(load_catalog(path)).pending
    with pytest.raises(RuntimeError, match="fake bug"):
        run_scan(job)
    assert not job.manifest_path.exists()
    assert not job.lock_path.exists()
    assert len(discover(load_catalog(path)).pending) == 1


def test_storage_failure_is_the_operators_not_the_scans(tmp_path: Path, tiny_card: Path) -> None:
    """A full disk (StorageError, or a raw ENOSPC/EIO) leaves no ``failed`` manifest: the next run retries it."""
    scan_files(tmp_path / "scans", "full.nii.gz")
    path = write_catalog(tmp_path, [{"name": "ct", "kind": "medical", "directory": "scans", "model": str(tiny_card)}])
    [job] = discover(load_catalog(path)).pending
    with pytest.raises(StorageError) as caught:
        run_scan(job)
    assert not job.manifest_path.exists()
    assert len(discover(load_catalog(path)).pending) == 1
    for error in (caught.value, OSError(errno.EIO, os.strerror(errno.EIO), "/out/x.nii.gz")):
        outcome = ScanOutcome.failed(job, error)
        assert (outcome.status, outcome.user_error) == (ScanStatus.RETRY, False)
        assert outcome.reason is not None and outcome.reason.startswith(f"storage: {os.strerror(error.errno)} (")
    assert ScanOutcome.failed(job, InputError("bad")).status is ScanStatus.FAILED


def test_manifest_write_is_atomic(ct_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_all(ct_catalog)
    path = ct_catalog.parent / "out" / "ct" / "a_seg.manifest.json"
    before = path.read_bytes()
    manifest = read_manifest(path)
    assert manifest is not None

    def torn_write(self: Path, text: str, **kwargs: object) -> int:
        with open(self, "w", encoding="utf-8") as fh:
            fh.write(text[: len(text) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(Path, "write_text", torn_write)
    with pytest.raises(OSError, match="disk full"):
        write_manifest(path, manifest.model_copy(update={"reason": "changed"}))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir() if "partial" in p.name) == []
    assert json.loads(before)["status"] == "done"


def test_two_threads_on_one_scan_segment_it_once(tmp_path: Path, tiny_card: Path) -> None:
    scan_files(tmp_path / "scans", "slow.nii.gz")
    path = write_catalog(tmp_path, [{"name": "ct", "kind": "medical", "directory": "scans", "model": str(tiny_card)}])
    jobs = [discover(load_catalog(path)).pending[0] for _ in range(2)]  # two runs discovered it
    statuses: list[ScanStatus] = []
    threads = [threading.Thread(target=lambda j=job: statuses.append(run_scan(j).status)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == ["busy", "done"]
    assert fakes.CALLS["slow.nii.gz"] == 1
    assert run_scan(jobs[1]).status is ScanStatus.UP_TO_DATE  # a late run re-checks under the lock
    assert fakes.CALLS["slow.nii.gz"] == 1


HOLD = """
import sys, time
from pathlib import Path
from pipeline.io.lock import output_lock
with output_lock(Path(sys.argv[1])) as held:
    print("held" if held else "busy", flush=True)
    time.sleep(60)
"""


def test_lock_excludes_another_process_and_is_freed_when_it_dies(tmp_path: Path) -> None:
    lock = tmp_path / ".x_seg.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert f"pid {holder.pid} on " in lock.read_text()
        with output_lock(lock) as held:
            assert not held
        rival = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(60)", ""), str(lock)],
                               capture_output=True, text=True, timeout=60, check=True)
        assert rival.stdout.strip() == "busy"
        holder.send_signal(signal.SIGKILL)  # dies without cleaning up: its lock file stays behind
        holder.wait(timeout=10)
        assert lock.exists()
        with output_lock(lock) as held:  # but the kernel released the lock: not stale
            assert held
        assert not lock.exists()
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_lock_survives_the_holder_removing_its_file(tmp_path: Path) -> None:
    """Holders unlink the file on release; a waiter that opened the old inode must not also get in."""
    lock = tmp_path / ".x.lock"
    results: list[bool] = []
    inside: list[int] = []
    overlaps: list[int] = []
    barrier = threading.Barrier(8)

    def contend() -> None:
        barrier.wait()
        for _ in range(50):
            with output_lock(lock) as held:
                results.append(held)
                if held:
                    inside.append(1)
                    overlaps.append(len(inside))
                    time.sleep(0.0005)
                    inside.pop()

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 400
    assert any(results)
    assert max(overlaps) == 1


def test_only_infrastructure_errors_are_transient() -> None:
    from pipeline.errors import OutputError

    assert is_transient(ConnectionResetError("peer"))
    assert is_transient(TimeoutError())
    assert is_transient(OSError(5, "EIO"))
    assert not is_transient(InputError("bad scan"))
    assert not is_transient(OutputError("outside root"))
    assert is_transient(StorageError("/out/a.nii.gz: No space left on device", errno.ENOSPC))
    assert not is_transient(RuntimeError("bug"))
    assert not is_transient(None)


def test_table_rows_have_one_row_per_scan_and_label(ct_catalog: Path) -> None:
    jobs = {job.scan.name: job for job in discover(load_catalog(ct_catalog)).pending}
    outcome = run_scan(jobs["a.nii.gz"])
    rows = table_rows([outcome])
    assert [(r["label"], r["dice"], r["volume_ml"]) for r in rows] == [("class0", 0.5, 0.0), ("class1", 0.6, 1.5)]
    assert {r["status"] for r in rows} == {"done"}
    assert rows[0]["output"].endswith("a_seg.nii.gz")


def test_geo_jobs_pass_bands_and_write_vectors_inside_the_output_root(tmp_path: Path) -> None:
    card = make_card(tmp_path, name="tiny-geo", spatial_dims=2, n_labels=2, roi_size=(64, 64), bands=[1])
    scan_files(tmp_path / "tiles", "t1.tif", "t1_ref.tif")
    path = write_catalog(tmp_path, [{"name": "geo", "kind": "geo", "directory": "tiles", "model": str(card),
                                     "bands": [1], "vectors": "gpkg", "reference": {"name": "{stem}_ref.tif"}}])
    [job] = discover(load_catalog(path)).pending
    kwargs = job.segment_kwargs(client=None)
    out = tmp_path / "out" / "geo"
    assert kwargs["output"] == out / "t1_seg.tif"
    assert kwargs["vectors"] == out / "t1_seg.gpkg"
    assert kwargs["bands"] == (1,)
    assert kwargs["reference"] == tmp_path / "tiles" / "t1_ref.tif"
    assert kwargs["overwrite"] is True
    assert kwargs["work_dir"] == tmp_path / "work" / "geo"


def test_a_bundle_source_with_trust_passes_it_to_the_segmenter(tmp_path: Path) -> None:
    """``trust: true`` reaches the segment call; a bundle directory's identity is its weights' sha256."""
    from pipeline.io.hashing import sha256_file

    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "inference.json").write_text("{}")
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(b"weights")
    scan_files(tmp_path / "scans", "a.nii.gz")
    source = {"name": "ct", "kind": "medical", "directory": "scans", "model": "./bundle"}
    for trust in (True, False):
        path = write_catalog(tmp_path, [{**source, "trust": trust}])
        [job] = discover(load_catalog(path)).pending
        assert job.model == str(bundle.resolve())
        assert job.model_sha256 == sha256_file(bundle / "models" / "model.pt")
        assert job.segment_kwargs(None).get("trust", False) is trust
