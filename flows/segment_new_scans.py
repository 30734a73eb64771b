"""``segment-new-scans``: segment every catalog scan that has no finished output for its current model.

One Prefect task per scan (never per tile: Dask parallelises the tiles inside it), all sharing
one Dask cluster per flow run. The rules for what runs, the manifests and the locks live in
:mod:`pipeline.batch` (discovery, manifest, scan_run); this module only orchestrates and publishes artifacts.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import State, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.batch.discovery import discover
from pipeline.batch.jobs import Plan, ScanJob, ScanOutcome, ScanStatus
from pipeline.batch.scan_run import is_transient, run_scan
from pipeline.batch.summary import markdown_summary, table_rows
from pipeline.cluster import dask_client
from pipeline.config.catalog import load_catalog

#: Scans in flight at once; each one's tiles already spread over the whole Dask cluster.
SCANS_AT_ONCE = 2
ARTIFACT_KEY = "segment-new-scans"
#: Outcomes that leave a scan without a mask in this run.
UNFINISHED = (ScanStatus.FAILED, ScanStatus.RETRY)


def _error(state: State[Any]) -> BaseException | None:
    """The exception a failed task state carries (None if it carries none)."""
    if isinstance(state.data, BaseException):
        return state.data
    result = state.result(raise_on_failure=False)
    return result if isinstance(result, BaseException) else None


def retry_if_transient(task: Any, task_run: Any, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry infrastructure errors only, never a bad input."""
    return is_transient(_error(state))


@task(retries=2, retry_delay_seconds=[10, 60], retry_jitter_factor=0.2, retry_condition_fn=retry_if_transient,
      cache_policy=NO_CACHE, task_run_name="segment {job.name}")
def segment_scan(job: ScanJob, client: Any) -> ScanOutcome:
    """Segment one scan with the same library call as the CLI; the Dask ``client`` is the run's shared one."""
    return run_scan(job, client=client)


def _outcome(job: ScanJob, future: PrefectFuture[ScanOutcome]) -> ScanOutcome:
    future.wait()
    if future.state.is_completed():
        return future.result()
    outcome = ScanOutcome.failed(job, _error(future.state))
    get_run_logger().warning("%s %s: %s", job.scan, outcome.status, outcome.reason)
    return outcome


def _configure_logging() -> None:
    """Library progress lines at INFO (serve.py sends them to the run's logs); Dask's chatter at WARNING."""
    logging.getLogger("pipeline").setLevel(logging.INFO)
    logging.getLogger("distributed").setLevel(logging.WARNING)


def publish(outcomes: list[ScanOutcome], plan: Plan) -> dict[str, Any]:
    """Table + markdown artifacts for the run; returns the run's summary."""
    create_table_artifact(table_rows(outcomes), key=ARTIFACT_KEY,
                          description="Each scan of this run: status, Dice/IoU and volume per label, output.")
    create_markdown_artifact(markdown_summary(outcomes, plan), key=f"{ARTIFACT_KEY}-reports",
                             description="Links to the report files of this run.")
    summary: dict[str, Any] = {str(s): [o.scan for o in outcomes if o.status is s] for s in ScanStatus}
    summary["up_to_date_before"] = plan.up_to_date
    summary["failure_reasons"] = {o.scan: o.reason for o in outcomes if o.status in UNFINISHED}
    return summary


_RUNNER: Any = ThreadPoolTaskRunner(max_workers=SCANS_AT_ONCE)  # Any: Prefect's generics reject its own runner


@flow(name="segment-new-scans", task_runner=_RUNNER)
def segment_new_scans(catalog: str = "data_catalog.yaml", source: str | None = None) -> dict[str, Any] | State[Any]:
    """Segment the catalog's new or changed scans (or those of one ``source``); idempotent.

    Final state: **Completed** when every scan was segmented, skipped, or rejected for its input
    (a ``PipelineError``: listed with its reason in the artifacts and not retried until the file,
    model or code changes; a bad file is a data problem, not a pipeline failure). **Failed** when
    any scan failed for another reason after its retries (infrastructure, a bug, or storage trouble
    such as a full disk: ``retry`` in the artifacts, no manifest, so the next run segments it): that
    needs an operator. A catalog error fails the run before any scan starts.
    """
    _configure_logging()
    settings = load_catalog(catalog)
    plan = discover(settings, source=source)
    get_run_logger().info("%s: %s", settings.file, plan.describe())
    outcomes = list(plan.failed_before)
    if plan.pending:
        with dask_client(settings.cluster.settings()) as client:
            futures = [segment_scan.submit(job, client) for job in plan.pending]
            outcomes += [_outcome(job, future) for job, future in zip(plan.pending, futures, strict=True)]
    summary = publish(outcomes, plan)
    broken = [o for o in outcomes if o.status in UNFINISHED and not o.user_error]
    if broken:
        return Failed(message=f"{len(broken)} scan(s) failed in the pipeline: {broken[0].scan}: {broken[0].reason}",
                      data=summary)
    return summary
