"""One scan to segment (:class:`ScanJob`), what became of it (:class:`ScanOutcome`), and a run's plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pipeline.batch.manifest import FileRecord
from pipeline.batch.pacs import PacsSeries
from pipeline.config.segmenters import SEGMENTERS
from pipeline.errors import (
    PipelineError,
    RemoteError,
    StorageError,
    as_storage_error,
    first_line,
    storage_failure,
)
from pipeline.segment.options import SeriesOptions


class ScanStatus(StrEnum):
    """What happened to one scan in one run."""

    DONE = "done"  #: segmented in this run
    FAILED = "failed"  #: failed in this run
    RETRY = "retry"  #: the storage failed under it (disk full, I/O error, permissions): no manifest, next run retries
    FAILED_BEFORE = "failed-before"  #: failed earlier with a PipelineError, nothing changed since: not retried
    BUSY = "busy"  #: another run holds its output lock
    UP_TO_DATE = "up-to-date"  #: finished (by another run) between discovery and this run's turn


@dataclass(frozen=True, slots=True)
class ScanJob:
    """One scan to segment: everything :func:`run_scan` needs, resolved at discovery. Picklable."""

    source: str
    kind: str
    scan: Path
    output: Path
    model: str  #: card path
    model_name: str
    model_sha256: str
    input: FileRecord  #: as found at discovery
    work_dir: Path
    reference: Path | None = None
    bands: tuple[int, ...] | None = None
    vectors: Path | None = None  #: polygon output (geo), beside the mask
    trust: bool = False  #: the source trusts its bundle's config (``trust: true``)
    pacs: PacsSeries | None = None  #: kind dicomweb: the series to retrieve into ``scan`` and store the SEG of

    @property
    def name(self) -> str:
        """``source/scan file name``: the task run's name in the UI."""
        return f"{self.source}/{self.scan.name}"

    @property
    def shown(self) -> str:
        """The input as the run's table names it: the file, or a PACS series' DICOMweb URL."""
        return self.input.path if self.pacs else str(self.scan)

    @property
    def manifest_path(self) -> Path:
        return self.output.with_name(output_stem(self.output) + ".manifest.json")

    @property
    def lock_path(self) -> Path:
        return self.output.with_name(f".{output_stem(self.output)}.lock")

    def segment_kwargs(self, client: Any) -> dict[str, Any]:
        """Keyword arguments for the kind's segment function (the same call the CLI makes).

        ``overwrite=True`` is safe: the caller holds the output lock and the manifest is missing or
        stale, so whatever sits at the output path is a leftover of an interrupted or superseded run.
        """
        kwargs: dict[str, Any] = {"model": self.model, "output": self.output, "reference": self.reference,
                                  "overwrite": True, "work_dir": self.work_dir, "client": client}
        if self.bands is not None:
            kwargs["bands"] = self.bands
        if self.vectors is not None:
            kwargs["vectors"] = self.vectors
        if self.trust:
            kwargs["trust"] = True
        if self.pacs is not None:
            kwargs["dicom"] = SeriesOptions(dicom_seg="binary")
        return kwargs


@dataclass(frozen=True, slots=True)
class ScanOutcome:
    """One scan's line in the run summary; failures carry their one-line reason."""

    source: str
    scan: str
    status: ScanStatus
    output: str | None = None
    report_json: str | None = None
    report_csv: str | None = None
    seconds: float | None = None
    labels: tuple[dict[str, Any], ...] = ()  #: the report's label rows (dice, iou, volume_ml...)
    reason: str | None = None
    user_error: bool = True  #: for failures: caused by the input (PipelineError), not by the pipeline

    @classmethod
    def skipped(cls, job: ScanJob, status: ScanStatus, reason: str) -> ScanOutcome:
        return cls(source=job.source, scan=job.shown, status=status, output=str(job.output), reason=reason)

    @classmethod
    def failed(cls, job: ScanJob, error: BaseException | None) -> ScanOutcome:
        """A failure; anything but a PipelineError also names its type (it is a pipeline problem).

        Storage trouble (a :class:`StorageError` or a raw ``ENOSPC``/``EIO``/``EACCES``...) is ``retry``,
        never the input's fault, with the reason ``storage: <errno text> (<message>)``.
        """
        if storage_failure(error):
            error = as_storage_error(error, job.output)
        if isinstance(error, StorageError | RemoteError):
            reason = error.summary if isinstance(error, StorageError) else f"remote: {error}"
            return cls(source=job.source, scan=job.shown, status=ScanStatus.RETRY, output=str(job.output),
                       reason=reason, user_error=False)
        user_error = isinstance(error, PipelineError)
        text = first_line(error) if error is not None else ""
        reason = text if user_error or error is None else f"{type(error).__name__}: {text}".rstrip(": ")
        return cls(source=job.source, scan=job.shown, status=ScanStatus.FAILED, reason=reason or "failed",
                   user_error=user_error)

    @classmethod
    def done(cls, job: ScanJob, result: Any, seconds: float) -> ScanOutcome:
        report = result.report
        return cls(source=job.source, scan=job.shown, status=ScanStatus.DONE, output=str(result.mask),
                   report_json=str(result.report_json), report_csv=str(result.report_csv),
                   seconds=report.get("run", {}).get("seconds_total", round(seconds, 3)),
                   labels=tuple(report.get("labels", ())))


@dataclass(frozen=True)
class Plan:
    """The result of :func:`discover`: scans to run, failures to report again, and how many are current."""

    pending: list[ScanJob] = field(default_factory=list)
    failed_before: list[ScanOutcome] = field(default_factory=list)
    up_to_date: int = 0

    def describe(self) -> str:
        return (f"{len(self.pending)} scan(s) to segment, {len(self.failed_before)} failed before and unchanged, "
                f"{self.up_to_date} up to date")


def output_stem(path: Path) -> str:
    for kind in SEGMENTERS.values():
        if path.name.lower().endswith(kind.suffixes):
            return kind.stem(path.name)
    return path.stem
