"""Per-epoch checkpoints: what a resumed run must match, and byte-reproducible saving."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from pipeline.config.cards import ModelCard
from pipeline.config.training_data import TrainingDataset
from pipeline.errors import first_line
from pipeline.train.recipe import Recipe

logger = logging.getLogger(__name__)


def fingerprint(dataset_name: str, dataset: TrainingDataset, card: ModelCard, recipe: Recipe,
                epochs: int, seed: int) -> str:
    """What a checkpoint must match to be resumed: same data, network, recipe, epochs and seed."""
    what = {"dataset": dataset_name, "entry": dataset.model_dump(mode="json"), "recipe": recipe.model_dump(mode="json"),
            "network": [card.architecture, card.network_kwargs()],
            "preprocess": None if card.preprocess is None else card.preprocess.model_dump(),
            "roi": card.roi_size, "epochs": epochs, "seed": seed}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def load_checkpoint(path: Path, key: str) -> dict[str, Any] | None:
    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file is not worth failing for: start over
        logger.warning("%s: unreadable checkpoint (%s); starting over", path, first_line(e))
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != key:
        logger.warning("%s: checkpoint is from other arguments; starting over", path)
        return None
    return state


def save_state(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a file object: the archive is then named ``archive``, not after the (temporary,
    pid-stamped) file name, so the same tensors always give the same bytes and the same sha256."""
    import torch

    with path.open("wb") as f:
        torch.save(state, f)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".partial")
    save_state(state, tmp)
    os.replace(tmp, path)
