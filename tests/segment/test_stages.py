"""Stage timings: every second of the process is start-up or a named stage, a running stage included."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.segment.stages import Stages, describe, process_seconds


def test_a_running_stage_counts_up_to_now_and_not_as_startup() -> None:
    stages = Stages()
    with stages("tile"):
        time.sleep(0.05)
    with stages("report"):
        time.sleep(0.1)
        facts = stages.facts()
    assert list(facts) == ["startup", "tile", "report"]
    assert facts["tile"] >= 0.05 and facts["report"] >= 0.1
    assert sum(facts.values()) == pytest.approx(process_seconds(), abs=0.05)
    assert stages.facts()["report"] == pytest.approx(facts["report"], abs=0.02)  # finished: no longer grows


def test_a_stage_entered_twice_adds_up() -> None:
    stages = Stages()
    for _ in range(2):
        with stages("write"):
            time.sleep(0.03)
    assert stages.facts()["write"] >= 0.06
    assert describe({"startup": 1.04, "write": 0.06}) == "startup 1.0 s, write 0.1 s"


def test_startup_starts_at_python_not_at_the_shell_that_execs_it() -> None:
    """``scripts/demo`` sets up the venv, then ``exec``s the CLI: the process is as old as that shell."""
    code = "from pipeline.segment.stages import process_seconds; print(process_seconds())"
    out = subprocess.run(["bash", "-c", f'sleep 3; exec "{sys.executable}" -c "{code}"'],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    assert float(out.stdout) < 2.5
