"""A raster scene's bands and validity copied into the work store, one Dask task per read window."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

from pipeline.errors import InputError
from pipeline.io.geotiff import Raster, copy_window, read_windows
from pipeline.io.store import create_array, store_root

logger = logging.getLogger(__name__)


def tile_to_store(raster: Raster, bands: tuple[int, ...], group: zarr.Group, chunks: Sequence[int], *,
                  client: Any, attributes: dict[str, Any]) -> tuple[zarr.Array, zarr.Array, int]:
    """Copy ``bands`` into ``group['image']`` (C, y, x) and validity into ``group['valid']`` (y, x).

    Runs one Dask task per read window; returns both arrays and the number of valid pixels.
    """
    from distributed import as_completed

    geometry = raster.geometry
    image = create_array(group, "image", shape=(len(bands), *geometry.shape), chunks=(len(bands), *chunks),
                         dtype=geometry.dtype, attributes=attributes)
    valid = create_array(group, "valid", shape=geometry.shape, chunks=chunks, dtype=bool, channel_axis=False,
                         attributes=attributes)
    store = store_root(group)
    itemsize = np.dtype(geometry.dtype).itemsize
    windows = read_windows(geometry.shape, chunks, len(bands) * (itemsize + 1) + 2)  # pixels, masks, validity
    futures = [client.submit(copy_window, str(raster.path), bands, geometry.dtype, rows, cols, store, pure=False)
               for rows, cols in windows]
    total = 0
    for future in as_completed(futures):
        count = future.result()
        if isinstance(count, str):
            client.cancel(futures)
            raise InputError(count)
        total += count
    logger.debug("tiled %s: %d windows, %d valid pixels", raster.path, len(windows), total)
    return image, valid, total
