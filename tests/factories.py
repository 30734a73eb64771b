"""Builders for small synthetic inputs and untrained (seeded) model cards used across tests."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import yaml

from pipeline.config.cards import ModelCard
from pipeline.io.hashing import sha256_file
from pipeline.model.models import build_network


def make_card(directory: Path, *, name: str = "tiny", spatial_dims: int = 3, in_channels: int = 1,
              n_labels: int = 3, roi_size: tuple[int, ...] = (16, 16, 16), overlap: float = 0.25,
              preprocess: dict[str, Any] | None = None, seed: int = 0, **extra: Any) -> Path:
    """Write an untrained, seeded UNet card + weights into ``directory``; return the card path."""
    card: dict[str, Any] = {
        "name": name, "architecture": "UNet", "domain": "medical" if spatial_dims == 3 else "geo",
        "kwargs": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
        "spatial_dims": spatial_dims, "in_channels": in_channels,
        "labels": {i: {"name": f"class{i}", "color": [40 * i % 256, 80, 160]} for i in range(n_labels)},
        "roi_size": list(roi_size), "overlap": overlap, "sw_batch_size": 4,
        "preprocess": preprocess or {"kind": "window", "a_min": -1000, "a_max": 1000},
        "weights": f"{name}.pt", "sha256": "0" * 64, **extra,
    }
    torch.manual_seed(seed)
    network = build_network(ModelCard.model_validate(card))
    weights = directory / f"{name}.pt"
    torch.save(network.state_dict(), weights)
    card["sha256"] = sha256_file(weights)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None, *,
                qform_code: int = 1, sform_code: int = 1, version: int = 1) -> Path:
    """Save ``data`` as NIfTI with the given affine and codes."""
    cls = nib.Nifti2Image if version == 2 else nib.Nifti1Image
    image = cls(data, np.eye(4) if affine is None else affine)
    image.header.set_qform(image.affine, code=qform_code)
    image.header.set_sform(image.affine, code=sform_code)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)
    return path


def oblique_affine(zooms: tuple[float, float, float] = (0.8, 1.1, 2.5), lps: bool = False) -> np.ndarray:
    """A rotated, anisotropic affine (optionally LPS-flipped) with an offset."""
    angle = np.deg2rad(17)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ tilt @ np.diag(zooms)
    if lps:
        affine[:3, :3] = np.diag([-1, -1, 1]) @ affine[:3, :3]
    affine[:3, 3] = (-120.5, 33.25, 71.0)
    return affine


def run_and_check_clean_failure(runner: Any, app: Any, args: list[str], directory: Path, message: str) -> None:
    """Run the CLI on a bad input: exit 1, one ``error:`` line containing ``message``, no traceback,
    every file in ``directory`` byte-identical afterwards, no new file, no leftover work directory."""
    from pipeline.io.hashing import sha256_file

    before = {p.name: sha256_file(p) for p in directory.iterdir() if p.is_file()}
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output
    after = {p.name: sha256_file(p) for p in directory.iterdir() if p.is_file()}
    assert after == before  # inputs untouched, no partial output
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]  # no work dirs left


def grid_windows(model: Any, image: Path) -> torch.Tensor:
    """Every window MONAI's sliding window would give ``model`` on ``image`` (NIfTI or a raster in the card's
    bands), preprocessed as the card says and zero-padded as MONAI pads: ``(N, C, *roi_size)`` float32."""
    from pipeline.engine.windows import window_grid

    if image.name.endswith((".nii", ".nii.gz")):
        data = np.asarray(nib.load(image).get_fdata(dtype=np.float32))[None]
    else:
        import rasterio

        with rasterio.open(image) as src:
            data = src.read(list(model.card.bands or range(1, model.card.in_channels + 1))).astype(np.float32)
    data = model.preprocess(data)
    grid = window_grid(data.shape[1:], model.roi_size, (model.overlap,) * (data.ndim - 1))
    pads = [(0, 0)] + [(a.pad_before, a.padded_size - a.size - a.pad_before) for a in grid.axes]
    padded = np.pad(data, pads)
    starts = itertools.product(*(a.starts for a in grid.axes))
    windows = [padded[(slice(None), *(slice(s, s + r) for s, r in zip(corner, model.roi_size)))] for corner in starts]
    return torch.from_numpy(np.ascontiguousarray(np.stack(windows)))
