"""Each classical method against scikit-image / scipy on a small array, and through the chunked
engine equal to the same method on the whole array (chunks that do not divide the shape)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage import filters, measure, morphology, segmentation

from pipeline.config.classical import CLASSICAL_METHODS
from pipeline.engine.classical import segment_array
from tests.engine.classical.helpers import blobs, classical_card, run_chunked

SHAPE = (37, 29, 13)
CHUNKS = ((10, 8, 5), (16, 29, 4), (37, 7, 13))


def params(method: str, **values: object) -> object:
    return CLASSICAL_METHODS[method].model_validate(values)


def smoothed_gradient(image: np.ndarray, sigma: float) -> np.ndarray:
    smooth = filters.gaussian(image.astype(np.float64), sigma=sigma, mode="nearest", truncate=4.0, preserve_range=True)
    return filters.sobel(smooth)


# -- whole array against scikit-image ------------------------------------------------------------


def test_threshold_with_cleanup_matches_skimage() -> None:
    image = blobs(SHAPE)
    got = segment_array(image, "threshold", params("threshold", lower=50, upper=900, opening=1, min_size=5,
                                                   largest_component=True, fill_holes="volume"))
    mask = (image > 50) & (image <= 900)
    mask = ndimage.binary_opening(mask, structure=morphology.ball(1))
    mask = morphology.remove_small_objects(mask, max_size=4)
    objects = measure.label(mask, connectivity=1)
    largest = max(measure.regionprops(objects), key=lambda r: r.area).label
    want = ndimage.binary_fill_holes(objects == largest)
    assert want.sum() > 50
    np.testing.assert_array_equal(got, want.astype(np.uint8))


def test_otsu_matches_skimage() -> None:
    image = blobs(SHAPE, seed=3)
    got = segment_array(image, "otsu", params("otsu"))
    threshold = filters.threshold_otsu(image.astype(np.float64), nbins=256)
    np.testing.assert_array_equal(got, (image > threshold).astype(np.uint8))
    below = segment_array(image, "otsu", params("otsu", foreground="below"))
    np.testing.assert_array_equal(below, 1 - got)


def test_kmeans_finds_the_clusters() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, size=SHAPE)
    image = (np.array([-800.0, 40.0, 700.0])[truth] + rng.normal(0, 30, size=SHAPE)).astype(np.int16)
    got = segment_array(image, "kmeans", params("kmeans", k=3, sample=5000))
    assert (got == truth).mean() > 0.999


def test_region_grow_is_hysteresis() -> None:
    image = blobs(SHAPE, seed=1)
    got = segment_array(image, "region_grow", params("region_grow", low=100, high=400))
    want = filters.apply_hysteresis_threshold(image, 100, 400)
    assert 0 < want.sum() < (image > 100).sum()  # some grown, some left out: a real test
    np.testing.assert_array_equal(got, want.astype(np.uint8))


def test_edges_are_sobel_then_filled() -> None:
    image = blobs(SHAPE, seed=2)
    got = segment_array(image, "edges", params("edges", sigma=1.0, edge_above=40, fill_holes="volume"))
    want = ndimage.binary_fill_holes(smoothed_gradient(image, 1.0) > 40)
    assert 0 < want.sum() < want.size
    np.testing.assert_array_equal(got, want.astype(np.uint8))


def test_fill_slices_fills_each_plane() -> None:
    image = np.full((12, 12, 3), -1000, dtype=np.int16)
    image[2:10, 2:10, :] = 100
    image[4:8, 4:8, 1] = -1000  # a hole in the middle slice only
    image[4:8, 4:8, 0] = -1000
    image[4:8, 4:8, 2] = -1000  # a tube through all slices: a hole per slice, not in 3D
    got = segment_array(image, "threshold", params("threshold", lower=-500, fill_holes="slices"))
    assert got[4:8, 4:8, :].all()
    volume = segment_array(image, "threshold", params("threshold", lower=-500, fill_holes="volume"))
    assert not volume[4:8, 4:8, :].any()


def test_watershed_matches_skimage() -> None:
    image = blobs(SHAPE, seed=4)
    got = segment_array(image, "watershed", params("watershed", background_below=-100, foreground_above=300))
    markers = np.zeros(SHAPE, dtype=np.int32)
    markers[image < -100] = 1
    markers[image > 300] = 2
    want = segmentation.watershed(smoothed_gradient(image, 1.0), markers) == 2
    np.testing.assert_array_equal(got, want.astype(np.uint8))


# -- chunked engine == whole array -----------------------------------------------------------------

EXACT = [
    ("threshold", {"lower": 50, "opening": 1, "closing": 1}),
    ("threshold", {"lower": -500, "opening": 1, "min_size": 8, "largest_component": True, "fill_holes": "slices"}),
    ("threshold", {"upper": 0, "fill_holes": "volume"}),
    ("otsu", {"bins": 64, "opening": 1}),
    ("region_grow", {"low": 100, "high": 400}),
    ("edges", {"sigma": 1.5, "edge_above": 30, "fill_holes": "slices", "largest_component": True}),
]


@pytest.mark.parametrize(("method", "values"), EXACT, ids=[f"{m}-{i}" for i, (m, _) in enumerate(EXACT)])
@pytest.mark.parametrize("chunks", CHUNKS, ids=lambda c: "x".join(map(str, c)))
def test_chunked_equals_whole(tmp_path: Path, method: str, values: dict[str, object], chunks: tuple[int, ...]) -> None:
    image = blobs(SHAPE, seed=5)
    card = classical_card(tmp_path, method, values)
    whole = segment_array(image, method, params(method, **values))
    assert 0 < whole.sum() < whole.size
    np.testing.assert_array_equal(run_chunked(tmp_path, image, card, chunks), whole)


def test_kmeans_chunked_equals_whole_given_the_same_sample(tmp_path: Path) -> None:
    """With ``sample`` >= the voxel count every voxel is sampled, so the centres (and labels) are the same."""
    image = blobs(SHAPE, seed=6)
    values = {"k": 3, "sample": image.size}
    card = classical_card(tmp_path, "kmeans", values, n_labels=3)
    whole = segment_array(image, "kmeans", params("kmeans", **values))
    assert set(np.unique(whole)) == {0, 1, 2}
    np.testing.assert_array_equal(run_chunked(tmp_path, image, card, (10, 8, 5)), whole)


def test_kmeans_sampled_centres_are_stable(tmp_path: Path) -> None:
    """A seeded sample of a few thousand voxels labels nearly every voxel as the whole data would."""
    image = blobs((60, 50, 20), seed=7)
    values = {"k": 3, "sample": 4000}
    card = classical_card(tmp_path, "kmeans", values, n_labels=3)
    whole = segment_array(image, "kmeans", params("kmeans", k=3, sample=image.size))
    assert (run_chunked(tmp_path, image, card, (25, 25, 9)) == whole).mean() > 0.98


def test_watershed_chunked_agrees_with_whole(tmp_path: Path) -> None:
    """Watershed floods globally: per block it floods within the halo, so agreement is measured, not exact."""
    image = blobs((64, 64, 24), seed=8)
    values = {"background_below": -150, "foreground_above": 250, "halo": 8}
    card = classical_card(tmp_path, "watershed", values)
    whole = segment_array(image, "watershed", params("watershed", **values))
    agreement = (run_chunked(tmp_path, image, card, (30, 25, 10)) == whole).mean()
    assert agreement > 0.99, agreement


def test_2d_chunked_equals_whole(tmp_path: Path) -> None:
    image = blobs((70, 53), seed=9, sigma=3.0)
    values = {"opening": 2, "fill_holes": "volume", "min_size": 10}
    card = classical_card(tmp_path, "otsu", values, spatial_dims=2)
    whole = segment_array(image, "otsu", params("otsu", **values))
    np.testing.assert_array_equal(run_chunked(tmp_path, image, card, (16, 21)), whole)


@pytest.mark.slow
def test_chunked_on_a_cluster(tmp_path: Path, client2: object) -> None:
    image = blobs(SHAPE, seed=10)
    values = {"lower": 0, "opening": 1, "largest_component": True, "fill_holes": "slices"}
    card = classical_card(tmp_path, "threshold", values)
    whole = segment_array(image, "threshold", params("threshold", **values))
    np.testing.assert_array_equal(run_chunked(tmp_path, image, card, (20, 15, 7), client=client2), whole)
