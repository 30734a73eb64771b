"""Spill files: the sums a block task blends into a forward neighbour, written and read a slab at a time.

A task blends its windows row by row along one axis (:func:`pipeline.engine.predictor.blend_slabs`), so it
never holds its whole span of sums, and neither does the neighbour that adds them. Each finished slab's
part in a neighbour is one ``.npy`` file, ``<target>/<source>@<first>-<stop>.npy``: ``(C + 1, *spatial)``
float32 in C order, ``[first, stop)`` its rows (padded coordinates) on the streamed axis. A file is written
to a temporary name and renamed into place (one writer per file; a reader never sees half of one). The
neighbour reads the files overlapping the rows it is merging; slab boundaries need not match.

Why one file per slab rather than one file per piece appended to: appending along the last axis (a CT's
``k``, where the roi is thinnest) would need the axis moved first, a strided copy 3-5x slower than the
plain one, paid on every spilled voxel twice.
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.engine.predictor import rows_along


def save_slab(folder: str, source: str, first: int, stop: int, piece: np.ndarray) -> int:
    """Rows ``[first, stop)`` of ``source``'s spill into the block that owns ``folder``; its bytes."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{source}@{first}-{stop}.npy")
    tmp = f"{path}.{os.getpid()}.{id(piece)}.tmp"
    with open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(piece, dtype=np.float32), allow_pickle=False)
    os.replace(tmp, path)
    return int(piece.size) * 4


class SpillRows:
    """The spill files waiting in one block's folder, by source, for adding rows of them into its sums."""

    def __init__(self, folder: str) -> None:
        self.files: dict[str, list[tuple[int, int, str]]] = {}
        if os.path.isdir(folder):
            for entry in os.scandir(folder):
                if entry.name.endswith(".npy") and "@" in entry.name:
                    source, rows = entry.name[:-4].split("@")
                    first, stop = (int(r) for r in rows.split("-"))
                    self.files.setdefault(source, []).append((first, stop, entry.path))
        for pieces in self.files.values():
            pieces.sort()

    def add(self, source: str, axis: int, first: int, stop: int, into: np.ndarray) -> None:
        """Add ``source``'s spilled rows ``[first, stop)`` into ``into`` (``(C + 1, *box)`` with ``stop - first``
        rows on ``axis``); every one of those rows must be in some file."""
        covered = 0
        for lo, hi, path in self.files.get(source, ()):
            a, b = max(lo, first), min(hi, stop)
            if a >= b:
                continue
            piece = np.load(path, allow_pickle=False)
            if piece.shape[axis + 1] != hi - lo or piece.shape[0] != into.shape[0]:
                raise ValueError(f"{path}: holds {piece.shape}, not rows {lo}:{hi} of {into.shape[0]} channels")
            into[rows_along(axis, a - first, b - first)] += piece[rows_along(axis, a - lo, b - lo)]
            covered += b - a
        if covered != stop - first:
            raise FileNotFoundError(f"spills of block {source}: rows {first}:{stop} incomplete ({covered} found)")

