"""Spill files: the sums a block task blends into a forward neighbour, written and read a slab at a time.

A task blends its windows row by row along one axis (:func:`pipeline.engine.predictor.blend_slabs`), so it
never holds its whole span of sums, and neither does the neighbour that adds them. The file therefore
stores the piece with that axis first: ``(rows, C + 1, *other axes)`` float32 in a standard ``.npy``
(readable by ``np.load``), so each finished slab is appended at the end and any range of rows is one
contiguous read. A writer fills a temporary file and renames it into place when complete (one writer per
file, and a reader never sees half of one).
"""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np

DTYPE = np.dtype(np.float32)


def _rows_first(piece: np.ndarray, axis: int) -> np.ndarray:
    """``(C + 1, *spatial)`` -> ``(spatial[axis], C + 1, *other spatial)``, the file's layout."""
    return np.moveaxis(piece, axis + 1, 0)


class SpillWriter:
    """Appends the slabs of one spill piece, of known ``shape`` ``(C + 1, *spatial)``, in order along ``axis``."""

    def __init__(self, path: str, shape: tuple[int, ...], axis: int) -> None:
        self.path, self.axis, self.rows = path, axis, shape[axis + 1]
        self.written = 0
        self.nbytes = int(np.prod(shape)) * DTYPE.itemsize
        stored = (shape[axis + 1], shape[0], *shape[1:axis + 1], *shape[axis + 2:])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._tmp = f"{path}.{os.getpid()}.{id(self)}.tmp"
        self._fh: BinaryIO | None = open(self._tmp, "wb")  # closed by close() or abort()
        np.lib.format.write_array_header_1_0(
            self._fh, {"descr": np.lib.format.dtype_to_descr(DTYPE), "fortran_order": False, "shape": stored})

    def append(self, slab: np.ndarray) -> None:
        """The next ``slab.shape[axis + 1]`` rows."""
        assert self._fh is not None
        self._fh.write(np.ascontiguousarray(_rows_first(slab, self.axis), dtype=DTYPE).data)
        self.written += slab.shape[self.axis + 1]

    def close(self) -> None:
        """Publish the file (by rename); every row must have been written."""
        assert self._fh is not None
        self._fh.close()
        self._fh = None
        if self.written != self.rows:
            os.unlink(self._tmp)
            raise AssertionError(f"spill {self.path}: {self.written} of {self.rows} rows written")
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            os.unlink(self._tmp)


def read_rows(path: str, axis: int, first: int, stop: int) -> np.ndarray:
    """Rows ``[first, stop)`` along ``axis`` of a spill file, as ``(C + 1, *spatial)`` (a strided view)."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version != (1, 0):
            raise ValueError(f"{path}: not a spill file (npy version {version})")
        stored, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        if fortran or dtype != DTYPE or not 0 <= first <= stop <= stored[0]:
            raise ValueError(f"{path}: not a spill file with rows {first}:{stop} ({stored}, {dtype})")
        row = int(np.prod(stored[1:]))
        fh.seek(first * row * DTYPE.itemsize, os.SEEK_CUR)
        data = np.fromfile(fh, dtype=DTYPE, count=(stop - first) * row)
    if data.size != (stop - first) * row:
        raise ValueError(f"{path}: truncated spill file")
    return np.moveaxis(data.reshape(stop - first, *stored[1:]), 0, axis + 1)
