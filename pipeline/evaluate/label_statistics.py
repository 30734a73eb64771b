"""``--statistics``: intensity of the input inside each label, in one streaming pass over chunks.

Each chunk gives a small :class:`Accumulator` (per label and channel: count, mean and sum of squared
deviations, min, max, and a sparse histogram); accumulators combine exactly and in any order (Chan et
al.'s pairwise update for the moments), so mean, std, min and max equal NumPy's on the whole array.
Percentiles come from the histogram: integer inputs (CT HU, 8/16-bit bands) are binned by their exact
value (bin width 1), so median / p5 / p95 equal ``np.percentile`` too; float inputs are binned by
their float32 value with the lowest mantissa bits dropped (relative bin width 2^-10, about 0.1%).
Invalid pixels (raster nodata) count nowhere. Memory is bounded by the distinct (label, bin) pairs.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config.cards import Label
from pipeline.geometry import block_slices
from pipeline.model.intensity import _percentile

#: Mantissa bits kept when binning float32 values: relative bin width 2^-FLOAT_BITS.
FLOAT_BITS = 10
_DROP = 23 - FLOAT_BITS
_SPAN = 1 << 34  #: bins per label in the combined (label, bin) code; integer bins are offset by 2^33
_OFFSET = 1 << 33
#: How many accumulators one reduce task combines.
FAN_IN = 8
PERCENTILES = {"p5": 5.0, "median": 50.0, "p95": 95.0}


@dataclass(frozen=True)
class Accumulator:
    """Combinable statistics of one or more chunks; arrays are (channels, labels)."""

    count: np.ndarray  #: (L,) valid voxels per label
    mean: np.ndarray
    m2: np.ndarray  #: sum of squared deviations from ``mean``
    low: np.ndarray
    high: np.ndarray
    codes: tuple[np.ndarray, ...]  #: per channel: sorted ``label * 2^34 + bin``
    counts: tuple[np.ndarray, ...]  #: per channel: occurrences of each code


def histogram_bins(values: np.ndarray, integer: bool) -> np.ndarray:
    """Non-negative int64 bins, ordered like the values: the value itself for integers, the float32
    bit pattern (sign folded so order is kept) without its lowest mantissa bits for floats."""
    if integer:
        return values.astype(np.int64) + _OFFSET
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.int32).astype(np.int64)
    ordered = np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)  # monotonic in the value; -0.0 == 0.0
    return (ordered >> _DROP) + _OFFSET


def bin_values(bins: np.ndarray, integer: bool) -> np.ndarray:
    """The value a bin stands for: itself for integers, the middle of its float range otherwise."""
    if integer:
        return (bins - _OFFSET).astype(np.float64)
    lo = (bins - _OFFSET) << _DROP
    ends = []
    for ordered in (lo, lo + (1 << _DROP) - 1):  # undo the sign fold, then read the bits as float32
        bits = np.where(ordered >= 0, ordered, (-ordered) | (1 << 31)).astype(np.uint32)
        ends.append(bits.view(np.float32).astype(np.float64))
    return (ends[0] + ends[1]) / 2


def block_accumulator(image: np.ndarray, labels: np.ndarray, valid: np.ndarray | None, n_labels: int,
                      integer: bool) -> Accumulator:
    """Statistics of one chunk: ``image`` (C, *s), ``labels`` (*s) in [0, n_labels), ``valid`` (*s) or None."""
    keep = labels < n_labels if valid is None else valid & (labels < n_labels)
    lab = labels[keep].astype(np.int64)
    count = np.bincount(lab, minlength=n_labels).astype(np.int64)
    safe = np.maximum(count, 1)
    shape = (image.shape[0], n_labels)
    mean, m2 = np.zeros(shape), np.zeros(shape)
    low, high = np.full(shape, np.inf), np.full(shape, -np.inf)
    codes, counts = [], []
    for c in range(image.shape[0]):
        x = image[c][keep]
        xf = x.astype(np.float64)
        mean[c] = np.bincount(lab, weights=xf, minlength=n_labels) / safe
        m2[c] = np.bincount(lab, weights=(xf - mean[c][lab]) ** 2, minlength=n_labels)
        np.minimum.at(low[c], lab, xf)
        np.maximum.at(high[c], lab, xf)
        code, n = np.unique(lab * _SPAN + histogram_bins(x, integer), return_counts=True)
        codes.append(code)
        counts.append(n.astype(np.int64))
    return Accumulator(count, mean, m2, low, high, tuple(codes), tuple(counts))


def _merge_counts(codes: Sequence[np.ndarray], counts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    merged, inverse = np.unique(np.concatenate(codes), return_inverse=True)
    return merged, np.bincount(inverse, weights=np.concatenate(counts), minlength=len(merged)).astype(np.int64)


def combine(a: Accumulator, b: Accumulator) -> Accumulator:
    """Statistics of the union of two disjoint sets of voxels (exact for the moments)."""
    n = a.count + b.count
    safe = np.maximum(n, 1)
    delta = b.mean - a.mean
    mean = a.mean + delta * b.count / safe
    m2 = a.m2 + b.m2 + delta**2 * (a.count * b.count / safe)
    merged = [_merge_counts((ca, cb), (na, nb)) for ca, cb, na, nb in zip(a.codes, b.codes, a.counts, b.counts,
                                                                              strict=True)]
    return Accumulator(n, mean, m2, np.minimum(a.low, b.low), np.maximum(a.high, b.high),
                       tuple(m[0] for m in merged), tuple(m[1] for m in merged))


def combine_all(*parts: Accumulator) -> Accumulator:
    result = parts[0]
    for part in parts[1:]:
        result = combine(result, part)
    return result


def _block_task(image: Any, labels: Any, valid: Any, box: tuple[slice, ...], n_labels: int,
                integer: bool) -> Accumulator:
    keep = None if valid is None else np.asarray(valid[box], dtype=bool)
    return block_accumulator(np.asarray(image[(slice(None), *box)]), np.asarray(labels[box]), keep, n_labels, integer)


def accumulate(image: Any, labels: Any, valid: Any = None, *, n_labels: int, client: Any = None) -> Accumulator:
    """One pass over the label array's chunks (``image`` (C, *spatial), ``labels`` and ``valid`` (*spatial),
    NumPy or Zarr), reduced in a tree of :data:`FAN_IN` on ``client`` (or Dask's threads)."""
    import dask

    integer = np.issubdtype(np.dtype(image.dtype), np.integer)
    chunks = getattr(labels, "chunks", None) or labels.shape
    task = dask.delayed(_block_task, pure=False)
    parts = [task(image, labels, valid, box, n_labels, integer) for box in block_slices(labels.shape, chunks)]
    while len(parts) > 1:
        parts = [dask.delayed(combine_all, pure=False)(*parts[i : i + FAN_IN]) for i in range(0, len(parts), FAN_IN)]
    return client.compute(parts[0]).result() if client is not None else parts[0].compute(scheduler="threads")


def _channel_percentiles(acc: Accumulator, c: int, label: int, integer: bool) -> dict[str, float]:
    codes, counts = acc.codes[c], acc.counts[c]
    lo, hi = np.searchsorted(codes, [label * _SPAN, (label + 1) * _SPAN])
    values = bin_values(codes[lo:hi] - label * _SPAN, integer)
    return {name: _percentile(values, counts[lo:hi], q) for name, q in PERCENTILES.items()}


def bin_width(integer: bool) -> str:
    """The histogram's bin width, as the report states it."""
    return "1 (exact values)" if integer else f"relative 2^-{FLOAT_BITS} of the value (float32 bins)"


def statistics_rows(acc: Accumulator, labels: Mapping[int, Label], *, integer: bool, unit_size: float | None,
                    size_key: str, channel_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per label and channel: count, size (``unit_size`` per voxel/pixel), mean, std, min, max,
    p5, median, p95 (None for an empty label)."""
    rows = []
    for label, c in itertools.product(range(len(acc.count)), range(len(channel_names))):
        n = int(acc.count[label])
        row: dict[str, Any] = {"label": label, "name": labels[label].name if label in labels else f"label_{label}",
                               "channel": channel_names[c], "count": n,
                               size_key: None if unit_size is None else round(n * unit_size, 6)}
        if n:
            row.update({"mean": float(acc.mean[c, label]), "std": float(np.sqrt(acc.m2[c, label] / n)),
                        "min": float(acc.low[c, label]), "max": float(acc.high[c, label]),
                        **_channel_percentiles(acc, c, label, integer)})
        else:
            row.update(dict.fromkeys(("mean", "std", "min", "max", *PERCENTILES)))
        rows.append(row)
    return rows


@dataclass(frozen=True, slots=True)
class StatisticsUnits:
    """How a statistics section names its values and sizes."""

    unit: str  #: what the values are (e.g. HU for CT, band values)
    size_key: str  #: the rows' size column (``volume_ml``, ``area_ha``)
    unit_size: float | None  #: size of one voxel or pixel in that column's unit (None: unknown)
    channel_names: Sequence[str]  #: one per image channel


def label_statistics(image: Any, labels: Any, valid: Any = None, *, names: Mapping[int, Label], n_labels: int,
                     units: StatisticsUnits, client: Any = None) -> dict[str, Any]:
    """The report's ``statistics`` section: rows per label and channel, the unit and the bin width."""
    integer = bool(np.issubdtype(np.dtype(image.dtype), np.integer))
    acc = accumulate(image, labels, valid, n_labels=n_labels, client=client)
    return {"unit": units.unit, "bin_width": bin_width(integer), "percentiles": "linear (numpy default)",
            "rows": statistics_rows(acc, names, integer=integer, unit_size=units.unit_size, size_key=units.size_key,
                                    channel_names=units.channel_names)}


STAT_KEYS = ("mean", "std", "min", "max", "p5", "median", "p95")


def add_to_label_rows(rows: list[dict[str, Any]], section: Mapping[str, Any]) -> None:
    """Copy the statistics into the report's label rows (so the CSV has them): ``mean``... for one
    channel, ``<channel>_mean``... per channel otherwise."""
    by_label = {row["label"]: row for row in rows}
    channels = {row["channel"] for row in section["rows"]}
    for stat in section["rows"]:
        prefix = "" if len(channels) == 1 else f"{stat['channel'].replace(' ', '')}_"
        target = by_label.get(stat["label"])
        if target is not None:
            target.update({f"{prefix}{key}": stat[key] for key in STAT_KEYS})


def volume_statistics(group: Any, names: Mapping[int, Label], n_labels: int, voxel_ml: float,
                      client: Any = None) -> dict[str, Any]:
    """Statistics of a volume work store (``image`` (1, *spatial) in scaled scan values, ``labels``)."""
    units = StatisticsUnits(unit="scan values after scl_slope/scl_inter: HU for CT", size_key="volume_ml",
                            unit_size=voxel_ml, channel_names=["scan"])
    return label_statistics(group["image"], group["labels"], names=names, n_labels=n_labels, units=units, client=client)


def raster_statistics(group: Any, names: Mapping[int, Label], n_labels: int, bands: Sequence[int],
                      hectares_per_pixel: float | None, client: Any = None) -> dict[str, Any]:
    """Statistics of a raster work store (``image`` (C, y, x) band values, ``labels``, ``valid``); the
    area is None where the CRS has no metres (degrees, none), as in the label rows."""
    units = StatisticsUnits(unit="band values, valid pixels only", size_key="area_ha", unit_size=hectares_per_pixel,
                            channel_names=[f"band {b}" for b in bands])
    return label_statistics(group["image"], group["labels"], group["valid"], names=names, n_labels=n_labels,
                            units=units, client=client)
