"""Chunked connected components equal scipy.ndimage.label on the whole array, across chunk borders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from pipeline.engine.components import label_components, structure
from pipeline.io.store import create_array, open_work_group


def store_array(tmp: Path, values: np.ndarray, chunks: tuple[int, ...], name: str = "labels") -> object:
    group = open_work_group(tmp / "w.zarr", overwrite=False)
    array = create_array(group, name, shape=values.shape, chunks=chunks, dtype=values.dtype, channel_axis=False)
    array[...] = values
    return group


def random_labels(shape: tuple[int, ...], seed: int, n_classes: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 1.2)
    edges = np.quantile(field, np.linspace(0.4, 1, n_classes + 1)[1:-1])  # sparse classes: many objects
    return np.digitize(field, edges).astype(np.uint8)


CASES = [((23, 17, 11), (5, 7, 4)), ((23, 17, 11), (1, 17, 11)), ((23, 17, 11), (23, 17, 11)),
         ((40, 31), (9, 8)), ((40, 31), (40, 1))]


@pytest.mark.parametrize(("shape", "chunks"), CASES, ids=[f"{s}-{c}" for s, c in CASES])
def test_equals_scipy_label(tmp_path: Path, shape: tuple[int, ...], chunks: tuple[int, ...]) -> None:
    labels = random_labels(shape, seed=len(chunks) + chunks[0])
    group = store_array(tmp_path, labels, chunks)
    found = label_components(group, "labels", "cc", values=(1,))
    want, count = ndimage.label(labels == 1)
    assert count > 2  # several objects, some cut by chunk borders
    assert found.count == count
    np.testing.assert_array_equal(found.array[...], want)
    np.testing.assert_array_equal(found.voxels[1:], np.bincount(want.ravel())[1:])
    np.testing.assert_allclose(found.centroid[1:], ndimage.center_of_mass(want > 0, want, range(1, count + 1)))
    border = np.zeros(count + 1, dtype=bool)
    for axis in range(len(shape)):
        for edge in (want.take(0, axis=axis), want.take(-1, axis=axis)):
            border[np.unique(edge)] = True
    border[0] = False
    np.testing.assert_array_equal(found.on_border, border)


def test_several_values_valid_mask_and_axes(tmp_path: Path) -> None:
    labels = random_labels((30, 20, 9), seed=3, n_classes=3)
    valid = np.random.default_rng(4).random(labels.shape) > 0.1
    group = store_array(tmp_path, labels, (7, 6, 4))
    store_array(tmp_path, valid, (7, 6, 4), name="valid")
    found = label_components(group, "labels", "cc", values=(1, 2), valid="valid", axes=(0, 1))
    want, count = ndimage.label(np.isin(labels, (1, 2)) & valid, structure(3, (0, 1)))
    assert found.count == count
    np.testing.assert_array_equal(found.array[...], want)
    np.testing.assert_array_equal(found.peak[1:], ndimage.maximum(labels, want, range(1, count + 1)))


def test_empty(tmp_path: Path) -> None:
    group = store_array(tmp_path, np.zeros((8, 9), dtype=np.uint8), (3, 4))
    found = label_components(group, "labels", "cc", values=(1,))
    assert found.count == 0
    assert not found.array[...].any()


@pytest.mark.slow
def test_on_a_cluster(tmp_path: Path, client2: object) -> None:
    labels = random_labels((31, 22, 10), seed=9)
    group = store_array(tmp_path, labels, (8, 9, 4))
    found = label_components(group, "labels", "cc", values=(1,), client=client2)
    np.testing.assert_array_equal(found.array[...], ndimage.label(labels == 1)[0])
