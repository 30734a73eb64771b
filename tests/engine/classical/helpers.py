"""Synthetic images and a work-store runner for the classical-method tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import ndimage

from pipeline.engine.classical import run_classical
from pipeline.io.store import create_array, open_work_group
from pipeline.model.models import Model, load_model


def blobs(shape: tuple[int, ...], seed: int = 0, *, scale: float = 1000.0, sigma: float = 2.0) -> np.ndarray:
    """Smooth random int16 'HU' image with bright and dark blobs of several sizes."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return (field / field.std() * scale / 3).astype(np.int16)


def classical_card(directory: Path, method: str, params: dict[str, Any], *, spatial_dims: int = 3,
                   n_labels: int = 2, name: str | None = None) -> Path:
    """Write a classical card; returns its path."""
    name = name or f"test-{method}".replace("_", "-")
    card = {"name": name, "kind": "classical", "domain": "medical" if spatial_dims == 3 else "geo",
            "spatial_dims": spatial_dims, "in_channels": 1,
            "labels": {i: {"name": "background" if i == 0 else f"class{i}"} for i in range(n_labels)},
            "classical": {"method": method, "params": params}}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def run_chunked(tmp: Path, image: np.ndarray, model: Model | Path, chunks: tuple[int, ...], *,
                client: Any = None) -> np.ndarray:
    """Tile ``image`` into a fresh work store with ``chunks`` and run the card's method through the engine."""
    mdl = model if isinstance(model, Model) else load_model(model)
    group = open_work_group(tmp / f"work-{len(list(tmp.iterdir()))}.zarr", overwrite=True)
    stored = create_array(group, "image", shape=(1, *image.shape), chunks=(1, *chunks), dtype=image.dtype)
    stored[0] = image
    result = run_classical(stored, mdl, group, client=client)
    assert result.windows == 0
    assert tuple(result.labels.chunks) == chunks
    return np.asarray(result.labels[...])
