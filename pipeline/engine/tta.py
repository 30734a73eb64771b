"""Test-time augmentation inside the predict task: nnU-Net's mirroring.

Mirroring evaluates each window once per subset of its mirror axes flipped (the identity included:
2^n passes for n axes), flips every output back and averages the network outputs (logits), as nnU-Net
v2's ``_internal_maybe_mirror_and_predict`` does. It wraps the forward the predictor resolved (torch or
OpenVINO), so no I/O, window plan or blending changes: the time cost is the number of passes.

Which axes: like nnU-Net, which mirrors only along the axes its training augmentation mirrored
(``allowed_mirroring_axes``), ``mirror`` uses the axes the card's ``training.recipe`` flipped (all of
them for a 2D recipe with quarter turns, which with one flip give every mirroring; every axis for a
card without a recipe, e.g. an imported bundle). On the shipped models, flips along axes a network never
saw mirrored cost Dice (spleen 0.84 -> 0.05 for ct-organs: mirrored left-right, the spleen looks like
the liver's side); ``mirror-all`` mirrors along every spatial axis anyway. Axes are the network's
(after :mod:`pipeline.engine.alignment` turned the window to the card's orientation).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.errors import SettingsError

TTA_MODES = ("none", "mirror", "mirror-all")


def check_tta(mode: str, *, classical: bool = False) -> str:
    """``mode`` if it is one of :data:`TTA_MODES` (and the model has windows to mirror), else a one-line
    :class:`SettingsError` (the front end's check adds a "did you mean")."""
    if mode not in TTA_MODES:
        raise SettingsError(f"unknown --tta {mode!r} (choices: {', '.join(TTA_MODES)})")
    if classical and mode != "none":
        raise SettingsError(f"--tta {mode}: a classical model has no network windows to mirror")
    return mode


def trained_axes(card: Any, spatial_dims: int) -> tuple[int, ...]:
    """The spatial axes the card's training recipe mirrored (every axis without a recipe)."""
    recipe = (getattr(card, "training", None) or {}).get("recipe") if card is not None else None
    if not recipe:
        return tuple(range(spatial_dims))
    if recipe.get("rotate90") and spatial_dims == 2:
        return (0, 1)
    return tuple(sorted({int(a) for a in recipe.get("flip_axes") or ()}))


def mirror_axes(mode: str, spatial_dims: int, card: Any = None) -> tuple[int, ...]:
    """The spatial axes whose mirrorings ``mode`` averages (``()``: no test-time augmentation)."""
    check_tta(mode)
    if mode == "none":
        return ()
    return tuple(range(spatial_dims)) if mode == "mirror-all" else trained_axes(card, spatial_dims)


def scan_axes(axes: Sequence[int], alignment: Any = None) -> tuple[int, ...]:
    """The scan axes of the network's ``axes``: windows reach the forward on the scan's grid, and the
    alignment gives model axis ``m`` scan axis ``perm[m]`` (a mirroring commutes with its flips, and with
    resampling, which treats both directions alike)."""
    return tuple(sorted(alignment.perm[a] for a in axes)) if alignment is not None else tuple(axes)


def combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` as dims of a (B, C, *spatial) batch, the empty one first."""
    dims = [2 + a for a in axes]
    return [combo for r in range(len(dims) + 1) for combo in itertools.combinations(dims, r)]


def passes(axes: Sequence[int]) -> int:
    """Network passes per window when mirroring along ``axes``: the time factor."""
    return 2 ** len(axes)


def mirrored(forward: Callable[[np.ndarray], np.ndarray], axes: Sequence[int]) -> Callable[[np.ndarray], np.ndarray]:
    """``forward`` (NumPy windows (B, C, *roi) -> outputs (B, K, *roi)) averaged over every mirroring of its
    input along ``axes`` (outputs flipped back); ``forward`` itself for no axes."""
    if not axes:
        return forward
    combos = combinations(axes)

    def averaged(x: np.ndarray) -> np.ndarray:
        total = np.asarray(forward(x), dtype=np.float32).copy()
        for dims in combos[1:]:
            out = forward(np.ascontiguousarray(np.flip(x, dims)))
            total += np.flip(np.asarray(out, dtype=np.float32), dims)
        return total / np.float32(len(combos))

    return averaged
