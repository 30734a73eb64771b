"""The report's reads decode one chunk at a time inside ``one_chunk_at_a_time`` (and the setting comes back)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from pipeline.io.store import one_chunk_at_a_time


def test_reads_inside_decode_one_chunk_at_a_time_and_the_setting_returns(tmp_path: Path) -> None:
    before = zarr.config.get("async.concurrency")
    array = zarr.create_array(tmp_path / "a.zarr", shape=(40, 30, 20), chunks=(8, 8, 8), dtype="int16")
    values = np.arange(40 * 30 * 20, dtype=np.int16).reshape(40, 30, 20)
    array[...] = values
    with one_chunk_at_a_time():
        assert zarr.config.get("async.concurrency") == 1
        plane = array[:, 7, :]
    assert zarr.config.get("async.concurrency") == before
    np.testing.assert_array_equal(plane, values[:, 7, :])
