"""Spill files: one per finished slab, read back by any range of rows, whatever the writer's slab boundaries."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from pipeline.engine.spills import SpillRows, save_slab


def _rows(axis: int, lo: int, hi: int) -> tuple[slice, ...]:
    return (slice(None),) * (axis + 1) + (slice(lo, hi),)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_rows_read_across_slab_boundaries(tmp_path: Path, axis: int) -> None:
    piece = np.random.default_rng(axis).random((7, 9, 11, 13), dtype=np.float32)
    origin = 40  # padded coordinate of the piece's first row
    cuts = [0, 2, 3, piece.shape[axis + 1]]
    written = sum(save_slab(str(tmp_path), "0-1-0", origin + lo, origin + hi, piece[_rows(axis, lo, hi)])
                  for lo, hi in itertools.pairwise(cuts))
    assert written == piece.nbytes
    save_slab(str(tmp_path), "1-0-0", origin, origin + piece.shape[axis + 1], -piece)  # another source
    spills = SpillRows(str(tmp_path))
    for lo, hi in [(0, piece.shape[axis + 1]), (1, 4), (2, 3), (5, 5)]:
        into = np.ones_like(piece[_rows(axis, lo, hi)])
        spills.add("0-1-0", axis, origin + lo, origin + hi, into)
        np.testing.assert_array_equal(into, 1 + piece[_rows(axis, lo, hi)])


def test_missing_rows_are_an_error_not_zeros(tmp_path: Path) -> None:
    save_slab(str(tmp_path), "0-0", 10, 12, np.ones((3, 2, 5), np.float32))
    spills = SpillRows(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="rows 10:14 incomplete"):
        spills.add("0-0", 0, 10, 14, np.zeros((3, 4, 5), np.float32))
    with pytest.raises(FileNotFoundError, match="incomplete"):
        spills.add("9-9", 0, 10, 12, np.zeros((3, 2, 5), np.float32))


def test_a_folder_never_written_holds_nothing(tmp_path: Path) -> None:
    assert SpillRows(str(tmp_path / "absent")).files == {}
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_damaged_spill_file_is_an_error(tmp_path: Path) -> None:
    save_slab(str(tmp_path), "0-0", 0, 2, np.ones((3, 2, 5), np.float32))
    path = tmp_path / "0-0@0-2.npy"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match="truncated"):
        SpillRows(str(tmp_path)).add("0-0", 0, 0, 2, np.zeros((3, 2, 5), np.float32))
    np.save(path, np.ones((3, 2, 5), np.float64))
    with pytest.raises(ValueError, match="not float32"):
        SpillRows(str(tmp_path)).add("0-0", 0, 0, 2, np.zeros((3, 2, 5), np.float32))


def test_a_strided_slab_is_written_as_its_values(tmp_path: Path) -> None:
    sums = np.random.default_rng(5).random((4, 6, 7, 9), dtype=np.float32)
    save_slab(str(tmp_path), "0-0-0", 3, 6, sums[..., 3:6])  # rows on the last axis: not contiguous
    np.testing.assert_array_equal(np.load(tmp_path / "0-0-0@3-6.npy"), sums[..., 3:6])
