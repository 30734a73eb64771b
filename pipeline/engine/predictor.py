"""The predictor: evaluate one block task's windows and blend them (overlap-add).

Runs inside Dask workers. Returns the weighted sum of network outputs and the
sum of weights over the task's span; dividing is left to the merger, because a
voxel near a block border also receives windows from neighbouring tasks.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.engine.alignment import WindowAlignment
from pipeline.engine.forward import window_forward
from pipeline.engine.tta import mirrored, scan_axes
from pipeline.engine.validity import windows_with_data

logger = logging.getLogger(__name__)

#: Windows this process has evaluated so far (read by benchmarks through ``client.run``).
_windows_evaluated = [0]


def windows_evaluated() -> int:
    """Windows evaluated by this process since it started: a measurement, not the plan."""
    return _windows_evaluated[0]


@dataclass(frozen=True, slots=True)
class InferenceSettings:
    """Everything about how windows are evaluated and blended, besides the data and network."""

    roi_size: tuple[int, ...]
    overlap: tuple[float, ...]
    mode: str = "gaussian"
    sigma_scale: float = 0.125
    sw_batch_size: int = 4
    device: str | None = None  #: None: CUDA when available, else CPU
    amp: bool | None = None  #: None: automatic mixed precision exactly when on CUDA
    #: maps each window (``roi_size`` in scan voxels) to the network's orientation and voxel size and back
    alignment: WindowAlignment | None = None
    #: the network's output channels: sizes the (empty) result of a task whose windows all hold only nodata
    out_channels: int | None = None
    #: CPU inference backend (:data:`pipeline.config.choices.BACKENDS`); only for networks known by a
    #: weights sha256 (a ``ModelRef``): a bare torch module always runs on torch
    backend: str = "auto"
    #: test-time mirroring (:mod:`pipeline.engine.tta`): the network's spatial axes whose 2^n mirrorings
    #: are averaged; () for none
    mirror_axes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Partial:
    """A predict task's result: blended sums over padded span ``[lo, lo + shape)``."""

    lo: tuple[int, ...]
    sums: np.ndarray  #: (C_out + 1, *span): sum of importance * output per channel, then sum of importance
    n_windows: int

    @property
    def weighted(self) -> np.ndarray:
        return self.sums[:-1]

    @property
    def weights(self) -> np.ndarray:
        return self.sums[-1]


def _pipelined(forward: Any, source: np.ndarray,
               batches: list[list[tuple[slice, ...]]]) -> Iterator[tuple[list[tuple[slice, ...]], np.ndarray]]:
    """Each batch's boxes and network outputs, in order, with the next batch's forward already running.

    The forward (OpenVINO or torch) releases the GIL, so blending one batch overlaps the network's
    next call instead of waiting for it; the cores the network leaves idle between its layers do the
    blending. At most two batches of outputs are alive at once.
    """
    def run(boxes: list[tuple[slice, ...]]) -> np.ndarray:
        return forward(np.stack([source[(slice(None), *box)] for box in boxes]))

    if len(batches) == 1:
        yield batches[0], run(batches[0])
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="volseg-forward") as pool:
        pending = pool.submit(run, batches[0])
        for n, boxes in enumerate(batches):
            outputs = pending.result()
            if n + 1 < len(batches):
                pending = pool.submit(run, batches[n + 1])
            yield boxes, outputs


@functools.lru_cache(maxsize=8)
def importance_map(roi_size: tuple[int, ...], mode: str, sigma_scale: float | tuple[float, ...]) -> np.ndarray:
    """MONAI's importance map (``monai.data.utils.compute_importance_map``), the same float32 operations in
    NumPy (equal to a few ulps: the two libraries' ``exp`` differ), so blending matches MONAI's without importing it."""
    if mode == "constant":
        weight = np.ones(roi_size, dtype=np.float32)
    elif mode == "gaussian":
        scales = sigma_scale if isinstance(sigma_scale, tuple) else (sigma_scale,) * len(roi_size)
        weight = np.ones((), dtype=np.float32)
        for axis, (size, scale) in enumerate(zip(roi_size, scales, strict=True)):
            sigma = size * scale
            x = np.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1, dtype=np.float32)
            x = np.exp(x**2 / (-2 * sigma**2))  # NumPy 2 keeps float32 with a Python scalar, as torch does
            weight = weight[..., None] * x[(None,) * axis] if axis else x
    else:
        raise ValueError(f"unsupported blend mode {mode!r} (constant, gaussian)")
    return np.maximum(weight, max(float(weight.min()), 1e-3)).astype(np.float32)


def predict_group(
    region: np.ndarray,
    lo: tuple[int, ...],
    starts: tuple[tuple[int, ...], ...],
    network: Any,
    settings: InferenceSettings,
    valid: np.ndarray | None = None,
) -> Partial:
    """Evaluate every window whose start is in the product of ``starts`` (padded coords).

    ``region`` is the preprocessed input (C, *span) for padded span starting at ``lo``,
    with zeros where MONAI would pad. With ``valid`` (*span, False where padded), windows
    holding no valid pixel are skipped: they add neither output nor weight.
    """
    weight = importance_map(settings.roi_size, settings.mode, settings.sigma_scale)
    span = region.shape[1:]
    sums: np.ndarray | None = None
    corners = list(itertools.product(*starts))
    if valid is not None:
        corners = [c for c, keep in zip(corners, windows_with_data(valid, lo, corners, settings.roi_size),
                                        strict=True) if keep]
        if not corners:
            assert settings.out_channels is not None, "skipping windows needs settings.out_channels"
            return Partial(lo=lo, sums=np.zeros((settings.out_channels + 1, *span), dtype=np.float32), n_windows=0)
    source = np.ascontiguousarray(region, dtype=np.float32)
    forward = window_forward(network, settings, in_channels=int(source.shape[0]))
    forward = mirrored(forward, scan_axes(settings.mirror_axes, settings.alignment))
    batches = [[tuple(slice(c - o, c - o + r) for c, o, r in zip(corner, lo, settings.roi_size, strict=True))
                for corner in corners[first : first + settings.sw_batch_size]]
               for first in range(0, len(corners), settings.sw_batch_size)]
    for boxes, outputs in _pipelined(forward, source, batches):
        if sums is None:
            sums = np.zeros((outputs.shape[1] + 1, *span), dtype=np.float32)
        for box, out in zip(boxes, outputs, strict=True):
            target = sums[(slice(None), *box)]
            out = np.multiply(out, weight, out=out if out.flags.writeable else None)
            target[:-1] += out
            target[-1] += weight
    assert sums is not None  # every task owns at least one window
    _windows_evaluated[0] += len(corners)
    return Partial(lo=lo, sums=sums, n_windows=len(corners))
