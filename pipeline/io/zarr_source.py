"""Read a Zarr input in place, as the engine's ``(C, *spatial)`` image, and say which store it was.

:class:`ZarrView` is what the runner reads block spans from instead of a tiled copy in the work store: a
picklable value (URL, array path, axis roles; no open handles) whose ``__getitem__`` opens the array, reads
the stored chunks the span touches (zarr decodes only those: the input's chunks are "rechunked on the fly"
to the engine's blocks) and returns them transposed to channel-first. Dask's ``from_array`` accepts it too,
so the intensity statistics stream over the same chunks.

:func:`store_identity` is the resume key of a Zarr input (see its docstring for what it hashes and why).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.geometry import VolumeGeometry
from pipeline.io.ngff import ZarrInput, open_store


@dataclass(frozen=True)
class ZarrView:
    """``(C, *spatial)`` view of one array of a Zarr store: channel axis first (added when absent),
    spatial axes in stored order, a time axis (of one point) fixed at 0."""

    url: str
    path: str
    roles: tuple[str, ...]  #: per stored axis: "space", "channel" or "time"
    shape: tuple[int, ...]  #: (C, *spatial)
    dtype: np.dtype
    chunks: tuple[int, ...]  #: the stored chunks, as (C, *spatial)
    attrs: dict[str, Any] = field(default_factory=dict)  #: {"geometry": ...}, as the work store's image has

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        """A ``(C, *spatial)`` block for a tuple of slices (one per view axis; missing ones are full)."""
        import zarr

        index = index if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (self.ndim - len(index))
        spatial = iter(index[1:])
        stored = tuple(index[0] if role == "channel" else 0 if role == "time" else next(spatial) for role in self.roles)
        array = zarr.open_array(store=open_store(self.url), path=self.path, mode="r")
        block = np.asarray(array[stored])
        kept = [r for r in self.roles if r != "time"]  # integer indices drop the time axis
        if "channel" in kept:
            block = np.moveaxis(block, kept.index("channel"), 0)
        else:
            block = block[index[0]] if isinstance(index[0], int) else block[np.newaxis][index[0]]
        return block

    def to_dask(self) -> Any:
        """The view as a Dask array on the stored chunks (for the intensity statistics' streaming pass)."""
        import dask.array as da

        return da.from_array(self, chunks=self.chunks, asarray=True, lock=False, fancy=False,
                             name=f"zarr-input-{hashlib.sha256(repr((self.url, self.path)).encode()).hexdigest()[:16]}")


def zarr_view(source: ZarrInput, geometry: VolumeGeometry) -> ZarrView:
    """The view of ``source``'s chosen level, carrying ``geometry`` for the engine's window alignment."""
    roles = tuple(a.type for a in source.axes)
    for i, role in enumerate(roles):
        if role == "time" and source.array.shape[i] != 1:
            from pipeline.errors import InputError

            raise InputError(f"{source.url}: time axis {source.axes[i].name!r} has {source.array.shape[i]} points; "
                             "segment-volume takes one 3D volume (store one time point per image)")
    spatial = [source.chunks[i] for i in source.spatial_axes]
    channel = source.channel_axis
    chunks = (source.channels if channel is None else source.chunks[channel], *spatial)
    return ZarrView(url=source.url, path=source.array.path, roles=roles, shape=(source.channels, *geometry.shape),
                    dtype=source.dtype, chunks=tuple(int(c) for c in chunks),
                    attrs={"geometry": geometry.to_attrs()})


def store_identity(source: ZarrInput) -> dict[str, Any]:
    """What a resumed run must find unchanged: the store's resolved location, the image metadata (axes, levels,
    transforms, dtype, chunks) and, for local stores, a digest of every chunk file's name, size and mtime under
    the level's array. No voxel is read: a checksum of the chunks would read the whole volume once more before
    any work (hours for a remote Tvox store); a rewritten chunk changes its size or mtime, which this catches.
    Remote stores are keyed on location + metadata only (listing every object is itself slow there)."""
    location = source.url if not source.is_local else os.path.realpath(source.url)
    meta = {"url": location, "level": source.level, "array": source.array.path,
            "axes": [[a.name, a.type, a.unit] for a in source.axes], "dtype": source.dtype.name,
            "chunks": list(source.chunks),
            "levels": [[lv.path, list(lv.shape), list(lv.scale), list(lv.translation)] for lv in source.levels]}
    if source.is_local:
        meta["chunk_files"] = _chunk_digest(os.path.join(location, source.array.path))
    return {"input_store": meta, "input_sha256": hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()}


def _chunk_digest(root: str) -> str:
    digest = hashlib.sha256()
    for directory, folders, files in os.walk(root):
        folders.sort()
        for name in sorted(files):
            st = os.stat(os.path.join(directory, name))
            digest.update(f"{os.path.relpath(os.path.join(directory, name), root)}\0{st.st_size}\0"
                          f"{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()
