"""The Zarr v3 work store: where a tiled input, its labels and probabilities live between steps.

Layout of ``<work>.zarr``: ``image`` (C, *spatial) in the input's dtype, with the
geometry and source identity in its attributes; ``labels`` (*spatial) uint8/uint16;
optionally ``probabilities`` (C_out, *spatial) float16. Every array is chunked on the
engine's block grid, so one Dask task owns each chunk.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
SPATIAL_NAMES = {2: ("y", "x"), 3: ("i", "j", "k")}


def open_work_group(path: Path, *, overwrite: bool = False) -> zarr.Group:
    """Open (or create) the work store group at ``path``."""
    return zarr.open_group(zarr.storage.LocalStore(path), mode="w" if overwrite else "a", zarr_format=3)


@contextlib.contextmanager
def work_store(root: Path, stem: str) -> Iterator[tuple[Path, zarr.Group]]:
    """A fresh hidden work directory under ``root`` with its ``work.zarr`` group; removed on exit,
    success or failure, so no run leaves a work store behind."""
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".volseg-{stem}-", dir=root))
    try:
        yield work, open_work_group(work / "work.zarr", overwrite=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def create_array(group: zarr.Group, name: str, *, shape: Sequence[int], chunks: Sequence[int],
                 dtype: Any, attributes: dict[str, Any] | None = None, channel_axis: bool = True) -> zarr.Array:
    """Create a compressed array ``name`` in the work store, replacing an older one."""
    spatial = len(shape) - (1 if channel_axis else 0)
    names = (("c",) if channel_axis else ()) + SPATIAL_NAMES.get(spatial, tuple(f"d{i}" for i in range(spatial)))
    return group.create_array(name, shape=tuple(shape), chunks=tuple(chunks), dtype=np.dtype(dtype),
                              compressors=COMPRESSOR, attributes=attributes or {}, dimension_names=names,
                              fill_value=0, overwrite=True)


def write_region(store_path: str, name: str, region: tuple[slice, ...], values: np.ndarray) -> None:
    """Write ``values`` into ``region`` of array ``name``; runs inside a Dask task that owns those chunks."""
    array = zarr.open_array(zarr.storage.LocalStore(store_path), path=name, mode="r+")
    array[region] = values
