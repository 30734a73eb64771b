"""Intensity preprocessing that gives on one chunk what it gives on the whole image.

Every card step is pointwise once its global statistics are known (mean/std, min/max, percentiles).
:func:`statistics` takes them in streaming passes (NumPy or Dask input), one step after the other on
the output of the steps before it, so a chain such as a bundle's ``NormalizeIntensityd(nonzero)`` then
``ScaleIntensityd`` matches MONAI on the whole image; :func:`apply` is then a pure function of a chunk.
Values are per channel (a list) with ``channel_wise``, else one value for the whole image.

Part of the model, below the engine: a :class:`~pipeline.model.models.Model` preprocesses through this module, and
the engine only calls the model's ``statistics`` / ``preprocess_block``. After preprocessing, a raster's invalid
pixels (nodata value, alpha, GDAL mask, NaN) become :data:`NEUTRAL` (:func:`neutralise`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.config.preprocess import MinMax, Percentiles, WindowScale, ZScore, preprocess_steps

Statistics = dict[str, Any]  #: {"steps": [per-step values]}, or {} for purely pointwise preprocessing

#: The network-input value of an invalid pixel: 0, the value MONAI's ``sliding_window_inference``
#: (and this engine) pads with beyond the image, and training pads with (``training.recipe.pad``),
#: so nodata reads as "outside the scene", which is what it is. For ``zscore`` 0 is also the mean.
NEUTRAL = 0.0


def neutralise(block: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """``block`` (C, *spatial), preprocessed, with every invalid pixel set to :data:`NEUTRAL` (in place)."""
    if valid is not None:
        block[:, ~np.asarray(valid, dtype=bool)] = NEUTRAL
    return block


def _axes(array: Any, channel_wise: bool) -> tuple[int, ...] | None:
    return tuple(range(1, array.ndim)) if channel_wise else None


def _compute(*values: Any) -> list[Any]:
    if any(hasattr(v, "compute") for v in values):
        import dask

        values = dask.compute(*values)
    return [np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in values]


def _zscore_statistics(step: ZScore, x: Any, valid: Any = None) -> dict[str, list[float]]:
    axes = _axes(x, step.channel_wise)
    values = x.astype(np.float64)
    mask = None
    if step.threshold is not None:
        mask = values > step.threshold
    elif step.nonzero:
        mask = values != 0
    if valid is not None:
        mask = valid & (values == values) if mask is None else mask & valid  # (C, *spatial) for the sums
    if mask is not None:
        count, total, squares = mask.sum(axis=axes), (values * mask).sum(axis=axes), (values**2 * mask).sum(axis=axes)
    else:
        count = np.prod([x.shape[a] for a in axes]) if axes else x.size
        total, squares = values.sum(axis=axes), (values**2).sum(axis=axes)
    count, total, squares = _compute(count, total, squares)
    count = np.maximum(count, 1.0)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return {"mean": mean.tolist(), "std": np.where(std > 0, std, 1.0).tolist()}


def _minmax_statistics(step: MinMax, x: Any, valid: Any = None) -> dict[str, list[float]]:
    axes = _axes(x, step.channel_wise)
    if valid is None:
        low, high = _compute(x.min(axis=axes), x.max(axis=axes))
    else:
        where = _where_for(x)
        low, high = _compute(where(valid, x, np.inf).min(axis=axes), where(valid, x, -np.inf).max(axis=axes))
    return {"min": low.tolist(), "max": high.tolist()}


def _where_for(x: Any) -> Any:
    if hasattr(x, "map_blocks"):
        import dask.array as da

        return da.where
    return np.where


def _value_counts(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(block, dtype=np.float32)
    values, counts = np.unique(data[~np.isnan(data)], return_counts=True)  # NaN: left out (nodata)
    return values, counts


def _percentile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """``np.percentile(a, q)`` (linear) of the array whose sorted distinct values and counts are given."""
    ends = np.cumsum(counts)
    position = q / 100.0 * (ends[-1] - 1)
    lo, hi = int(np.floor(position)), int(np.ceil(position))
    a, b = (float(values[np.searchsorted(ends, k, side="right")]) for k in (lo, hi))
    return a + (b - a) * (position - lo)


def _merged_counts(channel: Any) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their counts over the whole channel, one chunk at a time."""
    if hasattr(channel, "to_delayed"):
        import dask

        parts = dask.compute(*[dask.delayed(_value_counts)(b) for b in channel.to_delayed().ravel()])
    else:
        parts = [_value_counts(channel)]
    values, inverse = np.unique(np.concatenate([v for v, _ in parts]), return_inverse=True)
    counts = np.zeros(len(values), dtype=np.int64)
    np.add.at(counts, inverse, np.concatenate([c for _, c in parts]))
    return values, counts


def _percentile_statistics(step: Percentiles, x: Any, valid: Any = None) -> dict[str, list[float]]:
    if valid is not None:
        x = _where_for(x)(valid, x.astype(np.float32), np.float32(np.nan))
    channels = [x[c] for c in range(x.shape[0])] if step.channel_wise else [x]
    low, high = [], []
    for channel in channels:
        values, counts = _merged_counts(channel)
        low.append(_percentile(values, counts, step.lower))
        high.append(_percentile(values, counts, step.upper))
    return {"a_min": low, "a_max": high}


def _column(values: list[float], ndim: int) -> np.ndarray:
    """Per-channel values shaped to broadcast over (C, *spatial); one value stays a scalar array."""
    array = np.asarray(values, dtype=np.float32)
    return array.reshape((-1,) + (1,) * (ndim - 1)) if array.size > 1 else array.reshape(())


def _scale_range(data: np.ndarray, a_min: Any, a_max: Any, b_min: float, b_max: float, clip: bool) -> np.ndarray:
    """MONAI ``ScaleIntensityRange``: linear a->b (a_max == a_min: shift only), then optional clip to b."""
    span = a_max - a_min
    safe = np.where(span == 0, np.float32(1), span)
    out = np.where(span == 0, data - a_min + np.float32(b_min),
                   (data - a_min) / safe * np.float32(b_max - b_min) + np.float32(b_min))
    return np.clip(out, b_min, b_max) if clip else out


def apply_step(step: Any, data: np.ndarray, values: dict[str, list[float]]) -> np.ndarray:
    """One step on a float32 chunk (C, *spatial), given its global ``values``."""
    if isinstance(step, WindowScale):
        scale = (step.b_max - step.b_min) / (step.a_max - step.a_min)
        clipped = np.clip(data, step.a_min, step.a_max) if step.clip else data
        out = (clipped - np.float32(step.a_min)) * np.float32(scale)
        return out + np.float32(step.b_min)
    if isinstance(step, ZScore):
        mean, std = _column(values["mean"], data.ndim), _column(values["std"], data.ndim)
        out = (data - mean) / std
        return np.where(data != 0, out, data) if step.nonzero else out
    if isinstance(step, MinMax):
        low, high = _column(values["min"], data.ndim), _column(values["max"], data.ndim)
        span = high - low
        scaled = (data - low) / np.where(span == 0, np.float32(1), span) * np.float32(step.maxv - step.minv)
        return np.where(span == 0, data * np.float32(step.minv), scaled + np.float32(step.minv))
    if isinstance(step, Percentiles):
        b_min, b_max = step.b_min, step.b_max
        if step.relative:
            b_min, b_max = (step.b_max - step.b_min) * step.lower / 100 + step.b_min, \
                (step.b_max - step.b_min) * step.upper / 100 + step.b_min
        return _scale_range(data, _column(values["a_min"], data.ndim), _column(values["a_max"], data.ndim),
                            b_min, b_max, step.clip)
    raise TypeError(f"unknown preprocessing step {step!r}")


def apply(preprocess: Any, block: Any, stats: Statistics) -> np.ndarray:
    """All steps on one chunk (C, *spatial) -> float32 (invalid pixels: see ``models.apply_preprocess``)."""
    data = np.array(block, dtype=np.float32)  # a copy, always: the steps may work in it in place
    steps = preprocess_steps(preprocess)
    per_step = stats.get("steps") or [{}] * len(steps)
    for step, values in zip(steps, per_step, strict=True):
        if not _in_place(step, data, values):
            data = apply_step(step, data, values).astype(np.float32, copy=False)
    return data


def _in_place(step: Any, data: np.ndarray, values: dict[str, list[float]]) -> bool:
    """:func:`apply_step` for the pointwise steps, computed in ``data`` itself: the same float32 operations in
    the same order (so the same bits), without the two or three block-sized temporaries. False: not done."""
    if isinstance(step, WindowScale):
        if step.clip:
            np.clip(data, step.a_min, step.a_max, out=data)
        data -= np.float32(step.a_min)
        data *= np.float32((step.b_max - step.b_min) / (step.a_max - step.a_min))
        data += np.float32(step.b_min)
        return True
    if isinstance(step, ZScore) and not step.nonzero:
        data -= _column(values["mean"], data.ndim)
        data /= _column(values["std"], data.ndim)
        return True
    return False


def needs_statistics(preprocess: Any) -> bool:
    """Whether ``preprocess`` needs global statistics of the image (a pointwise window needs none)."""
    return not all(isinstance(step, WindowScale) for step in preprocess_steps(preprocess))


def statistics(preprocess: Any, array: Any, valid: Any = None) -> Statistics:
    """Global statistics of every step, each on the output of the steps before it (streamed for Dask).

    With ``valid`` (*spatial, bool), only valid pixels count: nodata never shifts a statistic."""
    if not needs_statistics(preprocess):
        return {}
    steps = preprocess_steps(preprocess)
    measure: dict[type, Callable[[Any, Any, Any], dict[str, list[float]]]] = {
        ZScore: _zscore_statistics, MinMax: _minmax_statistics, Percentiles: _percentile_statistics}
    found: list[dict[str, list[float]]] = []
    x = array.rechunk({0: -1}) if hasattr(array, "rechunk") else array  # per-channel values need whole channels
    keep = None if valid is None else valid[None]
    if keep is not None and hasattr(x, "chunks") and hasattr(keep, "rechunk"):
        keep = keep.rechunk((1, *x.chunks[1:]))
    for step in steps:
        values = measure[type(step)](step, x, keep) if type(step) in measure else {}
        found.append(values)
        if hasattr(x, "map_blocks"):
            x = x.map_blocks(lambda b, s=step, v=values: apply_step(s, np.asarray(b, np.float32), v).astype(np.float32),
                             dtype=np.float32)
        else:
            x = apply_step(step, np.asarray(x, dtype=np.float32), values).astype(np.float32)
    return {"steps": found}
