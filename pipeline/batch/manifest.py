"""What a scheduled run must do, and the record that it was done: manifests, discovery, locks.

Every output mask has a manifest beside it, ``<stem>.manifest.json``, naming the input (sha256),
the model (name + weights sha256), the code version, when it finished and the output files.
It is written last and atomically, and removed before an output is rewritten, so a manifest
that exists always describes complete outputs. The rules, in :func:`discover`:

- no manifest, or an unreadable one: segment the scan;
- a ``done`` manifest with the same input sha256 and model sha256 whose outputs all exist:
  up to date (a new code version alone does not re-run huge volumes);
- a ``failed`` manifest (the input was rejected with a :class:`PipelineError`) with the same
  input, reference, model and code version: reported again, not retried, since it would fail the
  same way. Failures of any other kind leave no manifest and are retried on the next run, storage
  failures (:class:`StorageError`: a full or failing disk, permissions) included: they are the
  operator's, not the scan's.

The sha256 of an input is only recomputed when its size or mtime differ from the manifest's,
so a nightly run over thousands of large volumes does not re-read them all.

Two runs at once are safe: :func:`run_scan` holds a per-output ``fcntl.flock`` lock while it
writes, and a run that finds the lock taken skips the scan (``busy``) instead of waiting.
Series on a PACS (sources of kind ``dicomweb``) are found, retrieved and stored back by :mod:`pipeline.batch.pacs`;
their identity is the set of their instances' UIDs, and a PACS that does not answer is retried like storage.
Nothing here imports Prefect; ``flows/`` wraps :func:`discover` and :func:`run_scan` in tasks.
"""

from __future__ import annotations

import datetime
import functools
import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.batch.pacs import PacsSeries, find, retrieval_dir, series_output
from pipeline.config.catalog import SEGMENTERS, Catalog, Source
from pipeline.errors import (
    CardError,
    PipelineError,
    RemoteError,
    StorageError,
    as_storage_error,
    first_line,
    storage_failure,
)
from pipeline.io.atomic import atomic_path
from pipeline.io.hashing import sha256_file
from pipeline.io.lock import lock_holder, output_lock

logger = logging.getLogger(__name__)


class ScanStatus(StrEnum):
    """What happened to one scan in one run."""

    DONE = "done"  #: segmented in this run
    FAILED = "failed"  #: failed in this run
    RETRY = "retry"  #: the storage failed under it (disk full, I/O error, permissions): no manifest, next run retries
    FAILED_BEFORE = "failed-before"  #: failed earlier with a PipelineError, nothing changed since: not retried
    BUSY = "busy"  #: another run holds its output lock
    UP_TO_DATE = "up-to-date"  #: finished (by another run) between discovery and this run's turn


class FileRecord(BaseModel):
    """Identity of an input file: its content hash, plus size and mtime to skip re-hashing."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    sha256: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path, previous: FileRecord | None = None) -> FileRecord:
        """Stat ``path``; reuse ``previous.sha256`` only if size and mtime are unchanged."""
        stat = path.stat()
        if previous is not None and (previous.size, previous.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
            sha256 = previous.sha256
        else:
            sha256 = sha256_file(path)
        return cls(path=str(path), sha256=sha256, size=stat.st_size, mtime_ns=stat.st_mtime_ns)


class Manifest(BaseModel):
    """The record beside an output: what was segmented, with what, when, into which files."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[1] = 1
    status: Literal["done", "failed"]
    source: str
    input: FileRecord
    model: str
    model_sha256: str
    references: dict[str, str] = {}  #: reference path -> sha256 (part of a failure's identity)
    code_version: str
    finished_at: datetime.datetime
    outputs: dict[str, str] = {}  #: role (mask, report_json, report_csv, probabilities, vectors) -> path
    reason: str | None = None  #: one line, for ``failed``


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
        return self.output.with_name(_stem(self.output) + ".manifest.json")

    @property
    def lock_path(self) -> Path:
        return self.output.with_name(f".{_stem(self.output)}.lock")

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
            kwargs["dicom_seg"] = "binary"
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
            error = as_storage_error(error, job.output)  # type: ignore[arg-type]  # an OSError, checked above
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


def _stem(path: Path) -> str:
    for kind in SEGMENTERS.values():
        if path.name.lower().endswith(kind.suffixes):
            return kind.stem(path.name)
    return path.stem


@functools.cache
def _code_version() -> str:
    from pipeline.version import code_version

    return code_version()


def read_manifest(path: Path) -> Manifest | None:
    """The manifest at ``path``, or None if it is missing or unreadable (then the scan runs again)."""
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as e:
        logger.warning("%s: unreadable manifest, segmenting again (%s)", path, first_line(e))
        return None


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write-then-rename: readers see the old manifest or the new one, never a partial file."""
    with atomic_path(path) as tmp:
        tmp.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")


def _references(job: ScanJob) -> dict[str, str]:
    return {str(job.reference): sha256_file(job.reference)} if job.reference is not None else {}


def classify(job: ScanJob, manifest: Manifest | None) -> ScanStatus | None:
    """``UP_TO_DATE``, ``FAILED_BEFORE``, or None when the scan must be segmented (the rules above)."""
    if manifest is None:
        return None
    same = manifest.input.sha256 == job.input.sha256 and manifest.model_sha256 == job.model_sha256
    if not same:
        return None
    if manifest.status == "done":
        complete = bool(manifest.outputs) and all(Path(p).exists() for p in manifest.outputs.values())
        return ScanStatus.UP_TO_DATE if complete else None
    if manifest.code_version == _code_version() and manifest.references == _references(job):
        return ScanStatus.FAILED_BEFORE
    return None


def _model(catalog: Catalog, index: int, source: Source) -> tuple[str, str, str]:
    """(card path, model name, weights sha256) for a source; cheap: reads the card, not the weights
    (a MONAI bundle directory without a volseg card: its directory name and its weights' sha256)."""
    from pipeline.config.cards import load_card
    from pipeline.model.bundles import WEIGHTS, imported_path
    from pipeline.model.models import resolve_card_path

    try:
        bundle = imported_path(source.model)
        if bundle is not None and bundle.is_dir():
            if not (bundle / WEIGHTS).is_file():
                raise CardError(f"{bundle}: bundle has no {WEIGHTS}")
            return str(bundle), bundle.name, sha256_file(bundle / WEIGHTS)
        path = resolve_card_path(bundle or source.model)
        card = load_card(path)
    except CardError as e:
        raise catalog.error(index, "model", str(e)) from e
    return str(path), card.name, card.sha256 or sha256_file(path)  # classical cards: the card is the model


def scans(catalog: Catalog, index: int, source: Source) -> list[Path]:
    """The source's input files, sorted: glob matches with the kind's suffix, minus hidden files,
    files under the output or work root, and files that are another scan's reference."""
    if source.directory is None or not source.directory.is_dir():
        raise catalog.error(index, "directory", f"{source.directory} is not a directory")
    excluded = [catalog.output_root.resolve(), catalog.work_dir.resolve()]
    found = []
    for path in sorted(source.directory.glob(source.glob)):
        if (path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(source.segmenter.suffixes)
                and not any(path.resolve().is_relative_to(root) for root in excluded)):
            found.append(path)
    if source.reference is None:
        return found
    references = {source.reference.path_for(p, source.segmenter.stem(p.name)).resolve() for p in found}
    return [p for p in found if p.resolve() not in references]


def _job(catalog: Catalog, source: Source, scan: Path, model: tuple[str, str, str],
         previous: Manifest | None, output: Path) -> ScanJob:
    reference = None
    if source.reference is not None:
        reference = source.reference.path_for(scan, source.segmenter.stem(scan.name))
        if not reference.is_file():
            logger.info("%s: no reference at %s; segmenting without one", scan, reference)
            reference = None
    vectors = output.with_name(f"{_stem(output)}.{source.vectors}") if source.vectors else None
    return ScanJob(source=source.name, kind=source.kind, scan=scan, output=output, model=model[0],
                   model_name=model[1], model_sha256=model[2],
                   input=FileRecord.of(scan, previous.input if previous else None),
                   work_dir=catalog.work_dir / source.name, reference=reference, bands=source.bands, vectors=vectors,
                   trust=source.trust)


def _file_jobs(catalog: Catalog, index: int, source: Source, model: tuple[str, str, str]) -> list[ScanJob]:
    jobs = []
    for scan in scans(catalog, index, source):
        output = catalog.output_for(source, scan)
        previous = read_manifest(output.with_name(_stem(output) + ".manifest.json"))
        jobs.append(_job(catalog, source, scan, model, previous, output))
    return jobs


def _series_jobs(catalog: Catalog, source: Source, model: tuple[str, str, str]) -> list[ScanJob]:
    """One job per image series the source's PACS lists (:mod:`pipeline.batch.pacs`), known by its UIDs."""
    if source.dicomweb is None:
        raise catalog.error(catalog.sources.index(source), "dicomweb", "missing")
    jobs = []
    for ref, digest, count in find(source.dicomweb):
        output = series_output(catalog, source, ref.series_uid)
        reference = source.reference.path_for(output, ref.series_uid) if source.reference else None
        record = FileRecord(path=f"{source.dicomweb.url}/studies/{ref.study_uid}/series/{ref.series_uid}",
                            sha256=digest, size=count, mtime_ns=0)
        jobs.append(ScanJob(source=source.name, kind=source.kind, scan=retrieval_dir(catalog, source, ref.series_uid),
                            output=output, model=model[0], model_name=model[1], model_sha256=model[2], input=record,
                            work_dir=catalog.work_dir / source.name, trust=source.trust,
                            reference=reference if reference is not None and reference.is_file() else None,
                            pacs=PacsSeries(source.dicomweb, ref.study_uid, ref.series_uid)))
    return jobs


def _jobs(catalog: Catalog, index: int, source: Source, model: tuple[str, str, str]) -> list[ScanJob]:
    if source.pacs_source:
        return _series_jobs(catalog, source, model)
    return _file_jobs(catalog, index, source, model)


def discover(catalog: Catalog, *, source: str | None = None) -> Plan:
    """Decide, for every scan of the catalog (or of one source), whether it must be segmented.

    Raises
    ------
    CatalogError
        Unknown source name, missing source directory, unknown model.
    OutputError
        An output path resolves outside the output root.
    """
    pending: list[ScanJob] = []
    failed_before: list[ScanOutcome] = []
    up_to_date = 0
    for index, src in catalog.select(source):
        model = _model(catalog, index, src)
        for job in _jobs(catalog, index, src, model):
            manifest = read_manifest(job.manifest_path)
            state = classify(job, manifest)
            if state is None:
                pending.append(job)
            elif state is ScanStatus.UP_TO_DATE:
                up_to_date += 1
            elif manifest is not None:
                reason = f"{manifest.reason} [not retried: unchanged since {manifest.finished_at:%Y-%m-%d %H:%M %Z}]"
                failed_before.append(ScanOutcome.skipped(job, ScanStatus.FAILED_BEFORE, reason))
    plan = Plan(pending=pending, failed_before=failed_before, up_to_date=up_to_date)
    logger.info("%s: %s", catalog.file, plan.describe())
    return plan


def _manifest(job: ScanJob, status: Literal["done", "failed"], **fields: Any) -> Manifest:
    return Manifest(status=status, source=job.source, input=job.input, model=job.model_name,
                    model_sha256=job.model_sha256, code_version=_code_version(),
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
                                                        references=_references(job)))
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


#: Columns of the per-run table: one row per scan and label (one row per scan without labels).
#: Volumes report ``volume_ml``, rasters ``area_ha`` (None when the scene's CRS has no metric unit).
TABLE_COLUMNS = ("scan", "source", "status", "label", "dice", "iou", "volume_ml", "area_ha", "seconds", "output",
                 "reason")


def table_rows(outcomes: Iterable[ScanOutcome]) -> list[dict[str, Any]]:
    """The run's results as flat rows, for a table artifact or a CSV."""
    rows = []
    for outcome in outcomes:
        base = {"scan": outcome.scan, "source": outcome.source, "status": str(outcome.status),
                "seconds": outcome.seconds, "output": outcome.output, "reason": outcome.reason}
        for label in outcome.labels or ({},):
            measured = {"label": label.get("name"), "dice": label.get("dice"), "iou": label.get("iou"),
                        "volume_ml": label.get("volume_ml"), "area_ha": label.get("area_ha")}
            row = {**base, **measured}
            rows.append({key: row[key] for key in TABLE_COLUMNS})
    return rows


def markdown_summary(outcomes: Iterable[ScanOutcome], plan: Plan) -> str:
    """A short markdown report: counts, then one line per scan with links to its report files."""
    outcomes = list(outcomes)
    counts = {status: sum(o.status is status for o in outcomes) for status in ScanStatus}
    lines = [f"# segment-new-scans: {counts[ScanStatus.DONE]} done, "
             f"{counts[ScanStatus.FAILED] + counts[ScanStatus.FAILED_BEFORE]} failed, "
             f"{counts[ScanStatus.RETRY]} left for storage trouble (retried next run), "
             f"{counts[ScanStatus.BUSY]} busy, {plan.up_to_date + counts[ScanStatus.UP_TO_DATE]} up to date", ""]
    for o in outcomes:
        if o.status is ScanStatus.DONE:
            reports = [Path(p) for p in (o.report_json, o.report_csv) if p]
            links = ", ".join(f"[{p.name}]({p.resolve().as_uri()})" for p in reports)
            lines.append(f"- `{o.scan}`: **done** in {o.seconds:.1f} s -> `{o.output}`; report: {links}")
        else:
            lines.append(f"- `{o.scan}`: **{o.status}**: {o.reason}")
    if not outcomes:
        lines.append("Nothing to do: every scan is up to date.")
    return "\n".join(lines) + "\n"
