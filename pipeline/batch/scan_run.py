"""Running one scan of a scheduled run: segment it under its output lock, then write its manifest.

Two runs at once are safe: :func:`run_scan` holds a per-output ``fcntl.flock`` lock while it
writes, and a run that finds the lock taken skips the scan (``busy``) instead of waiting.
"""

from __future__ import annotations

import datetime
import logging
import shutil
import time
from typing import Any, Literal

from pipeline.batch.discovery import classify, reference_hashes
from pipeline.batch.jobs import ScanJob, ScanOutcome, ScanStatus
from pipeline.batch.manifest import Manifest, current_code_version, read_manifest, write_manifest
from pipeline.config.segmenters import SEGMENTERS
from pipeline.errors import PipelineError, RemoteError, StorageError
from pipeline.io.lock import lock_holder, output_lock

logger = logging.getLogger(__name__)


def _manifest(job: ScanJob, status: Literal["done", "failed"], **fields: Any) -> Manifest:
    return Manifest(status=status, source=job.source, input=job.input, model=job.model_name,
                    model_sha256=job.model_sha256, code_version=current_code_version(),
                    finished_at=datetime.datetime.now(datetime.UTC), **fields)


def _done_manifest(job: ScanJob, result: Any) -> Manifest:
    """Record what was actually used: the report's input and weights hashes when it has them."""
    report = result.report
    record = job.input if job.pacs else job.input.model_copy(  # a PACS series is known by its instances' UIDs
        update={"sha256": report.get("input", {}).get("sha256") or job.input.sha256})
    outputs = {"mask": result.mask, "report_json": result.report_json, "report_csv": result.report_csv,
               "probabilities": result.probabilities, "vectors": result.vectors,
               "dicom_seg": report.get("dicom_seg", {}).get("path")}
    manifest = _manifest(job, "done", outputs={k: str(v) for k, v in outputs.items() if v is not None})
    return manifest.model_copy(update={"input": record,
                                       "model_sha256": report.get("model_sha256") or job.model_sha256})


def run_scan(job: ScanJob, *, client: Any = None) -> ScanOutcome:
    """Segment one scan under its output lock, then write its manifest (last).

    Returns a ``busy`` outcome when another run holds the lock, ``up-to-date`` when another run
    finished it meanwhile. A :class:`PipelineError` from the segment function is recorded in a
    ``failed`` manifest and re-raised; any other exception (a :class:`StorageError` included: a
    full disk is not the scan's fault) leaves no manifest and is re-raised, so the next run retries it.
    """
    segment = SEGMENTERS[job.kind].load()
    job.output.parent.mkdir(parents=True, exist_ok=True)
    job.work_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(job.lock_path) as held:
        if not held:
            holder = lock_holder(job.lock_path)
            return ScanOutcome.skipped(job, ScanStatus.BUSY, f"another run is writing it ({holder})")
        if classify(job, read_manifest(job.manifest_path)) is ScanStatus.UP_TO_DATE:
            return ScanOutcome.skipped(job, ScanStatus.UP_TO_DATE, "finished by another run")
        job.manifest_path.unlink(missing_ok=True)
        started = time.perf_counter()
        logger.info("segmenting %s with %s -> %s", job.scan, job.model_name, job.output)
        try:
            result = _segment(job, segment, client)
        except (StorageError, RemoteError):
            raise
        except PipelineError as e:
            write_manifest(job.manifest_path, _manifest(job, "failed", reason=ScanOutcome.failed(job, e).reason,
                                                        references=reference_hashes(job)))
            raise
        write_manifest(job.manifest_path, _done_manifest(job, result))
    return ScanOutcome.done(job, result, time.perf_counter() - started)


def _segment(job: ScanJob, segment: Any, client: Any) -> Any:
    """The kind's segment call; a PACS series is retrieved first, its SEG stored after, and the retrieved copy
    removed whatever happens (the next run retrieves again)."""
    if job.pacs is None:
        return segment(job.scan, **job.segment_kwargs(client))
    try:
        job.pacs.retrieve(job.scan)
        result = segment(job.scan, **job.segment_kwargs(client))
        job.pacs.store(result.report)
        return result
    finally:
        shutil.rmtree(job.scan, ignore_errors=True)


def is_transient(error: BaseException | None) -> bool:
    """Worth retrying: infrastructure trouble (``OSError``: network, disk, a lost Dask connection),
    :class:`StorageError` (space may be freed meanwhile) and :class:`RemoteError` (a PACS down or overloaded).

    Never another :class:`PipelineError` (even :class:`OutputError`, an ``OSError`` too): the same
    input and settings fail the same way again.
    """
    return isinstance(error, StorageError | RemoteError) or (
        isinstance(error, OSError) and not isinstance(error, PipelineError))
