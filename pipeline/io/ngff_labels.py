"""Labels of a Zarr input as an NGFF label image: ``labels/<name>`` inside the input store, or in another store.

The label image has the input's spatial axes (names and units as stored) and, per level, the input's own
scale and translation, so viewers overlay it on the image. Its pyramid follows the image's levels from the
one segmented on (integer factors per axis; a level off that ladder ends it), or, for a single-level input,
halvings of every spatial axis; each coarser level is the *mode* of the finer level's voxels it covers
(ties to the lower label), never an interpolation, which would invent labels.

Written first into a scratch group in the work directory, then moved into place with one rename, so a
crash never leaves a half-written ``labels/<name>`` in the user's store; only then is ``<name>`` added to
the store's ``labels`` list. Only local stores are written (a rename is not atomic on object storage).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.config.cards import Label
from pipeline.errors import OutputError, OutputExistsError
from pipeline.io.ngff import UNIT_MM, ZarrInput, ome_attrs, open_group
from pipeline.io.omezarr import label_metadata

#: Halve a single-level input's spatial axes while the smallest stays at least this long.
MIN_SIDE = 32
MAX_LEVELS = 6


def check_label_target(location: str | os.PathLike[str], name: str, *, overwrite: bool, in_input: bool) -> None:
    """Refuse before any work: a remote or read-only target, or an existing ``labels/<name>`` without overwrite."""
    if "://" in os.fspath(location):
        raise OutputError(f"{os.fspath(location)}: labels are written to local stores only; pass -o labels.ome.zarr")
    store = Path(location)
    target = store / "labels" / name
    if in_input and not os.access(store, os.W_OK):
        raise OutputError(f"{store}: the input store is read-only; write the labels elsewhere with -o labels.ome.zarr")
    if not in_input and store.exists() and not (store / "labels").is_dir():
        if not overwrite or not _is_volseg(store):
            raise OutputExistsError(f"{store}: output exists; pass --overwrite to replace it")
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target}: labels exist; pass --overwrite to replace them")
    if in_input and (store / "labels").exists() and not os.access(store / "labels", os.W_OK):
        raise OutputError(f"{store / 'labels'}: read-only; write the labels elsewhere with -o labels.ome.zarr")


def _is_volseg(store: Path) -> bool:
    try:
        return "volseg" in dict(open_group(str(store)).attrs)
    except Exception:  # not a Zarr store at all: never replaced
        return False


#: One level of a label pyramid: (spatial shape, integer factor from level 0, scale, translation).
LabelLevel = tuple[tuple[int, ...], tuple[int, ...], list[float], list[float]]


def label_levels(source: ZarrInput) -> list[LabelLevel]:
    """Per label level: (spatial shape, integer factor from level 0 of the labels, scale, translation), both in
    the input's units (stored order). Level 0 is the segmented level."""
    base = source.array
    units = [source.axes[i].unit for i in source.spatial_axes]
    sizes = [1.0 / UNIT_MM[unit] if unit else 1.0 for unit in units]
    raw = lambda values: [v * s for v, s in zip(values, sizes, strict=True)]  # noqa: E731 (mm -> stored unit)
    levels: list[LabelLevel] = [(source.spatial_shape, (1, 1, 1), raw(base.scale), raw(base.translation))]
    for level in source.levels[source.level + 1:]:
        ratio = [c / f for c, f in zip(level.scale, base.scale, strict=True)]
        factor = tuple(round(r) for r in ratio)
        shape = tuple(level.shape[i] for i in source.spatial_axes)
        fits = all(f >= 1 and abs(r - f) < 0.01 * f for r, f in zip(ratio, factor, strict=True))
        if not fits or any(n > math.ceil(b / f) for n, b, f in zip(shape, levels[0][0], factor, strict=True)):
            break
        levels.append((shape, factor, raw(level.scale), raw(level.translation)))
    if len(levels) == 1:
        shape, scale, translation = levels[0][0], levels[0][2], levels[0][3]
        for k in range(1, MAX_LEVELS):
            f = 2**k
            if min(shape) // f < MIN_SIDE:
                break
            levels.append((tuple(math.ceil(n / f) for n in shape), (f, f, f), [s * f for s in scale],
                           [t + (f - 1) / 2 * s for t, s in zip(translation, scale, strict=True)]))
    return levels


def mode_reduce(x: np.ndarray, axis: tuple[int, ...] | None = None, *, n_labels: int) -> np.ndarray:
    """The most frequent label over ``axis`` (ties: the lower label); a ``dask.array.coarsen`` reduction
    (which calls it once without ``axis`` for the result's type: ``x`` itself then)."""
    if axis is None:
        return x
    keep = [a for a in range(x.ndim) if a not in axis]
    moved = np.transpose(x, (*keep, *axis)).reshape(*(x.shape[a] for a in keep), -1)
    counts = np.stack([(moved == v).sum(axis=-1) for v in range(n_labels)], axis=-1)
    return counts.argmax(axis=-1).astype(x.dtype)


def mode_downsample(labels: Any, factor: tuple[int, ...], shape: tuple[int, ...], n_labels: int) -> Any:
    """``labels`` (Dask, spatial) reduced by ``factor`` per axis with :func:`mode_reduce`, cut to ``shape``
    (edges padded by repeating the last voxels, so a partial block votes with its own labels only)."""
    import dask.array as da

    if factor == (1,) * len(factor):
        return labels
    pad = [(0, (-n) % f) for n, f in zip(labels.shape, factor, strict=True)]
    padded = da.pad(labels, pad, mode="edge") if any(p for _, p in pad) else labels
    chunks = tuple(max(f, (c // f) * f) for c, f in zip(padded.chunksize, factor, strict=True))
    coarse = da.coarsen(mode_reduce, padded.rechunk(chunks), dict(enumerate(factor)), trim_excess=False,
                        n_labels=n_labels)
    return coarse[tuple(slice(0, n) for n in shape)]


def write_ngff_labels(labels: Any, source: ZarrInput, store: Path, name: str, *, labels_meta: Mapping[int, Label],
                      scratch: Path, overwrite: bool, in_input: bool) -> Path:
    """Write ``labels`` (work-store array, the input's spatial axes) as ``store/labels/<name>``; returns that path."""
    import dask.array as da
    import zarr
    from ome_zarr.writer import write_multiscale_labels

    levels = label_levels(source)
    n_labels = int(max(labels_meta)) + 1
    base = da.from_zarr(labels)
    pyramid = [mode_downsample(base, factor, shape, n_labels) for shape, factor, _, _ in levels]
    axes = [{"name": source.axes[i].name, "type": "space", **({"unit": source.axes[i].unit} if source.axes[i].unit
                                                                else {})} for i in source.spatial_axes]
    transforms = [[{"type": "scale", "scale": scale}, {"type": "translation", "translation": translation}]
                  for _, _, scale, translation in levels]
    meta = label_metadata(labels_meta)
    if not in_input:
        meta.pop("source")  # no image beside it; the run's report names the input store
    fmt = _zarr_format(source) if in_input else 3
    shutil.rmtree(scratch, ignore_errors=True)
    root = zarr.open_group(zarr.storage.LocalStore(scratch), mode="w", zarr_format=fmt)
    write_multiscale_labels(pyramid, root, name=name, axes=axes, coordinate_transformations=transforms,
                            label_metadata=meta, storage_options={"chunks": tuple(labels.chunks)})
    if not in_input:
        root.attrs["volseg"] = {"store": "labels", "source": source.url, "level": source.level}
        _publish(scratch, store, overwrite=overwrite)
        return store / "labels" / name
    target = store / "labels" / name
    _publish(scratch / "labels" / name, target, overwrite=overwrite)
    _list_label(store, name)
    shutil.rmtree(scratch, ignore_errors=True)
    return target


def _zarr_format(source: ZarrInput) -> Literal[2, 3]:
    return 2 if int(open_group(source.url).metadata.zarr_format) == 2 else 3


def _publish(tmp: Path, final: Path, *, overwrite: bool) -> None:
    """Move ``tmp`` to ``final`` by rename; an existing ``final`` (overwrite) is renamed aside first, then removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    aside = final.with_name(f".{final.name}.{os.getpid()}.old")
    if final.exists():
        if not overwrite:
            raise OutputExistsError(f"{final}: exists; pass --overwrite to replace it")
        os.replace(final, aside)
    shutil.move(str(tmp), str(final))
    shutil.rmtree(aside, ignore_errors=True)


def _list_label(store: Path, name: str) -> None:
    """Add ``name`` to the store's ``labels`` group list (NGFF 0.5 under ``ome``, 0.4 at the top)."""
    root = open_group(str(store), read_only=False)
    group = root.require_group("labels")
    attrs = ome_attrs(group)
    names = [n for n in attrs.get("labels", []) if n != name] + [name]
    if root.metadata.zarr_format == 3:
        version = ome_attrs(root).get("version", "0.5")
        group.attrs["ome"] = {**attrs, "version": version, "labels": names}
    else:
        group.attrs["labels"] = names
