"""``sliding_window``: MONAI's sliding-window inference as a Dask graph.

Two task layers: *predict* tasks (one per window group, see :mod:`.windows`) read
their input span and return blended partial sums; *merge* tasks (one per output
block) add the partials that touch their block and divide by the weight sum.
The result equals ``monai.inferers.sliding_window_inference`` on the whole image,
with each of MONAI's windows evaluated exactly once.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.engine.merger import merge_block
from pipeline.engine.predictor import InferenceSettings, predict_group
from pipeline.engine.windows import padded_index, parse_overlap, parse_roi_size, plan_blocks, window_grid
from pipeline.errors import SettingsError

logger = logging.getLogger(__name__)

#: Default output block side per spatial axis (voxels), by number of spatial dims. Measured on a
#: 3600^2 scene (roi 128, 2 workers): 512 -> 11.0 s / 1748 MB, 768 -> 8.4 s / 1759 MB,
#: 1024 -> 7.7 s / 1801 MB peak RSS; smaller blocks add task overhead, larger ones hold more memory.
DEFAULT_CHUNK = {2: 768, 3: 128}


def default_chunks(roi_size: Sequence[int]) -> tuple[int, ...]:
    """Blocks of at least 2 rois per side, so most windows stay inside one block."""
    base = DEFAULT_CHUNK.get(len(roi_size), 128)
    return tuple(max(base, 2 * r) for r in roi_size)


def _as_dask(x: Any) -> Any:
    import dask.array as da

    if isinstance(x, da.Array):
        return x
    chunks = getattr(x, "chunks", None)
    return da.from_array(x, chunks=chunks if isinstance(chunks, tuple) else "auto", asarray=True)


def _padded_region(x: Any, lo: Sequence[int], hi: Sequence[int],
                   pads: Sequence[int]) -> tuple[Any, list[tuple[int, int]]]:
    """The part of ``x`` under padded span [lo, hi), and the zero padding that completes it."""
    index, padding = padded_index(x.shape[1:], lo, hi, pads)
    return x[(slice(None), *index)], [(0, 0), *padding]


def _predict(region: np.ndarray, padding: list[tuple[int, int]], lo: tuple[int, ...],
             starts: tuple[tuple[int, ...], ...], network: Any, settings: InferenceSettings,
             valid: np.ndarray | None = None) -> Any:
    if any(p != (0, 0) for p in padding):
        region = np.pad(np.asarray(region, dtype=np.float32), padding, mode="constant", constant_values=0)
    if valid is not None:  # (1, *span): padding is not data
        valid = np.pad(np.asarray(valid, dtype=bool), padding, mode="constant", constant_values=False)[0]
    return predict_group(region, lo, starts, network, settings, valid)


@dataclass(frozen=True)
class MergeTask:
    """One output block: where it goes and the predict tasks (Dask delayed ``Partial``s) that touch it."""

    region: tuple[slice, ...]  #: output region, image coordinates
    lo: tuple[int, ...]  #: the same span in padded coordinates
    hi: tuple[int, ...]
    partials: list[Any]


def merge_tasks(x: Any, network: Any, settings: InferenceSettings, *, chunks: Sequence[int] | None = None,
                client: Any = None, valid: Any = None) -> list[MergeTask]:
    """Plan the graph: one predict task per window group, and for each output block the partials it sums.

    ``network`` is a torch module or a handle whose ``.network()`` loads one per worker
    (:class:`pipeline.model.models.ModelRef`). With a distributed ``client``, a torch module is
    scattered to the workers once instead of travelling with every task. With ``valid``
    (a boolean Dask array of the spatial shape), windows holding no valid pixel are not evaluated
    (``settings.out_channels`` must then be set).
    """
    import dask

    x = _as_dask(x)
    valid = None if valid is None else _as_dask(valid)
    grid = window_grid(tuple(int(n) for n in x.shape[1:]), settings.roi_size, settings.overlap)
    plan = plan_blocks(grid, chunks or default_chunks(settings.roi_size))
    if client is not None and not hasattr(network, "network"):
        network = client.scatter(network, broadcast=True, hash=False)
    net = dask.delayed(network, pure=True, traverse=False) if not hasattr(network, "key") else network
    pads = tuple(a.pad_before for a in grid.axes)
    partials = {}
    for key in plan.group_keys():
        groups = [a.groups[i] for a, i in zip(plan.axes, key, strict=True)]
        lo, hi = tuple(g.lo for g in groups), tuple(g.hi for g in groups)
        region, padding = _padded_region(x, lo, hi, pads)
        mask = None if valid is None else _padded_region(valid[None], lo, hi, pads)[0]
        partials[key] = dask.delayed(_predict, pure=True)(
            region, padding, lo, tuple(g.starts for g in groups), net, settings, mask)
    logger.debug("plan: %d predict tasks, %d windows", len(partials), plan.n_windows)
    tasks = []
    for key in plan.block_keys():
        spans = [a.blocks[i] for a, i in zip(plan.axes, key, strict=True)]
        sources = itertools.product(*(a.contributors(i) for a, i in zip(plan.axes, key, strict=True)))
        tasks.append(MergeTask(region=tuple(slice(lo, hi) for lo, hi in spans),
                               lo=tuple(s[0] + p for s, p in zip(spans, pads, strict=True)),
                               hi=tuple(s[1] + p for s, p in zip(spans, pads, strict=True)),
                               partials=[partials[s] for s in sources]))
    return tasks


def blend(x: Any, network: Any, settings: InferenceSettings, *, out_channels: int,
          chunks: Sequence[int] | None = None, client: Any = None) -> Any:
    """The lazy (C_out, *spatial) float32 Dask array of blended network outputs (see :func:`merge_tasks`)."""
    import dask
    import dask.array as da

    tasks = merge_tasks(x, network, settings, chunks=chunks, client=client)
    starts = [sorted({t.region[axis].start for t in tasks}) for axis in range(len(tasks[0].region))]
    blocks = np.empty([len(s) for s in starts], dtype=object)
    for task in tasks:
        index = tuple(s.index(r.start) for s, r in zip(starts, task.region, strict=True))
        merged = dask.delayed(merge_block, pure=True)(task.partials, task.lo, task.hi)
        shape = (out_channels, *(r.stop - r.start for r in task.region))
        blocks[index] = da.from_delayed(merged, shape=shape, dtype=np.float32)
    return da.block(blocks.tolist())


def count_windows(shape: Sequence[int], roi_size: int | Sequence[int], overlap: float | Sequence[float] = 0.25) -> int:
    """How many windows MONAI (and this engine) evaluate on an image of spatial ``shape``."""
    roi = parse_roi_size(roi_size, shape)
    return window_grid(shape, roi, parse_overlap(overlap, len(shape))).n_windows


def infer_out_channels(network: Any, in_channels: int, roi_size: Sequence[int]) -> int:
    """Output channels of ``network``: from its ``out_channels`` attribute, else a shape-only run on the meta device."""
    import copy

    import torch

    value = getattr(network, "out_channels", None)
    if isinstance(value, int):
        return value
    try:
        probe = copy.deepcopy(network).to("meta")
        with torch.inference_mode():
            return int(probe(torch.empty((1, in_channels, *roi_size), device="meta")).shape[1])
    except Exception as e:  # a network that cannot run on meta tensors
        raise SettingsError("cannot tell the network's output channels; give it an `out_channels` attribute") from e


def sliding_window(
    x: Any,
    network: Any,
    roi_size: int | Sequence[int],
    overlap: float | Sequence[float] = 0.25,
    *,
    mode: str = "gaussian",
    sw_batch_size: int = 4,
    chunks: int | Sequence[int] | None = None,
    client: Any = None,
) -> Any:
    """Sliding-window inference over a (C, *spatial) array too big for memory.

    Equal to ``monai.inferers.sliding_window_inference(x[None], roi_size, sw_batch_size,
    network, overlap, mode=mode)[0]`` for any roi size, overlap and shape MONAI accepts
    (a roi larger than the image is zero-padded exactly as MONAI does).

    Parameters
    ----------
    x : NumPy, Zarr or Dask array, (C, y, x) or (C, z, y, x), already preprocessed.
    network : torch module mapping (B, C, *roi) -> (B, C_out, *roi).
    roi_size : window size per spatial axis (an int for all; <= 0 means the whole axis).
    overlap : fraction of the roi shared by neighbouring windows, one value or one per axis.
    mode : ``"gaussian"`` or ``"constant"`` blending.
    sw_batch_size : windows per forward pass.
    chunks : output block side(s) in voxels; default :data:`DEFAULT_CHUNK` (at least 2 rois).
    client : a ``distributed.Client``; the network is scattered to its workers once, so compute the
        result on that client (``client.compute(result)``), not on another default scheduler.

    Returns
    -------
    dask.array.Array of float32, (C_out, *spatial): the blended outputs (logits for a U-Net).

    Examples
    --------
    >>> import numpy as np, torch
    >>> net = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    >>> sliding_window(np.zeros((1, 100, 70), np.float32), net, (32, 32)).shape
    (2, 100, 70)
    """
    if mode not in ("gaussian", "constant"):
        raise SettingsError(f"unknown mode {mode!r} (choices: constant, gaussian)")
    x = _as_dask(x)
    spatial = tuple(int(n) for n in x.shape[1:])
    roi = parse_roi_size(roi_size, spatial)
    settings = InferenceSettings(roi_size=roi, overlap=parse_overlap(overlap, len(spatial)), mode=mode,
                                 sw_batch_size=sw_batch_size)
    block = (chunks,) * len(spatial) if isinstance(chunks, int) else chunks
    out_channels = infer_out_channels(network, int(x.shape[0]), roi)
    return blend(x, network, settings, out_channels=out_channels, chunks=block, client=client)
