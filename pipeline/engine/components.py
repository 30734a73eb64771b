"""Connected components of a chunked Zarr array, merged across chunk borders, out of core.

Three passes over the work store, one task per chunk, none holding more than a chunk:

1. label each chunk with :func:`scipy.ndimage.label` and write the local labels to ``target``;
2. read the two planes on each side of every internal chunk face and join labels that touch
   (a union-find: :func:`scipy.sparse.csgraph.connected_components` over the touching pairs);
3. rewrite each chunk with its final ids and measure each object (voxels, centroid, peak value).

The ids are numbered like :func:`scipy.ndimage.label` numbers the whole array (in C order of each
object's first voxel), so the result equals it exactly, for any chunking. Connectivity is the
face connectivity scipy uses by default, optionally restricted to some ``axes`` (``axes=(0, 1)``
on a volume labels each k-slice on its own, as a 2D hole fill needs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from pipeline.geometry import block_slices
from pipeline.io.store import create_array, store_root, work_array, write_region

Region = tuple[slice, ...]


@dataclass(frozen=True)
class Components:
    """Ids (``array``: uint32, 0 = not in any object) and per-object measures, indexed by id (0 unused)."""

    array: zarr.Array
    count: int
    voxels: np.ndarray  # (count + 1,) int64
    centroid: np.ndarray  # (count + 1, ndim) float64, in array index coordinates
    peak: np.ndarray  # (count + 1,) largest source value inside each object
    on_border: np.ndarray  # (count + 1,) bool: touches the array's edge along a connected axis


def structure(ndim: int, axes: Sequence[int] | None = None) -> np.ndarray:
    """Face connectivity (scipy's default), only along ``axes`` when given."""
    from scipy import ndimage  # imported when used: ~0.3 s of every run's start-up otherwise

    base = ndimage.generate_binary_structure(ndim, 1)
    if axes is None:
        return base
    keep = np.zeros_like(base)
    centre = (1,) * ndim
    keep[centre] = True
    for axis in axes:
        for step in (0, 2):
            index = list(centre)
            index[axis] = step
            keep[tuple(index)] = True
    return keep


def gather(client: Any, function: Callable[..., Any], jobs: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``function(*job)`` for every job: on the cluster when there is a client, else here, in order."""
    if client is None:
        return [function(*job) for job in jobs]
    futures = [client.submit(function, *job, pure=False) for job in jobs]
    return client.gather(futures)


def _open(store: str, name: str) -> zarr.Array:
    return zarr.open_array(zarr.storage.LocalStore(store), path=name, mode="r")


def _selected(store: str, source: str, region: Region, values: tuple[int, ...], valid: str | None) -> np.ndarray:
    mask = np.isin(np.asarray(_open(store, source)[region]), values)
    if valid is not None:
        mask &= np.asarray(_open(store, valid)[region], dtype=bool)
    return mask


def _label_chunk(store: str, source: str, target: str, region: Region, values: tuple[int, ...],
                 valid: str | None, connect: np.ndarray, shape: tuple[int, ...],
                 axes: tuple[int, ...]) -> tuple[int, np.ndarray, np.ndarray]:
    """Pass 1: local labels -> ``target``; returns their count, each one's first voxel (global C index)
    and the local labels on the array's edge."""
    from scipy import ndimage

    labels, count = ndimage.label(_selected(store, source, region, values, valid), structure=connect)
    write_region(store, target, region, labels.astype(np.uint32))
    ids, first = np.unique(labels.ravel(), return_index=True)
    local = np.unravel_index(first[ids > 0], labels.shape)
    flat = np.ravel_multi_index(tuple(c + r.start for c, r in zip(local, region, strict=True)), shape)
    edge = [labels.take(0, axis=a).ravel() for a in axes if region[a].start == 0]
    edge += [labels.take(-1, axis=a).ravel() for a in axes if region[a].stop == shape[a]]
    border = np.unique(np.concatenate(edge)) if edge else np.zeros(0, dtype=labels.dtype)
    return count, flat.astype(np.int64), border[border > 0]


def _face_pairs(store: str, target: str, region: Region, axis: int, offset: int, next_offset: int) -> np.ndarray:
    """Pass 2: (node, node) pairs of labels that touch across the face after ``region`` along ``axis``."""
    array = _open(store, target)
    below = list(region)
    below[axis] = slice(region[axis].stop - 1, region[axis].stop)
    above = list(region)
    above[axis] = slice(region[axis].stop, region[axis].stop + 1)
    a = np.asarray(array[tuple(below)]).ravel().astype(np.int64)
    b = np.asarray(array[tuple(above)]).ravel().astype(np.int64)
    touch = (a > 0) & (b > 0)
    if not touch.any():
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.stack([a[touch] + offset, b[touch] + next_offset], axis=1), axis=0)


def _relabel_chunk(store: str, source: str, target: str, region: Region, table: np.ndarray,
                   offset: int, count: int) -> tuple[np.ndarray, ...]:
    """Pass 3: final ids -> ``target``; per id present: voxels, coordinate sums, peak source value."""
    local = np.asarray(_open(store, target)[region]).astype(np.int64)
    lookup = np.concatenate([[0], np.asarray(table[offset + 1 : offset + count + 1])]).astype(np.uint32)
    final = lookup[local]
    write_region(store, target, region, final)
    ids, inverse, voxels = np.unique(final.ravel(), return_inverse=True, return_counts=True)
    keep = ids > 0
    sums = np.zeros((ids.size, final.ndim), dtype=np.float64)
    for axis in range(final.ndim):
        coords = np.arange(region[axis].start, region[axis].stop, dtype=np.float64)
        view = [1] * final.ndim
        view[axis] = -1
        sums[:, axis] = np.bincount(inverse, weights=np.broadcast_to(coords.reshape(view), final.shape).ravel(),
                                    minlength=ids.size)
    values = np.asarray(_open(store, source)[region]).ravel().astype(np.int64)
    peaks = np.full(ids.size, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(peaks, inverse, values)
    return ids[keep], voxels[keep], sums[keep], peaks[keep]


def _final_ids(counts: list[int], first: list[np.ndarray], pairs: np.ndarray) -> tuple[np.ndarray, int]:
    """Node (1..N, chunk-local labels shifted) -> final id, numbered in order of each object's first voxel."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes = int(sum(counts)) + 1
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(nodes, nodes))
    _, component = connected_components(graph, directed=False)
    starts = np.concatenate([[np.iinfo(np.int64).max], *first]) if first else np.array([np.iinfo(np.int64).max])
    roots = component[1:]
    first_voxel = np.full(component.max() + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_voxel, roots, starts[1:])
    used = np.unique(roots)
    order = used[np.argsort(first_voxel[used], kind="stable")]
    rank = np.zeros(component.max() + 1, dtype=np.int64)
    rank[order] = np.arange(1, order.size + 1)
    table = np.zeros(nodes, dtype=np.uint32)
    table[1:] = rank[roots]
    return table, int(order.size)


def label_components(group: zarr.Group, source: str, target: str, *, values: Sequence[int],
                     chunks: Sequence[int] | None = None, valid: str | None = None,
                     axes: Sequence[int] | None = None, client: Any = None) -> Components:
    """Connected components of the voxels of ``group[source]`` whose value is in ``values``
    (and, with ``valid``, where ``group[valid]`` is true), written to ``group[target]`` (uint32).

    Equals ``scipy.ndimage.label(np.isin(source, values), structure(ndim, axes))`` on the whole
    array. ``chunks`` defaults to the source's chunks; ``client`` runs the passes on a Dask cluster.
    """
    src = work_array(group, source)
    shape = tuple(int(n) for n in src.shape)
    ndim = len(shape)
    block = tuple(chunks) if chunks else tuple(src.chunks)
    connected = tuple(range(ndim)) if axes is None else tuple(axes)
    connect = structure(ndim, axes)
    store = store_root(group)
    out = create_array(group, target, shape=shape, chunks=block, dtype=np.uint32, channel_axis=False,
                       attributes=dict(src.attrs))
    regions = list(block_slices(shape, block))
    firsts = gather(client, _label_chunk, [(store, source, target, r, tuple(int(v) for v in values), valid, connect,
                                            shape, connected) for r in regions])
    counts = [c for c, _, _ in firsts]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    index = {tuple(r[a].start for a in range(ndim)): i for i, r in enumerate(regions)}
    faces = []
    for i, region in enumerate(regions):
        for axis in connected:
            if region[axis].stop < shape[axis]:
                key = tuple(region[a].stop if a == axis else region[a].start for a in range(ndim))
                faces.append((store, target, region, axis, int(offsets[i]), int(offsets[index[key]])))
    found = gather(client, _face_pairs, faces)
    pairs = np.concatenate([np.zeros((0, 2), dtype=np.int64), *found])
    table, count = _final_ids(counts, [f for _, f, _ in firsts], pairs)
    shared = client.scatter(table, broadcast=True) if client is not None else table
    measured = gather(client, _relabel_chunk, [(store, source, target, r, shared, int(offsets[i]), counts[i])
                                               for i, r in enumerate(regions)])
    voxels = np.zeros(count + 1, dtype=np.int64)
    sums = np.zeros((count + 1, ndim), dtype=np.float64)
    peak = np.full(count + 1, np.iinfo(np.int64).min, dtype=np.int64)
    for ids, n, s, p in measured:
        np.add.at(voxels, ids, n)
        np.add.at(sums, ids, s)
        np.maximum.at(peak, ids, p)
    on_border = np.zeros(count + 1, dtype=bool)
    for i, (_, _, border) in enumerate(firsts):
        on_border[table[border.astype(np.int64) + offsets[i]]] = True
    on_border[0] = False
    centroid = sums / np.maximum(voxels, 1)[:, None]
    return Components(array=out, count=count, voxels=voxels, centroid=centroid, peak=peak, on_border=on_border)
