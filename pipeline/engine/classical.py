"""Classical (weightless) segmentation on the work store: the same chunks, no network.

Each method is a pure function of one block (padded by its halo) plus global statistics
computed first in one streaming pass (Otsu's threshold from a chunked histogram, k-means
centres from a seeded sample). Blocks run through :func:`dask.array.map_overlap` with
``boundary="none"``, so a block on the array's edge sees exactly the edge the whole array
has, and every local method (threshold, Sobel, Gaussian, morphology) gives *exactly* the
whole-array result when the halo covers its footprint. Steps global by nature (region
growing, largest component, hole filling) run on chunked connected components
(:mod:`pipeline.engine.components`), also exact.

The one approximation is ``watershed``: flooding is global, so each block floods only within
its halo; voxels farther than the halo from any marker may differ from a whole-array watershed
(the tests measure the agreement).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from scipy import ndimage

from pipeline.config.classical import (
    Cleanup,
    EdgesParams,
    KMeansParams,
    OtsuParams,
    RegionGrowParams,
    ThresholdParams,
    WatershedParams,
)
from pipeline.engine.components import gather, label_components
from pipeline.engine.result import InferenceResult
from pipeline.errors import InputError, SettingsError
from pipeline.geometry import block_slices
from pipeline.io.store import create_array, store_root, work_array, write_region

if TYPE_CHECKING:
    from pipeline.model.models import Model

logger = logging.getLogger(__name__)

Statistics = dict[str, Any]
#: Gaussian kernels reach this many sigmas (scipy's default ``truncate``).
TRUNCATE = 4.0


def footprint(radius: int, ndim: int) -> np.ndarray:
    """A ball (disk in 2D) of ``radius`` voxels, as scikit-image draws it."""
    from skimage.morphology import ball, disk

    return (ball(radius) if ndim == 3 else disk(radius)).astype(bool)


def gaussian_radius(sigma: float) -> int:
    return int(TRUNCATE * sigma + 0.5) if sigma > 0 else 0


def cleanup_halo(params: Any) -> int:
    """Opening reaches 2 radii (erode, then dilate), closing too."""
    if not isinstance(params, Cleanup):
        return 0
    return 2 * params.opening + 2 * params.closing


def clean(mask: np.ndarray, params: Cleanup) -> np.ndarray:
    """Binary opening then closing (scipy, edges outside the array are background)."""
    if params.opening:
        mask = ndimage.binary_opening(mask, structure=footprint(params.opening, mask.ndim))
    if params.closing:
        mask = ndimage.binary_closing(mask, structure=footprint(params.closing, mask.ndim))
    return mask


def smooth(block: np.ndarray, sigma: float) -> np.ndarray:
    """scikit-image's Gaussian (edges ``nearest``) in float64, so HU thresholds keep their units."""
    from skimage.filters import gaussian

    values = np.asarray(block, dtype=np.float64)
    if sigma <= 0:
        return values
    return gaussian(values, sigma=sigma, mode="nearest", truncate=TRUNCATE, preserve_range=True)


def gradient(block: np.ndarray, sigma: float) -> np.ndarray:
    """Sobel magnitude (scikit-image) of the Gaussian-smoothed block."""
    from skimage.filters import sobel

    return sobel(smooth(block, sigma))


# -- the local step of each method: f(block, params, stats) -> labels ------------------------------


def threshold_block(block: np.ndarray, params: ThresholdParams, stats: Statistics) -> np.ndarray:
    mask = np.ones(block.shape, dtype=bool)
    if params.lower is not None:
        mask &= block > params.lower
    if params.upper is not None:
        mask &= block <= params.upper
    return clean(mask, params).astype(np.uint8)


def otsu_block(block: np.ndarray, params: OtsuParams, stats: Statistics) -> np.ndarray:
    mask = block > stats["threshold"] if params.foreground == "above" else block <= stats["threshold"]
    return clean(mask, params).astype(np.uint8)


def kmeans_block(block: np.ndarray, params: KMeansParams, stats: Statistics) -> np.ndarray:
    """Nearest centre (centres sorted ascending, so label 0 is the darkest cluster)."""
    centres = np.asarray(stats["centres"], dtype=np.float64)
    bounds = (centres[1:] + centres[:-1]) / 2
    return np.searchsorted(bounds, np.asarray(block, dtype=np.float64), side="left").astype(np.uint8)


def region_grow_block(block: np.ndarray, params: RegionGrowParams, stats: Statistics) -> np.ndarray:
    """0 outside the growing range, 1 inside it, 2 on seeds; components are joined globally afterwards."""
    grow = block > params.low
    if params.ceiling is not None:
        grow &= block <= params.ceiling
    out = grow.astype(np.uint8)
    out[grow & (block > params.high)] = 2
    return out


def edges_block(block: np.ndarray, params: EdgesParams, stats: Statistics) -> np.ndarray:
    return clean(gradient(block, params.sigma) > params.edge_above, params).astype(np.uint8)


def watershed_block(block: np.ndarray, params: WatershedParams, stats: Statistics) -> np.ndarray:
    from skimage.segmentation import watershed

    markers = np.zeros(block.shape, dtype=np.int32)
    markers[block < params.background_below] = 1
    markers[block > params.foreground_above] = 2
    if not markers.any():
        return np.zeros(block.shape, dtype=np.uint8)
    flooded = watershed(gradient(block, params.sigma), markers)
    return clean(flooded == 2, params).astype(np.uint8)


# -- global statistics, streamed over chunks -------------------------------------------------------


def otsu_statistics(x: Any, params: OtsuParams, valid: Any = None) -> Statistics:
    """Otsu's threshold of a ``bins``-bin histogram over [min, max] of the ``valid`` pixels (all without):
    equals ``skimage.filters.threshold_otsu(x[valid].astype(float), nbins=bins)``."""
    import dask
    import dask.array as da
    from skimage.filters import threshold_otsu

    values = x.astype(np.float64)
    lows, highs = values, values
    if valid is not None:
        lows, highs = da.where(valid, values, np.inf), da.where(valid, values, -np.inf)
    low, high = (float(v) for v in dask.compute(lows.min(), highs.max()))
    if low > high:  # no valid pixel: nothing to threshold
        return {"threshold": 0.0}
    if low == high:
        return {"threshold": low}
    weights = None if valid is None else valid.astype(np.int64)
    counts, edges = da.histogram(values, bins=params.bins, range=(low, high), weights=weights)
    counts = np.asarray(counts.compute())
    centres = (edges[:-1] + edges[1:]) / 2
    return {"threshold": float(threshold_otsu(hist=(counts, centres)))}


def _sample_block(block: np.ndarray, fraction: float, seed: int, index: tuple[int, ...],
                  valid: np.ndarray | None = None) -> np.ndarray:
    rng = np.random.default_rng([seed, *index])
    drawn = rng.random(block.size) < fraction
    if valid is not None:
        drawn &= np.asarray(valid, dtype=bool).ravel()
    return np.asarray(block, dtype=np.float64).ravel()[drawn]


def kmeans_centres(sample: np.ndarray, params: KMeansParams) -> np.ndarray:
    """k-means (scipy's ``kmeans2``) on a 1D sample, started from its (i + 1/2)/k quantiles: deterministic and
    independent of the sample's order, unlike a random (k-means++) start. Centres sorted ascending."""
    from scipy.cluster.vq import kmeans2

    distinct = np.unique(sample).size
    if distinct < params.k:
        raise InputError(f"k-means with k={params.k} needs at least {params.k} distinct values, "
                         f"the sample has {distinct}")
    start = np.quantile(sample, (np.arange(params.k) + 0.5) / params.k).reshape(-1, 1)
    centres, _ = kmeans2(sample.reshape(-1, 1).astype(np.float64), start, iter=params.iterations, minit="matrix")
    return np.sort(centres.ravel())


def kmeans_statistics(x: Any, params: KMeansParams, valid: Any = None) -> Statistics:
    """Centres fitted on about ``sample`` voxels drawn with a seed per block (same sample for any cluster),
    among the ``valid`` ones when given."""
    import dask

    count = x.size if valid is None else int(valid.sum().compute())
    fraction = min(1.0, params.sample / max(1, count))
    parts = [dask.delayed(_sample_block)(x.blocks[index], fraction, params.seed, index,
                                         None if valid is None else valid.blocks[index])
             for index in np.ndindex(*x.numblocks)]
    sample = np.concatenate(dask.compute(*parts))
    return {"centres": kmeans_centres(sample, params).tolist(), "sample_size": int(sample.size)}


@dataclass(frozen=True)
class Method:
    """One classical method: its local step, its halo, and the global statistics it needs first."""

    local: Callable[[np.ndarray, Any, Statistics], np.ndarray]
    halo: Callable[[Any], int]
    statistics: Callable[[Any, Any, Any], Statistics] | None = None  #: (x, params, valid or None)


METHODS: dict[str, Method] = {
    "threshold": Method(threshold_block, cleanup_halo),
    "otsu": Method(otsu_block, cleanup_halo, otsu_statistics),
    "kmeans": Method(kmeans_block, lambda p: 0, kmeans_statistics),
    "region_grow": Method(region_grow_block, lambda p: 0),
    "edges": Method(edges_block, lambda p: gaussian_radius(p.sigma) + 1 + cleanup_halo(p)),
    "watershed": Method(watershed_block, lambda p: gaussian_radius(p.sigma) + 1 + cleanup_halo(p) + p.halo),
}


def segment_array(image: np.ndarray, method: str, params: Any) -> np.ndarray:
    """Whole-array reference: the same method on an in-memory array (what the chunked run must equal)."""
    import dask.array as da

    x = da.from_array(np.asarray(image), chunks=-1)
    spec = METHODS[method]
    stats = spec.statistics(x, params, None) if spec.statistics else {}
    labels = spec.local(np.asarray(image), params, stats)
    return finish_array(labels, method, params)


def finish_array(labels: np.ndarray, method: str, params: Any) -> np.ndarray:
    """The global steps on a whole array (scipy), mirroring :func:`finish`."""
    if method == "region_grow":
        grown, _ = ndimage.label(labels > 0)
        keep = np.unique(grown[labels == 2])
        labels = np.isin(grown, keep[keep > 0]).astype(np.uint8)
    if not isinstance(params, Cleanup):
        return labels
    if params.min_size:
        objects, _ = ndimage.label(labels > 0)
        sizes = np.bincount(objects.ravel())
        keep = np.flatnonzero(sizes >= params.min_size)
        labels = np.isin(objects, keep[keep > 0]).astype(np.uint8)
    if params.largest_component:
        objects, count = ndimage.label(labels > 0)
        if count:
            sizes = np.bincount(objects.ravel())
            sizes[0] = 0
            labels = (objects == int(np.argmax(sizes))).astype(np.uint8)
    if params.fill_holes == "volume" or (params.fill_holes == "slices" and labels.ndim == 2):
        labels = ndimage.binary_fill_holes(labels > 0).astype(np.uint8)
    elif params.fill_holes == "slices":
        labels = _fill_slices(labels)
    return labels


def _fill_slices(labels: np.ndarray) -> np.ndarray:
    out = np.empty_like(labels)
    for k in range(labels.shape[-1]):
        out[..., k] = ndimage.binary_fill_holes(labels[..., k] > 0)
    return out.astype(np.uint8)


# -- the chunked runner ----------------------------------------------------------------------------


def _keep_ids(store: str, source: str, target: str, region: tuple[slice, ...], keep: np.ndarray) -> None:
    """labels = 1 where the component id is in ``keep``, else 0."""
    ids = np.asarray(zarr.open_array(zarr.storage.LocalStore(store), path=source, mode="r")[region])
    write_region(store, target, region, np.isin(ids, keep).astype(np.uint8))


def _add_ids(store: str, source: str, target: str, region: tuple[slice, ...], keep: np.ndarray) -> None:
    """labels |= (component id in ``keep``): fills the holes found on the background's components."""
    root = zarr.storage.LocalStore(store)
    ids = np.asarray(zarr.open_array(root, path=source, mode="r")[region])
    labels = np.asarray(zarr.open_array(root, path=target, mode="r")[region])
    write_region(store, target, region, np.where(np.isin(ids, keep), np.uint8(1), labels).astype(labels.dtype))


def _rewrite(group: zarr.Group, labels: str, ids: str, keep: np.ndarray, client: Any, *, add: bool) -> None:
    store = store_root(group)
    shared = client.scatter(keep, broadcast=True) if client is not None else keep
    target = work_array(group, labels)
    regions = list(block_slices(target.shape, target.chunks))
    gather(client, _add_ids if add else _keep_ids, [(store, ids, labels, r, shared) for r in regions])


def finish(group: zarr.Group, method: str, params: Any, client: Any) -> None:
    """Global steps on ``group['labels']``, chunked: region growing, small objects, largest component,
    hole filling (in that order)."""
    ndim = work_array(group, "labels").ndim
    if method == "region_grow":
        grown = label_components(group, "labels", "components", values=(1, 2), client=client)
        keep = np.flatnonzero(grown.peak == 2)
        _rewrite(group, "labels", "components", keep[keep > 0].astype(np.uint32), client, add=False)
    if not isinstance(params, Cleanup):
        return
    if params.min_size:
        objects = label_components(group, "labels", "components", values=(1,), client=client)
        keep = np.flatnonzero(objects.voxels >= params.min_size)
        _rewrite(group, "labels", "components", keep[keep > 0].astype(np.uint32), client, add=False)
    if params.largest_component:
        objects = label_components(group, "labels", "components", values=(1,), client=client)
        if objects.count:
            largest = int(np.argmax(objects.voxels[1:])) + 1
            _rewrite(group, "labels", "components", np.array([largest], dtype=np.uint32), client, add=False)
    if params.fill_holes != "none":
        axes = None if params.fill_holes == "volume" else tuple(range(max(ndim - 1, 2)))
        background = label_components(group, "labels", "components", values=(0,), axes=axes, client=client)
        holes = np.flatnonzero(~background.on_border)
        _rewrite(group, "labels", "components", holes[holes > 0].astype(np.uint32), client, add=True)
    if "components" in group:
        del group["components"]


def run_classical(image: zarr.Array, model: Model, group: zarr.Group, *, client: Any,
                  chunks: Sequence[int] | None = None, probabilities: bool = False,
                  valid: zarr.Array | None = None) -> InferenceResult:
    """Segment ``image`` (C, *spatial) into ``group['labels']`` with the card's classical method;
    global statistics count only ``valid`` pixels (*spatial, bool) when given."""
    import dask
    import dask.array as da

    spec = model.card.classical
    assert spec is not None
    if probabilities:
        raise SettingsError(f"model {model.name!r} is classical: it gives labels, not probabilities")
    if image.shape[0] != model.card.in_channels:
        raise InputError(f"model {model.name!r} needs {model.card.in_channels} channel(s), "
                         f"the input has {image.shape[0]}")
    method = METHODS[spec.method]
    spatial = tuple(int(n) for n in image.shape[1:])
    block = tuple(chunks) if chunks else tuple(int(c) for c in image.chunks[1:])
    start = time.perf_counter()
    raw = da.from_zarr(image) if isinstance(image, zarr.Array) else image.to_dask()  # else: read in place
    x = raw[0].rechunk(block)
    mask = None if valid is None else da.from_zarr(valid).rechunk(block)
    with dask.config.set(scheduler=client):  # this run's cluster, not whichever client is the default
        stats = method.statistics(x, spec.params, mask) if method.statistics else {}
        if stats:
            logger.info("%s: %s statistics %s", model.name, spec.method, stats)
        halo = method.halo(spec.params)
        depth = tuple(min(halo, n - 1) for n in spatial)
        result = da.map_overlap(method.local, x, depth=depth, boundary="none", dtype=np.uint8, trim=True,
                                params=spec.params, stats=stats).rechunk(block)
        labels = create_array(group, "labels", shape=spatial, chunks=block, dtype=np.uint8, channel_axis=False,
                              attributes={**dict(image.attrs), "classical": {"method": spec.method, "halo": halo,
                                                                             "statistics": stats}})
        da.store(result, labels, lock=False)  # type: ignore[arg-type]  # dask types targets as NumPy; zarr works
    finish(group, spec.method, spec.params, client)
    blocks = math.prod(math.ceil(n / c) for n, c in zip(spatial, block, strict=True))
    return InferenceResult(labels=labels, probabilities=None, seconds=time.perf_counter() - start, windows=0,
                           blocks=blocks, chunks=block)
