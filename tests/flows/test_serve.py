"""``python -m flows.serve`` refuses what it cannot schedule with one line naming the catalog key."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.serve import main, schedule_for
from pipeline.config.catalog import load_catalog
from pipeline.errors import CatalogError
from tests.flows.conftest import write_catalog

SOURCE = {"name": "ct", "kind": "medical", "directory": "scans", "model": "tiny"}


def test_schedule_comes_from_the_catalog(tmp_path: Path) -> None:
    catalog = load_catalog(write_catalog(tmp_path, [SOURCE], schedule={"cron": "15 1 * * 1-5",
                                                                       "timezone": "America/New_York"}))
    schedule = schedule_for(catalog)
    assert (schedule.cron, schedule.timezone) == ("15 1 * * 1-5", "America/New_York")


def test_cron_prefect_rejects_names_the_key(tmp_path: Path) -> None:
    catalog = load_catalog(write_catalog(tmp_path, [SOURCE], schedule={"cron": "61 2 * * *"}))
    with pytest.raises(CatalogError, match=r"catalog\.yaml: schedule\.cron: Invalid cron string"):
        schedule_for(catalog)


def test_missing_schedule_or_bad_catalog_exits_with_one_line(tmp_path: Path) -> None:
    path = write_catalog(tmp_path, [SOURCE], schedule=None)
    with pytest.raises(SystemExit, match=r"^error: .*catalog\.yaml: schedule: required to serve a deployment"):
        main(["--catalog", str(path)])
    with pytest.raises(SystemExit, match=r"^error: .*nowhere\.yaml: data catalog not found$"):
        main(["--catalog", str(tmp_path / "nowhere.yaml")])
