"""Faults during a run: a lost worker, a second run on the same output, a full disk."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from pipeline.io.hashing import sha256_file
from tests.reliability.helpers import finished_blocks, segment_args, start, stop, wait_for

pytestmark = pytest.mark.slow


def test_killing_a_worker_mid_run_still_gives_the_identical_mask(setup: dict[str, Path], tmp_path: Path) -> None:
    from pipeline import segment_volume
    from pipeline.cluster import ClusterSettings, dask_client

    out = tmp_path / "mask.nii.gz"
    killed: list[int] = []
    with dask_client(ClusterSettings(workers=2, threads_per_worker=1, torch_threads=1)) as client:
        victim = sorted(client.run(os.getpid).values())[0]

        def kill_when_running() -> None:
            wait_for(lambda: finished_blocks(tmp_path) >= 2, 240, "2 finished blocks")
            killed.append(finished_blocks(tmp_path))
            os.kill(victim, signal.SIGKILL)

        killer = threading.Thread(target=kill_when_running, daemon=True)
        killer.start()
        result = segment_volume(setup["scan"], model=setup["card"], output=out, chunks=(32, 32, 16), client=client)
        killer.join(timeout=10)
        assert victim not in client.run(os.getpid).values()  # the nanny replaced the killed process
    assert killed and killed[0] < result.report["run"]["blocks"]  # it died mid-run, not after
    assert out.read_bytes() == setup["expected"].read_bytes()


def test_two_runs_on_one_output_one_wins_the_other_fails_clearly(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "mask.nii.gz"
    first = start(segment_args(setup["scan"], setup["card"], out), tmp_path / "first.log")
    try:
        wait_for(lambda: finished_blocks(tmp_path) >= 1, 240, "the first run to be under way", first)
        # Freeze the first run (and its workers) while it holds the output: otherwise it may finish before
        # the second process has even imported torch, and the second would (rightly) find a finished mask.
        os.killpg(first.pid, signal.SIGSTOP)
        try:
            second = subprocess.run(segment_args(setup["scan"], setup["card"], out), capture_output=True,
                                    text=True, timeout=120)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        assert first.wait(timeout=300) == 0
    finally:
        if first.poll() is None:
            stop(first)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        line for line in second.stderr.strip().splitlines() if line.startswith("error:")]
    assert "another run is writing it" in second.stderr and str(out) in second.stderr
    assert out.read_bytes() == setup["expected"].read_bytes()


def test_disk_full_while_writing_keeps_the_old_output_and_the_work_store(
        setup: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client1) -> None:
    """ENOSPC while the mask is written: a clear OutputError, the previous mask untouched, every block
    kept, and the next run (space freed) only writes."""
    import pipeline.segment.volume as segment
    from pipeline.errors import OutputError

    out = tmp_path / "mask.nii.gz"
    out.write_bytes(b"previous output")
    scan_hash = sha256_file(setup["scan"])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out))

    monkeypatch.setattr(segment, "write_labels", full)
    with pytest.raises(OutputError, match="No space left on device.*run the same command again to resume"):
        segment.segment_volume(setup["scan"], model=setup["card"], output=out, chunks=(32, 32, 16),
                               client=client1, overwrite=True)
    assert out.read_bytes() == b"previous output"
    assert sha256_file(setup["scan"]) == scan_hash
    kept = finished_blocks(tmp_path)
    assert kept > 0
    monkeypatch.undo()
    result = segment.segment_volume(setup["scan"], model=setup["card"], output=out, chunks=(32, 32, 16),
                                    client=client1, overwrite=True)
    assert result.report["run"]["blocks_resumed"] == result.report["run"]["blocks"] == kept
    assert out.read_bytes() == setup["expected"].read_bytes()


def test_a_really_full_file_system_fails_cleanly(setup: dict[str, Path], tmp_path: Path) -> None:
    """Real tmpfs mounts (need root, as in CI): one error line, exit 1, the input untouched, no mask.

    With the work store on a 256 KiB tmpfs the plan is refused before anything is written (the estimate
    says it cannot fit); with the work store elsewhere and only the mask on an 8 KiB tmpfs, the write
    itself runs out of space."""
    small, tiny = tmp_path / "small", tmp_path / "tiny"
    for mount, size in ((small, "256k"), (tiny, "8k")):
        mount.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True).returncode != 0:
            pytest.skip("mounting a tmpfs needs root")
    try:
        scan_hash = sha256_file(setup["scan"])
        for out, extra, message in (
                (small / "mask.nii.gz", (), "free under"),
                (tiny / "mask.nii.gz", ("--work-dir", str(tmp_path / "work")), "No space left on device")):
            done = subprocess.run(segment_args(setup["scan"], setup["card"], out, *extra), capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 1, done.stderr
            errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and message in errors[0], done.stderr
            assert "Traceback" not in done.stderr
            assert not out.exists() and not list(out.parent.glob(".*.partial"))
        assert sha256_file(setup["scan"]) == scan_hash
    finally:
        for mount in (small, tiny):
            subprocess.run(["umount", str(mount)], check=False)
