"""``python -m flows.serve``: serve the ``segment-new-scans/nightly`` deployment on the catalog's schedule.

The process stays in the foreground, polls the Prefect API (``PREFECT_API_URL``) for scheduled
or triggered runs and executes each in a subprocess. Stopping it removes nothing: the
deployment and its schedule stay (``pause_on_shutdown=False``), so a restart just resumes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from pipeline.config.catalog import Catalog, load_catalog
from pipeline.errors import CatalogError, PipelineError

logger = logging.getLogger(__name__)


def schedule_for(catalog: Catalog) -> Any:
    """The catalog's cron schedule as a Prefect ``Cron``, checked by Prefect's own cron parser.

    Raises
    ------
    CatalogError
        No ``schedule`` in the catalog, or Prefect rejects the cron expression.
    """
    from prefect.schedules import Cron

    if catalog.schedule is None:
        raise CatalogError(f"{catalog.file}: schedule: required to serve a deployment (cron + timezone)")
    try:
        return Cron(catalog.schedule.cron, timezone=catalog.schedule.timezone)
    except ValueError as e:
        raise CatalogError(f"{catalog.file}: schedule.cron: {e}") from e


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default="data_catalog.yaml", help="data catalog (default: %(default)s)")
    parser.add_argument("--name", default="nightly", help="deployment name (default: %(default)s)")
    args = parser.parse_args(argv)
    # Before Prefect is imported: flow runs (subprocesses) inherit it, so library logs reach the UI.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API poll otherwise
    try:
        catalog = load_catalog(args.catalog)
        schedule = schedule_for(catalog)
    except PipelineError as e:
        sys.exit(f"error: {e}")
    from prefect.types.entrypoint import EntrypointType

    from flows.segment_new_scans import segment_new_scans

    logger.info("serving segment-new-scans/%s on %s over %s", args.name, schedule, catalog.file.resolve())
    segment_new_scans.serve(name=args.name, schedules=[schedule], parameters={"catalog": str(catalog.file.resolve())},
                            tags=["volseg"], pause_on_shutdown=False, entrypoint_type=EntrypointType.MODULE_PATH)


if __name__ == "__main__":
    main()
