"""Viewer-tool tests may skip on a developer's machine, never in CI."""

from __future__ import annotations

import pytest

from tests.report.conftest import require


def test_missing_tool_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require(False, "chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium is not installed"):
        require(False, "chromium")
    require(True, "chromium")  # present: nothing happens
