"""Test-time augmentation inside the predict task: nnU-Net's mirroring.

``--tta mirror`` evaluates each window once per subset of its spatial axes flipped (the identity
included: 2^d passes, 8 for 3D, 4 for 2D), flips every output back and averages the network
outputs (logits), as nnU-Net v2's ``_internal_maybe_mirror_and_predict`` does. It wraps the forward
the predictor resolved (torch or OpenVINO), so no I/O, window plan or blending changes: the time
cost is the number of passes, :func:`passes`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from pipeline.choices import check_choice
from pipeline.errors import SettingsError

TTA_MODES = ("none", "mirror")


def check_tta(mode: str, *, classical: bool = False) -> str:
    """``mode`` if it is one of :data:`TTA_MODES` (and the model has windows to mirror), else a one-line
    :class:`SettingsError`."""
    try:
        check_choice("--tta", mode, TTA_MODES)
    except ValueError as e:
        raise SettingsError(str(e)) from e
    if classical and mode != "none":
        raise SettingsError(f"--tta {mode}: a classical model has no network windows to mirror")
    return mode


def mirror_axes(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes of a (B, C, *spatial) batch, the empty one first."""
    axes = range(2, 2 + spatial_dims)
    return [combo for r in range(spatial_dims + 1) for combo in itertools.combinations(axes, r)]


def passes(mode: str, spatial_dims: int) -> int:
    """Network passes per window: the time factor of ``mode``."""
    return len(mirror_axes(spatial_dims)) if mode == "mirror" else 1


def mirrored(forward: Callable[[Any], Any], spatial_dims: int) -> Callable[[Any], Any]:
    """``forward`` averaged over every mirroring of its input (outputs flipped back)."""
    import torch

    combos = mirror_axes(spatial_dims)

    def averaged(x: Any) -> Any:
        total = None
        for axes in combos:
            shown = torch.flip(x, axes) if axes else x
            out = forward(shown).float()
            out = torch.flip(out, axes) if axes else out
            total = out if total is None else total + out
        return total / len(combos)

    return averaged


def with_tta(forward: Callable[[Any], Any], mode: str, spatial_dims: int) -> Callable[[Any], Any]:
    """The forward the predictor calls for ``mode`` (``none``: ``forward`` itself)."""
    if mode == "none":
        return forward
    if mode == "mirror":
        return mirrored(forward, spatial_dims)
    raise SettingsError(f"unknown --tta {mode!r} (choices: {', '.join(TTA_MODES)})")
