"""The record that a scan was done: manifests.

Every output mask has a manifest beside it, ``<stem>.manifest.json``, naming the input (sha256),
the model (name + weights sha256), the code version, when it finished and the output files.
It is written last and atomically, and removed before an output is rewritten, so a manifest
that exists always describes complete outputs. What a manifest decides is in :mod:`pipeline.batch.discovery`.

The sha256 of an input is only recomputed when its size or mtime differ from the manifest's,
so a nightly run over thousands of large volumes does not re-read them all.
"""

from __future__ import annotations

import datetime
import functools
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.errors import (
    first_line,
)
from pipeline.io.atomic import atomic_path
from pipeline.io.hashing import sha256_file

logger = logging.getLogger(__name__)


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


@functools.cache
def current_code_version() -> str:
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


