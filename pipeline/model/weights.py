"""Weights files, checked before they are read: the card's sha256 first, then ``torch.load(weights_only=True)``.

Shared by cards (:mod:`pipeline.model.models`) and imported networks (:mod:`pipeline.model.bundles`); imports
neither, so the loader can dispatch to the bundles without a cycle.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from pipeline.errors import ModelError
from pipeline.files import require_regular_file
from pipeline.io.hashing import sha256_file


def check_sha256(path: Path, expected_sha256: str, what: str = "weights file") -> None:
    """Refuse ``path`` unless it is a regular file whose sha256 is the card's (``what`` names it in the error)."""
    require_regular_file(path, what, ModelError)
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ModelError(f"{path}: weights sha256 is {actual[:12]}..., the card expects {expected_sha256[:12]}...")


def load_weights(path: Path, expected_sha256: str) -> dict[str, Any]:
    """Load a state_dict safely: checksum first, then ``torch.load(weights_only=True)``."""
    import torch

    check_sha256(path, expected_sha256)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"{path}: refused to load weights ({_load_reason(e)})") from e
    if not isinstance(state, dict):
        raise ModelError(f"{path}: weights must be a state_dict, got {type(state).__name__}")
    return state


def _load_reason(error: BaseException) -> str:
    """The informative part of torch.load's many-line message: what the unpickler refused, else the first sentence."""
    if not isinstance(error, pickle.UnpicklingError | RuntimeError | EOFError | ValueError):
        # torch falls back to its legacy unpickler for non-zip files, which fails on arbitrary bytes
        return f"not a torch file: the unpickler failed with {type(error).__name__}: {error}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error:" in line:  # "Unsupported global: GLOBAL builtins.open was not an allowed global"
            refused = line.split("WeightsUnpickler error:", 1)[1].strip().split(" by default")[0]
            return f"not plain tensors: {refused}"
    return lines[0].split(". ")[0] if lines else type(error).__name__
