"""Dice / IoU / accuracy against hand-computed values; streaming equals whole-array."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.metrics import PairCounts, confusion, pair_counts, scores


def test_hand_computed() -> None:
    ref = np.array([0, 0, 1, 1, 1, 2, 2, 0])
    pred = np.array([0, 1, 1, 1, 0, 2, 0, 0])
    result = scores(confusion(ref, pred, 4))
    one, two, three = result.labels[1], result.labels[2], result.labels[3]
    # label 1: TP 2, FP 1, FN 1 -> Dice 4/6, IoU 2/4
    assert one.dice == pytest.approx(4 / 6) and one.iou == pytest.approx(0.5)
    # label 2: TP 1, FP 0, FN 1 -> Dice 2/3, IoU 1/2
    assert two.dice == pytest.approx(2 / 3) and two.iou == pytest.approx(0.5)
    assert three.dice is None and three.iou is None  # absent from both: undefined, not 0 or 1
    assert result.pixel_accuracy == pytest.approx(5 / 8)
    # recalls: label0 2/3, label1 2/3, label2 1/2 -> mean
    assert result.mean_pixel_accuracy == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)


def test_label_missing_from_prediction_scores_zero() -> None:
    result = scores(confusion(np.array([1, 1, 0]), np.array([0, 0, 0]), 2))
    assert result.labels[1].dice == 0.0 and result.labels[1].iou == 0.0


def test_streaming_equals_whole() -> None:
    rng = np.random.default_rng(0)
    ref, pred = rng.integers(0, 5, size=(2, 30, 20, 10))
    whole = confusion(ref, pred, 5)
    streamed = PairCounts.empty()
    for k in range(0, 10, 3):
        streamed = streamed + pair_counts(ref[..., k:k + 3], pred[..., k:k + 3])
    np.testing.assert_array_equal(whole, streamed.dense(5))


def test_valid_mask_and_range_check() -> None:
    ref, pred = np.array([1, 1, 0, 0]), np.array([1, 0, 0, 1])
    assert confusion(ref, pred, 2, valid=np.array([True, False, True, False])).sum() == 2
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion(np.array([2]), np.array([0]), 2)


@pytest.mark.parametrize("n_labels", [1, 6, 17, 40])
@pytest.mark.parametrize("slab_bytes", [1, 700, 64 * 2**20])
def test_label_counts_equal_bincount_on_zarr_and_numpy(n_labels: int, slab_bytes: int) -> None:
    import zarr

    from pipeline.evaluate.metrics import label_counts

    values = np.random.default_rng(n_labels).integers(0, 45, size=(13, 11, 37)).astype(np.uint8)
    expected = np.bincount(values.ravel(), minlength=45)[:n_labels]  # values >= n_labels are not counted
    stored = zarr.create_array(store=zarr.storage.MemoryStore(), shape=values.shape, chunks=(8, 8, 5), dtype="u1")
    stored[...] = values
    for labels in (values, stored):
        counts = label_counts(labels, n_labels, slab_bytes=slab_bytes)
        assert counts.dtype == np.int64 and counts.tolist() == expected.tolist()
