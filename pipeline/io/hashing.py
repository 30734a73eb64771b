"""Content hashes used to identify inputs and weights."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path, *, block_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (never the whole file at once)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block_size):
            digest.update(chunk)
    return digest.hexdigest()
