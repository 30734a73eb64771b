"""Catalog sources of kind ``dicomweb``: series found on a PACS (QIDO-RS), retrieved (WADO-RS), segmented
with the same engine, and their DICOM SEG stored back (STOW-RS).

A series is identified by its SeriesInstanceUID and the set of its SOP Instance UIDs (sha256 of the
sorted list), so a series that gains instances is segmented again and one uploaded later is new. The
mask, report and SEG go to ``<output_root>/<source>/<SeriesInstanceUID>_seg.*`` with the usual manifest,
which makes runs idempotent: a second run retrieves and stores nothing. Retrieved instances live in the
work root only while their series is segmented. Nothing here imports Prefect.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config.catalog import Catalog, DicomWebConfig, Source
from pipeline.errors import OutputError
from pipeline.io.dicomweb import DicomWeb, SeriesRef

logger = logging.getLogger(__name__)

#: Modalities that are never segmented: derived objects (ours included: SEG) and documents.
NOT_IMAGES = frozenset({"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "PR", "KO", "DOC", "REG"})


@dataclass(frozen=True, slots=True)
class PacsSeries:
    """One series on a PACS, as a scan job carries it (picklable: the config is a frozen pydantic model)."""

    config: DicomWebConfig
    study_uid: str
    series_uid: str

    @property
    def ref(self) -> SeriesRef:
        return SeriesRef(study_uid=self.study_uid, series_uid=self.series_uid)

    def client(self) -> DicomWeb:
        return DicomWeb(self.config.url, username_env=self.config.username_env,
                        password_env=self.config.password_env, token_env=self.config.token_env)

    def retrieve(self, folder: Path) -> None:
        """WADO-RS into ``folder`` (emptied first: a previous, interrupted retrieval may be partial)."""
        shutil.rmtree(folder, ignore_errors=True)
        paths = self.client().retrieve_series(self.ref, folder)
        logger.info("retrieved %d instances of series %s into %s", len(paths), self.series_uid, folder)

    def store(self, report: dict[str, Any]) -> None:
        """STOW-RS the run's SEG (named in its report) back to the PACS."""
        seg = report.get("dicom_seg")
        if not seg:
            raise OutputError(f"series {self.series_uid}: the run wrote no DICOM SEG to store")
        self.client().store([Path(seg["path"])])
        logger.info("stored %s (%d segments) on %s", seg["path"], len(seg["segments"]), self.config.url)


def identity(client: DicomWeb, ref: SeriesRef) -> tuple[str, int]:
    """(sha256 of the sorted SOP Instance UIDs, instance count): what changes when the series does."""
    uids = sorted(client.instance_uids(ref))
    return hashlib.sha256("\n".join(uids).encode()).hexdigest(), len(uids)


def find(config: DicomWebConfig) -> list[tuple[SeriesRef, str, int]]:
    """Every image series matching the source's QIDO filters, with its identity (one QIDO call per series).

    Raises
    ------
    RemoteError
        The PACS is unreachable or failed (the run fails with one line; the next run tries again).
    """
    client = DicomWeb(config.url, username_env=config.username_env, password_env=config.password_env,
                      token_env=config.token_env)
    found = []
    for ref in client.find_series(dict(config.filters)):
        if ref.modality.upper() in NOT_IMAGES:
            continue
        found.append((ref, *identity(client, ref)))
    return found


def series_output(catalog: Catalog, source: Source, series_uid: str) -> Path:
    """``<output_root>/<source output>/<SeriesInstanceUID>_seg.nii.gz`` (a UID has no path characters)."""
    return catalog.output_root / source.output_name / f"{series_uid}_seg.nii.gz"


def retrieval_dir(catalog: Catalog, source: Source, series_uid: str) -> Path:
    return catalog.work_dir / source.name / "dicomweb" / series_uid

