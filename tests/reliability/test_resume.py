"""Chunk-level resume: a killed or interrupted run, run again, finishes only what was left, and the
mask is byte-identical to an uninterrupted run's. A changed input, model or parameter starts over."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from pipeline.io.hashing import sha256_file
from tests.reliability.helpers import finished_blocks, kill_group, segment_args, start, stop, wait_for

pytestmark = pytest.mark.slow


def _report(mask: Path) -> dict:
    return json.loads(mask.with_name(mask.name.replace(".nii.gz", ".report.json")).read_text())


def _interrupt(setup: dict[str, Path], out: Path, sig: int, *, after_blocks: int = 3) -> subprocess.CompletedProcess:
    """Start a run into ``out``, signal its whole process group once ``after_blocks`` blocks are done."""
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.parent / "interrupted.log"
    process = start(segment_args(setup["scan"], setup["card"], out), log)
    try:
        wait_for(lambda: finished_blocks(out.parent) >= after_blocks, 240, f"{after_blocks} finished blocks", process)
        kill_group(process, sig)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            stop(process)
    return subprocess.CompletedProcess(process.args, process.returncode, log.read_text(errors="replace"), "")


def test_sigkill_then_rerun_resumes_and_is_byte_identical(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "mask.nii.gz"
    scan_hash = sha256_file(setup["scan"])
    killed = _interrupt(setup, out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()
    kept = finished_blocks(tmp_path)
    assert kept >= 3

    again = subprocess.run(segment_args(setup["scan"], setup["card"], out), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    run = _report(out)["run"]
    assert run["blocks_resumed"] >= kept and run["blocks_resumed"] < run["blocks"]
    assert out.read_bytes() == setup["expected"].read_bytes()
    assert sha256_file(setup["scan"]) == scan_hash
    assert not list(tmp_path.glob(".*"))  # work store and any partial file gone after success


def test_ctrl_c_says_how_to_resume_and_leaves_a_resumable_store(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "mask.nii.gz"
    interrupted = _interrupt(setup, out, signal.SIGINT)  # to the process group, as a terminal's Ctrl-C does
    assert interrupted.returncode == 130, interrupted.stdout
    errors = [line for line in interrupted.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "run the same command again to resume" in errors[0], interrupted.stdout
    assert "Traceback" not in interrupted.stdout
    assert not out.exists() and finished_blocks(tmp_path) >= 3

    again = subprocess.run(segment_args(setup["scan"], setup["card"], out), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert _report(out)["run"]["blocks_resumed"] >= 3
    assert out.read_bytes() == setup["expected"].read_bytes()


def test_a_changed_model_discards_the_interrupted_store(setup: dict[str, Path], tmp_path: Path) -> None:
    from tests.factories import make_card

    out = tmp_path / "mask.nii.gz"
    _interrupt(setup, out, signal.SIGKILL)
    assert finished_blocks(tmp_path) >= 3
    other = make_card(tmp_path, name="tiny", roi_size=(32, 32, 16), seed=1)  # same name and shape, other weights
    again = subprocess.run(segment_args(setup["scan"], other, out), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "discarding work store" in again.stderr
    assert _report(out)["run"]["blocks_resumed"] == 0
