"""What a scheduled run must do: which scans of the catalog to segment, from their manifests.

The rules, in :func:`discover` (manifests: :mod:`pipeline.batch.manifest`):

- no manifest, or an unreadable one: segment the scan;
- a ``done`` manifest with the same input sha256 and model sha256 whose outputs all exist:
  up to date (a new code version alone does not re-run huge volumes);
- a ``failed`` manifest (the input was rejected with a :class:`PipelineError`) with the same
  input, reference, model and code version: reported again, not retried, since it would fail the
  same way. Failures of any other kind leave no manifest and are retried on the next run, storage
  failures (:class:`StorageError`: a full or failing disk, permissions) included: they are the
  operator's, not the scan's.

Series on a PACS (sources of kind ``dicomweb``) are found, retrieved and stored back by :mod:`pipeline.batch.pacs`;
their identity is the set of their instances' UIDs, and a PACS that does not answer is retried like storage.
Nothing in ``pipeline.batch`` imports Prefect; ``flows/`` wraps :func:`discover` and
:func:`pipeline.batch.scan_run.run_scan` in tasks.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.batch.jobs import Plan, ScanJob, ScanOutcome, ScanStatus, output_stem
from pipeline.batch.manifest import FileRecord, Manifest, current_code_version, read_manifest
from pipeline.batch.pacs import PacsSeries, find, retrieval_dir, series_output
from pipeline.config.catalog import Catalog, Source
from pipeline.errors import CardError
from pipeline.io.hashing import sha256_file

logger = logging.getLogger(__name__)


def reference_hashes(job: ScanJob) -> dict[str, str]:
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
    if manifest.code_version == current_code_version() and manifest.references == reference_hashes(job):
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
    vectors = output.with_name(f"{output_stem(output)}.{source.vectors}") if source.vectors else None
    return ScanJob(source=source.name, kind=source.kind, scan=scan, output=output, model=model[0],
                   model_name=model[1], model_sha256=model[2],
                   input=FileRecord.of(scan, previous.input if previous else None),
                   work_dir=catalog.work_dir / source.name, reference=reference, bands=source.bands, vectors=vectors,
                   trust=source.trust)


def _file_jobs(catalog: Catalog, index: int, source: Source, model: tuple[str, str, str]) -> list[ScanJob]:
    jobs = []
    for scan in scans(catalog, index, source):
        output = catalog.output_for(source, scan)
        previous = read_manifest(output.with_name(output_stem(output) + ".manifest.json"))
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
