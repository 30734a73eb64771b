"""Shared fixtures: real sample data, seeded untrained cards, and Dask clusters started once."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.factories import make_card

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(autouse=True)
def _log_levels_restored() -> Iterator[None]:
    """The CLI run in process sets the root and ``pipeline`` log levels (``-q``: errors only); put them back, so a
    later test's caplog sees warnings whatever ran before it (seen: a work-store warning lost after a -q run)."""
    levels = {name: logging.getLogger(name).level for name in ("", "pipeline")}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def cards_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cards")


@pytest.fixture(scope="session")
def tiny_card(cards_dir: Path) -> Path:
    """Untrained seeded 3D UNet, roi (32, 32, 16): small enough for CPU tests."""
    return make_card(cards_dir, name="tiny", roi_size=(32, 32, 16))


def _client(workers: int) -> Iterator[Any]:
    from pipeline.cluster import ClusterSettings, dask_client

    with dask_client(ClusterSettings(workers=workers, threads_per_worker=1)) as client:
        yield client


@pytest.fixture(scope="session")
def client2() -> Iterator[Any]:
    """A 2-worker LocalCluster shared by the session."""
    yield from _client(2)


@pytest.fixture(scope="session")
def client1() -> Iterator[Any]:
    yield from _client(1)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server (SQLite) for every in-process flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
