"""Training data: read a catalog dataset's image/label pairs into arrays, and split off validation.

A pair is an image and its labels on the same grid, read with the same readers inference uses
(NIfTI turned to the card's ``orientation`` when it names one, else in stored array order; rasters
as ``(band, row, col)``), so a model learns exactly the axes inference shows it (see
:mod:`pipeline.engine.alignment`). Labels come from a label image, or from vectors rasterised on the
raster's grid (one class per feature's ``label``/``class`` field, or class 1 for a two-class card),
and are grouped by the dataset's ``label_map`` when it has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config.cards import ModelCard
from pipeline.config.training_data import Holdout, TrainingDataset, TrainingPair
from pipeline.errors import InputError

VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb")


@dataclass(frozen=True)
class LabelledImage:
    """One pair in memory: raw image ``(C, *spatial)``, class labels ``(*spatial)`` and valid pixels."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    valid: np.ndarray


@dataclass(frozen=True)
class Region:
    """A part of a pair used for training or validation: the pair and a box of slices."""

    pair: LabelledImage
    box: tuple[slice, ...]
    what: str  #: e.g. "example_ct_sm.nii.gz k >= 22"


def group_labels(ids: np.ndarray, label_map: dict[int, list[int]] | None, n_classes: int, source: Path) -> np.ndarray:
    """Source label ids -> class values (uint8) through ``label_map`` (unlisted ids -> 0), checked < ``n_classes``."""
    values = np.asarray(ids)
    if values.dtype.kind == "f":
        values = np.rint(values)
    values = values.astype(np.int64)
    if label_map is not None:
        top = int(max(values.max(initial=0), *(max(v, default=0) for v in label_map.values())))
        lookup = np.zeros(top + 1, dtype=np.int64)
        for value, members in label_map.items():
            lookup[members] = value
        values = lookup[np.clip(values, 0, top)]
    bad = values[(values < 0) | (values >= n_classes)]
    if bad.size:
        raise InputError(f"{source}: label {int(bad[0])} is not one of the card's {n_classes} classes "
                         "(add a label_map to the dataset?)")
    return values.astype(np.uint8)


def _read_medical(pair: TrainingPair, card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    """Image and labels in the card's ``orientation`` (the axes inference will show the network)."""
    from pipeline.engine.alignment import window_alignment
    from pipeline.io.nifti import open_scan, read_reference

    scan = open_scan(pair.image)
    image = np.asarray(scan.proxy, dtype=np.float32).reshape(scan.geometry.shape)
    if not np.isfinite(image).all():
        raise InputError(f"{pair.image}: NaN or infinite voxels; fix or mask the scan before training on it")
    labels = np.asarray(read_reference(pair.labels, scan.geometry).proxy).reshape(scan.geometry.shape)
    alignment = window_alignment(scan.geometry.affine_matrix, card.roi_size, orientation=card.orientation,
                                 spacing=card.spacing)
    if alignment.resamples:
        raise InputError(f"{pair.image}: voxel size {np.round(scan.geometry.zooms, 3).tolist()} mm differs from the "
                         f"card's spacing {list(card.spacing or ())}; resample the pair to it before training")
    flipped = [m for m, f in enumerate(alignment.flip) if f]
    image, labels = (np.flip(np.transpose(a, alignment.perm), tuple(flipped)).copy() for a in (image, labels))
    return image[None], labels


def _read_geo(pair: TrainingPair, bands: tuple[int, ...], card: ModelCard) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from pipeline.io.geotiff import open_raster, open_reference, read_bands, read_labels, select_bands

    raster = open_raster(pair.image)
    geometry = raster.geometry
    chosen = select_bands(raster, bands or None, card.in_channels, model=card.name)
    rows, cols = slice(0, geometry.height), slice(0, geometry.width)
    image, valid = read_bands(raster.path, chosen, "float32", rows, cols)
    if pair.labels.suffix.lower() in VECTOR_SUFFIXES:
        from pipeline.io.vectors import read_reference_vectors

        shapes = read_reference_vectors(pair.labels, geometry, card.labels)
        labels, _ = shapes.rasterize(rows, cols, geometry)
    else:
        reference = open_reference(pair.labels, geometry)
        labels, label_valid = read_labels(reference.path, rows, cols)
        valid &= label_valid
    return image, labels, valid


def load_pair(pair: TrainingPair, dataset: TrainingDataset, card: ModelCard) -> LabelledImage:
    """Read one pair, group its labels, and check it fits the card (dims, channels)."""
    if dataset.kind == "medical":
        image, ids = _read_medical(pair, card)
        valid = np.ones(ids.shape, dtype=bool)
    else:
        image, ids, valid = _read_geo(pair, dataset.bands or card.bands or (), card)
    if image.ndim - 1 != card.spatial_dims or image.shape[0] != card.in_channels:
        raise InputError(f"{pair.image}: image is {image.shape[0]} x {image.shape[1:]} but card {card.name!r} "
                         f"takes {card.in_channels} channel(s) x {card.spatial_dims}D")
    labels = group_labels(ids, dataset.label_map, card.out_channels, pair.labels)
    return LabelledImage(name=pair.image.name, image=image, labels=labels, valid=valid)


def split_regions(pairs: list[LabelledImage], validation: list[LabelledImage],
                  holdout: Holdout | None) -> tuple[list[Region], list[Region]]:
    """(training regions, validation regions): the held-out box of every pair validates, the rest trains."""
    train: list[Region] = []
    val = [Region(p, tuple(slice(None) for _ in p.labels.shape), f"{p.name} (validation pair)") for p in validation]
    for p in pairs:
        every = [slice(None)] * p.labels.ndim
        if holdout is None:
            train.append(Region(p, tuple(every), p.name))
            continue
        if holdout.axis >= p.labels.ndim or not 0 < holdout.start < p.labels.shape[holdout.axis]:
            raise InputError(f"{p.name}: holdout axis {holdout.axis} start {holdout.start} does not split "
                             f"shape {p.labels.shape}")
        axis = "ijk"[holdout.axis] if p.labels.ndim == 3 else ("row", "column")[holdout.axis]
        head, tail = list(every), list(every)
        head[holdout.axis], tail[holdout.axis] = slice(0, holdout.start), slice(holdout.start, None)
        train.append(Region(p, tuple(head), f"{p.name} {axis} < {holdout.start}"))
        val.append(Region(p, tuple(tail), f"{p.name} {axis} >= {holdout.start}"))
    return train, val
