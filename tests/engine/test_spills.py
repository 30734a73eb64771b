"""Spill files: appended a slab at a time along the streamed axis, read back a range of rows at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.engine.spills import SpillWriter, read_rows


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slabs_appended_read_back_as_rows(tmp_path: Path, axis: int) -> None:
    piece = np.random.default_rng(axis).random((7, 9, 11, 13), dtype=np.float32)
    path = str(tmp_path / "t" / "s.npy")
    writer = SpillWriter(path, piece.shape, axis)
    cuts = [0, 2, 3, piece.shape[axis + 1]]
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        writer.append(piece[(slice(None),) * (axis + 1) + (slice(lo, hi),)])
    writer.close()
    assert writer.nbytes == piece.nbytes
    np.testing.assert_array_equal(np.moveaxis(np.load(path), 0, axis + 1), piece)  # a standard .npy
    for lo, hi in [(0, piece.shape[axis + 1]), (1, 4), (5, 5)]:
        expected = piece[(slice(None),) * (axis + 1) + (slice(lo, hi),)]
        np.testing.assert_array_equal(read_rows(path, axis, lo, hi), expected)


def test_an_unfinished_piece_is_never_published(tmp_path: Path) -> None:
    piece = np.zeros((3, 4, 5), np.float32)
    path = tmp_path / "s.npy"
    writer = SpillWriter(str(path), piece.shape, 0)
    writer.append(piece[:, :2])
    with pytest.raises(AssertionError, match="2 of 4 rows"):
        writer.close()
    aborted = SpillWriter(str(path), piece.shape, 0)
    aborted.append(piece[:, :1])
    aborted.abort()
    assert list(tmp_path.iterdir()) == []


def test_rows_outside_the_piece_or_a_foreign_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.npy"
    writer = SpillWriter(str(path), (2, 3, 4), 1)
    writer.append(np.ones((2, 3, 4), np.float32))
    writer.close()
    with pytest.raises(ValueError, match="rows 0:5"):
        read_rows(str(path), 1, 0, 5)
    np.save(tmp_path / "other.npy", np.ones((4, 2, 3), np.float64))
    with pytest.raises(ValueError, match="not a spill file"):
        read_rows(str(tmp_path / "other.npy"), 1, 0, 1)
