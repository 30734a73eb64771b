"""The work store's resume rules, without running a model: fingerprints, records, lock, cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import InputError, OutputBusyError, OutputError, RunInterrupted
from pipeline.io.atomic import sweep_partials
from pipeline.io.store import block_name, work_dir_for, work_store

PRINT = {"input_sha256": "a" * 64, "model_sha256": "b" * 64, "chunks": [32, 32, 16]}


def _interrupted(root: Path, output: Path, fingerprint: dict) -> None:
    with pytest.raises(RunInterrupted, match="1 finished block.*run the same command again to resume"), \
            work_store(root, output, fingerprint) as work:
        work.ledger.mark("image")
        work.ledger.mark(block_name((slice(0, 32), slice(32, 64), slice(0, 16))))
        raise KeyboardInterrupt


def test_same_fingerprint_resumes_with_its_records(tmp_path: Path) -> None:
    output = tmp_path / "mask.nii.gz"
    _interrupted(tmp_path, output, PRINT)
    with work_store(tmp_path, output, dict(PRINT)) as work:
        assert work.resumed
        assert work.ledger.names() == {"image", "block-0-32-0"}
        assert work.blocks_done() == 1
    assert not work_dir_for(tmp_path, output).exists()  # removed after success


@pytest.mark.parametrize("changed", ["input_sha256", "model_sha256", "chunks"])
def test_any_other_fingerprint_starts_over(tmp_path: Path, changed: str, caplog: pytest.LogCaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from pipeline.io import store

    # what other tests' logging setup did to this logger must not hide the warning checked here
    monkeypatch.setattr(store.logger, "disabled", False)
    caplog.set_level(logging.WARNING, logger=store.logger.name)
    output = tmp_path / "mask.nii.gz"
    _interrupted(tmp_path, output, PRINT)
    with work_store(tmp_path, output, {**PRINT, changed: "other"}) as work:
        assert not work.resumed and work.ledger.names() == set()
    assert f"made with a different {changed}" in caplog.text


def test_input_errors_remove_the_store_and_infrastructure_errors_keep_it(tmp_path: Path) -> None:
    output = tmp_path / "mask.nii.gz"
    with pytest.raises(InputError), work_store(tmp_path, output, PRINT):
        raise InputError("bad scan")
    assert not work_dir_for(tmp_path, output).exists()
    with pytest.raises(OutputError, match="No space left on device.*resume"), work_store(tmp_path, output, PRINT):
        raise OSError(28, "No space left on device", str(output))
    assert work_dir_for(tmp_path, output).exists()


def test_a_lost_connection_stays_transient_and_keeps_the_store(tmp_path: Path) -> None:
    """Not turned into an OutputError (a user error, never retried by flows): re-raised as it was."""
    output = tmp_path / "mask.nii.gz"
    with pytest.raises(ConnectionResetError), work_store(tmp_path, output, PRINT):
        raise ConnectionResetError(104, "Connection reset by peer")
    assert work_dir_for(tmp_path, output).exists()


def test_one_store_per_output_path(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert work_dir_for(tmp_path, tmp_path / "a" / "m.nii.gz") != work_dir_for(tmp_path, tmp_path / "b" / "m.nii.gz")


def test_a_second_writer_of_the_same_output_is_refused(tmp_path: Path) -> None:
    output = tmp_path / "mask.nii.gz"
    with work_store(tmp_path, output, PRINT):
        with pytest.raises(OutputBusyError, match=f"{output}: another run is writing it \\(pid {os.getpid()}"):
            with work_store(tmp_path, output, PRINT):
                pass
        with work_store(tmp_path, tmp_path / "other.nii.gz", PRINT):  # another output is independent
            pass


def test_sweep_removes_partials_of_dead_writers_only(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = tmp_path / f".mask.nii.gz.{dead}.partial"
    live = tmp_path / f".mask.nii.gz.{os.getpid()}.partial"
    other = tmp_path / "mask.nii.gz"
    for path in (stale, live, other):
        path.write_bytes(b"x")
    assert sweep_partials(tmp_path) == [stale]
    assert live.exists() and other.exists() and not stale.exists()


@pytest.mark.parametrize("error", [ValueError("Could not interpret 'nonsense' as a byte unit"),
                                   TypeError("a bug"), RuntimeError("a bug")])
def test_errors_a_rerun_would_repeat_remove_the_store(tmp_path: Path, error: Exception) -> None:
    """Configuration errors and bugs used to leave a store "kept for resuming" that could never resume."""
    output = tmp_path / "mask.nii.gz"
    with pytest.raises(type(error)), work_store(tmp_path, output, PRINT) as work:
        work.ledger.mark("image")
        raise error
    assert not work_dir_for(tmp_path, output).exists()


def test_a_lost_worker_keeps_the_store(tmp_path: Path) -> None:
    """The segment driver passes ``keep=lost_worker``: io itself knows no scheduler."""
    from distributed import KilledWorker

    from pipeline.cluster import lost_worker

    output = tmp_path / "mask.nii.gz"
    with pytest.raises(KilledWorker), work_store(tmp_path, output, PRINT, keep=lost_worker) as work:
        work.ledger.mark("image")
        raise KilledWorker("merge-1", "tcp://127.0.0.1:1", 3)
    assert (work_dir_for(tmp_path, output) / "done" / "image").exists()
