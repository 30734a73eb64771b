"""The layout's rules, run with the suite: import contracts, ruff, mypy on the typed modules, vulture.

The contracts, the mypy file list and vulture's settings live in ``pyproject.toml`` (``[tool.importlinter]``,
``[tool.mypy]``, ``[tool.vulture]``); DESIGN.md explains the layers. Each check runs the tool as CI would and fails with its report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    tool = BIN / command[0]
    if not tool.exists():
        pytest.fail(f"{command[0]} is not installed: pip install -e '.[test]'")
    return subprocess.run([str(tool), *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)


def test_import_contracts_are_kept() -> None:
    result = _run("lint-imports", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing_in_the_library_and_flows() -> None:
    result = _run("ruff", "check", "--no-cache", "pipeline", "flows")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing_in_the_typed_modules() -> None:
    result = _run("mypy", "--no-incremental")
    assert result.returncode == 0, result.stdout + result.stderr


def test_vulture_finds_no_dead_code() -> None:
    result = _run("vulture")
    assert result.returncode == 0, result.stdout + result.stderr
