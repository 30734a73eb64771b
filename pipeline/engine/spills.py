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

import io
import math
import os
import threading
from typing import BinaryIO

import numpy as np

from pipeline.engine.predictor import rows_along

_FLOAT = np.dtype(np.float32)

#: One float32 buffer per thread that channels are copied through on their way to and from a file. A
#: fresh array per channel (1-3 MB, so mmap'd) is faulted in page by page every time; every spilled
#: voxel of a run passes through here twice (written, read back).
_scratch = threading.local()


def _buffer(shape: tuple[int, ...]) -> np.ndarray:
    """This thread's scratch buffer as a float32 array of ``shape``, grown when too small (valid until the
    thread's next call)."""
    size = math.prod(shape)
    if getattr(_scratch, "array", None) is None or _scratch.array.size < size:
        _scratch.array = np.empty(size, _FLOAT)
    return _scratch.array[:size].reshape(shape)


def save_slab(folder: str, source: str, first: int, stop: int, piece: np.ndarray) -> int:
    """Rows ``[first, stop)`` of ``source``'s spill into the block that owns ``folder``; its bytes."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{source}@{first}-{stop}.npy")
    tmp = f"{path}.{os.getpid()}.{id(piece)}.tmp"
    with open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(_FLOAT),
                                                  "fortran_order": False, "shape": tuple(piece.shape)})
        for channel in piece:  # a channel at a time: a slab along the last axis is strided, so each is a copy
            if channel.flags.c_contiguous and channel.dtype == _FLOAT:
                fh.write(channel.data)
                continue
            contiguous = _buffer(channel.shape)
            np.copyto(contiguous, channel, casting="same_kind")
            fh.write(contiguous.data)
    os.replace(tmp, path)
    return int(piece.size) * 4


def _header(fh: BinaryIO, path: str) -> tuple[int, ...]:
    """The shape in a spill file's header (float32, C order, as :func:`save_slab` writes it)."""
    version = np.lib.format.read_magic(fh)
    if version != (1, 0):
        raise ValueError(f"{path}: not a spill file (npy version {version})")
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    if fortran or dtype != _FLOAT or not shape:
        raise ValueError(f"{path}: holds {dtype} {shape}, not float32 channels in C order")
    return tuple(int(n) for n in shape)


def _channel(fh: io.BufferedReader, shape: tuple[int, ...], path: str) -> np.ndarray:
    """The next channel of a spill file: one at a time, never the whole file in memory, in this thread's
    scratch buffer (valid until its next use)."""
    channel = _buffer(shape)
    view = channel.reshape(-1).view(np.uint8).data
    if fh.readinto(view) != len(view):  # a buffered reader fills the view unless the file ends first
        raise ValueError(f"{path}: truncated")
    return channel


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
            rows, there = rows_along(axis, a - first, b - first)[1:], rows_along(axis, a - lo, b - lo)[1:]
            with open(path, "rb") as fh:
                shape = _header(fh, path)
                if shape[axis + 1] != hi - lo or shape[0] != into.shape[0]:
                    raise ValueError(f"{path}: holds {shape}, not rows {lo}:{hi} of {into.shape[0]} channels")
                for target in into:
                    target[rows] += _channel(fh, shape[1:], path)[there]
            covered += b - a
        if covered != stop - first:
            raise FileNotFoundError(f"spills of block {source}: rows {first}:{stop} incomplete ({covered} found)")

