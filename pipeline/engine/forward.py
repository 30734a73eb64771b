"""One task's network call: (B, C, *roi_scan) float32 NumPy windows -> (B, K, *roi_scan) float32 NumPy outputs.

Two routes give the same numbers (within the backends' parity tolerance):

- **OpenVINO without torch**: on CPU, for a card network whose checked conversion is on disk
  (:func:`pipeline.engine.backends.card_forward`), windows go straight from NumPy to the compiled network; torch
  and MONAI are never imported, which saves seconds of start-up and ~400 MB per process.
- **torch**: everything else (CUDA + AMP, bundles, TorchScript, windows that must be resampled, the first run
  of a card, which converts and records it for the route above).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.device import device_type, inference_threads, return_freed_memory, torch_with_threads
from pipeline.engine import backends

WindowForward = Callable[[np.ndarray], np.ndarray]

#: Voxels per OpenVINO call. It keeps buffers for the largest batch it has seen: four 64x64x32 windows cost
#: ~57 MB more resident memory than one, at the same time per window (``bench/BACKENDS.md``, "Windows per
#: call"). So a call takes at most this many voxels (one such 3D window; four 128x128 2D ones, as the card
#: asks), whatever the card's ``sw_batch_size`` (MONAI's, sized for GPUs; kept on the torch route).
#: Batching changes no output.
OPENVINO_BATCH_VOXELS = 1 << 16


def forward_batch(forward: WindowForward, requested: int) -> int:
    """How many windows to pass ``forward`` at a time: the card's ``requested``, capped by the forward's own
    ``max_batch`` when it has one."""
    return max(1, min(int(requested), int(getattr(forward, "max_batch", requested))))


def window_forward(network: Any, settings: Any, in_channels: int) -> WindowForward:
    """The forward for this task's windows, on the backend the settings and device resolve to.

    ``network`` is a torch module or a handle (``ModelRef``) with ``.network()``, ``.sha256`` and
    ``.identity()``; ``settings`` an :class:`~pipeline.engine.predictor.InferenceSettings`.
    """
    device = device_type(settings.device)
    key = getattr(network, "sha256", None)
    backend = backends.resolve_backend(settings.backend, device) if key else "torch"
    align = settings.alignment
    window = tuple(align.roi_model) if align else tuple(settings.roi_size)
    if backend == "openvino" and not (align and align.resamples) and hasattr(network, "identity"):
        identity = network.identity()
        placement = backends.Placement(inference_threads(), settings.streams)
        compiled = identity and backends.card_forward(identity, in_channels=in_channels, window=window,
                                                      placement=placement)
        if compiled:
            return _numpy_route(compiled, align)
    return _torch_route(network, settings, backend, key, in_channels, window, device)


def resolve_network(network: Any) -> Any:
    """A torch module, or a handle with ``.network()`` that loads it once per process."""
    return network.network() if hasattr(network, "network") and callable(network.network) else network


class _NumpyForward:
    """Windows straight from NumPy to the compiled network and back, at most :data:`OPENVINO_BATCH_VOXELS` a call."""

    def __init__(self, compiled: backends.OpenVINOForward, align: Any) -> None:
        self.compiled, self.align = compiled, align
        self.max_batch = max(1, OPENVINO_BATCH_VOXELS // math.prod(compiled.shape[1:]))

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        return self.into(windows, None)

    def into(self, windows: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """The outputs, written into ``out`` when it has their shape (a buffer the caller reuses), else new."""
        if self.align:
            return np.ascontiguousarray(self.align.to_scan_array(self.compiled.run(
                self.align.to_model_array(windows))))
        return self.compiled.run(windows, out=out)


def _numpy_route(compiled: backends.OpenVINOForward, align: Any) -> WindowForward:
    return_freed_memory()  # no torch in this process: freed block temporaries can go back to the system
    return _NumpyForward(compiled, align)


def _torch_route(network: Any, settings: Any, backend: str, key: str | None, in_channels: int,
                 window: tuple[int, ...], device_kind: str) -> WindowForward:
    torch = torch_with_threads()
    device = torch.device(settings.device) if settings.device is not None else torch.device(device_kind)
    net = resolve_network(network).to(device)
    amp = settings.amp if settings.amp is not None else device.type == "cuda"
    align = settings.alignment
    run = net if backend == "torch" or key is None else backends.compiled_forward(
        net, backend=backend, key=key, in_channels=in_channels, window=window, batch=settings.sw_batch_size,
        identity=network.identity() if hasattr(network, "identity") else None,
        placement=backends.Placement(streams=settings.streams))

    def forward(windows: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(windows).to(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            outputs = run(align.to_model(x) if align else x)
        return (align.to_scan(outputs.float()) if align else outputs.float()).cpu().numpy()

    return forward
