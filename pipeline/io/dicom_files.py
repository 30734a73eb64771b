"""Find the DICOM instances in a folder or a ``.zip``: headers only, never pixel data.

Files are recognised by content (the ``DICM`` preamble pydicom checks), not by name: scanners write
``IM0001``, ``1.2.840...`` or ``.dcm`` alike. ``DICOMDIR`` and anything that is not DICOM is skipped.
A member of a zip is read through :mod:`zipfile` each time it is needed; nothing is extracted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pipeline.errors import InputError, InputNotFoundError

logger = logging.getLogger(__name__)

#: Media Storage Directory (DICOMDIR): an index, not an instance.
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


@dataclass(frozen=True, slots=True)
class Member:
    """One DICOM file: a path, or a name inside the zip ``container``."""

    container: Path
    name: str  #: a path for a folder's file, the member name for a zip's
    zipped: bool = False

    def __str__(self) -> str:
        return f"{self.container}:{self.name}" if self.zipped else self.name


@contextlib.contextmanager
def open_member(member: Member) -> Iterator[IO[bytes]]:
    """A binary stream of the member (a zip member is decompressed as it is read)."""
    if member.zipped:
        with zipfile.ZipFile(member.container) as archive, archive.open(member.name) as fh:
            yield fh
    else:
        with open(member.name, "rb") as fh:
            yield fh


def is_series_path(path: str | os.PathLike[str]) -> bool:
    """A folder or a ``.zip``: what ``segment-volume`` reads as a DICOM series rather than a NIfTI file (a folder
    named like a NIfTI file is a misplaced NIfTI path, and reported as one)."""
    path = Path(path)
    name = path.name.lower()
    return name.endswith(".zip") or (path.is_dir() and not name.endswith((".nii", ".nii.gz")))


def _candidates(path: Path) -> list[Member]:
    if path.is_dir():
        found = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            found += [Member(path, os.path.join(root, f)) for f in sorted(files) if f.upper() != "DICOMDIR"]
        return found
    if not path.is_file():
        raise InputNotFoundError(f"{path}: not found") if not path.exists() else InputError(
            f"{path}: not a folder or a .zip of DICOM files")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a folder or a .zip of DICOM files")
    try:
        with zipfile.ZipFile(path) as archive:
            names = [i.filename for i in archive.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{path}: cannot read the zip ({e})") from e
    return [Member(path, n, zipped=True) for n in sorted(names) if Path(n).name.upper() != "DICOMDIR"]


def read_headers(path: Path) -> list[tuple[Member, Any]]:
    """``(member, header)`` for every DICOM instance under ``path`` (pixel data not read).

    Raises InputError when there is none (naming how many files were looked at).
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    candidates = _candidates(path)
    found = []
    for member in candidates:
        try:
            with open_member(member) as fh:
                header = dcmread(fh, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
            logger.debug("%s: not DICOM (%s)", member, e)
            continue
        if str(header.get("SOPClassUID", "")) == DICOMDIR_CLASS or "SOPClassUID" not in header:
            continue
        found.append((member, header))
    if not found:
        raise InputError(f"{path}: no DICOM files found ({len(candidates)} files looked at)")
    return found


def members_sha256(members: list[Member]) -> str:
    """One sha256 over the members' bytes in the given order: the identity of a series' content."""
    digest = hashlib.sha256()
    for member in members:
        with open_member(member) as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
