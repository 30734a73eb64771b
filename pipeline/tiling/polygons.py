"""Polygons of a work store's labels, one Dask task per chunk, border pieces merged at the end."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.config.cards import Label
from pipeline.geometry import RasterGeometry, block_slices
from pipeline.io.vectors import VECTOR_FORMATS, Piece, merge_border, polygonize_window

logger = logging.getLogger(__name__)


def write_vectors(store: str, geometry: RasterGeometry, chunks: Sequence[int], path: Path, *,
                  names: dict[int, Label], client: Any) -> int:
    """Polygonise ``labels`` (masked by ``valid``) of the work store into ``path``; returns the feature count.

    ``path``'s suffix picks the format (:data:`VECTOR_FORMATS`). Written in place: pass a path in
    the work directory and publish it when the run succeeds.
    """
    from distributed import as_completed

    futures = [client.submit(polygonize_window, store, rows, cols, geometry, pure=False)
               for rows, cols in block_slices(geometry.shape, chunks)]
    border: list[Piece] = []
    count = 0
    with VECTOR_FORMATS[path.suffix.lower()](path, geometry.crs, names) as write:
        for future in as_completed(futures):
            done, pieces = future.result()
            future.release()
            write(done)
            border.extend(pieces)
            count += len(done)
        merged = merge_border(border, geometry.transform)
        write(merged)
    logger.debug("%s: %d polygons, %d of them merged from %d border pieces", path, count + len(merged),
                 len(merged), len(border))
    return count + len(merged)
