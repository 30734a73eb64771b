"""Training's validation scores: the metrics module's Dice and IoU, with an absent class counted as 1.0, equal to
MONAI's ``DiceMetric`` / ``MeanIoU`` as training computed them before; and what a checkpoint fingerprints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config.cards import ModelCard
from pipeline.errors import CardError
from pipeline.evaluate.metrics import pair_counts
from pipeline.evaluate.metrics import scores as metric_scores
from pipeline.train.recipe import read_template
from pipeline.train.validation import scores
from tests.factories import make_card


def monai_scores(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 card: ModelCard) -> dict[str, dict[str, float]]:
    """Training's scores as they were computed before they moved onto :mod:`pipeline.evaluate.metrics`."""
    import torch
    from monai.metrics import DiceMetric, MeanIoU
    from monai.networks.utils import one_hot

    metrics = {"dice": DiceMetric(include_background=True, reduction="mean_batch", ignore_empty=False),
               "iou": MeanIoU(include_background=True, reduction="mean_batch", ignore_empty=False)}
    for pred, truth, valid in pairs:
        mask = torch.from_numpy(valid)[None, None]
        y_pred = one_hot(torch.from_numpy(pred.astype(np.int64))[None, None], card.out_channels) * mask
        y = one_hot(torch.from_numpy(truth.astype(np.int64))[None, None], card.out_channels) * mask
        for metric in metrics.values():
            metric(y_pred, y)
    names = [label.name for label in card.labels.values()]
    return {key: {name: round(float(v), 3) for name, v in zip(names, metric.aggregate().tolist(), strict=True)}
            for key, metric in metrics.items()}


def _card(n_labels: int, spatial_dims: int) -> ModelCard:
    return ModelCard.model_validate({
        "name": "scored", "architecture": "UNet", "spatial_dims": spatial_dims, "in_channels": 1,
        "labels": {i: {"name": f"class{i}"} for i in range(n_labels)}, "roi_size": [8] * spatial_dims,
        "preprocess": {"kind": "window", "a_min": 0, "a_max": 1}, "weights": "w.pt", "sha256": "0" * 64})


@pytest.mark.parametrize("shape", [(9, 11), (6, 7, 5)])
def test_scores_equal_monai_dice_and_iou_with_absent_classes_and_nodata(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape))
    card = _card(4, len(shape))
    pairs = []
    for n in range(5):
        truth = rng.integers(0, 3 if n % 2 else 4, shape)  # class 3 absent from some truths ...
        pred = np.where(rng.random(shape) < 0.7, truth, rng.integers(0, 4, shape))
        if n == 1:
            pred[pred == 3] = 2  # ... and from this region's prediction too: 1.0 there
        valid = rng.random(shape) < 0.85
        pairs.append((pred, truth, valid))
    pairs.append((np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape, bool)))  # all nodata
    assert scores(pairs, card) == monai_scores(pairs, card)


def test_an_absent_class_scores_one_in_training_none_in_metrics() -> None:
    card = _card(3, 2)
    truth = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    valid = np.ones(truth.shape, bool)
    trained = scores([(pred, truth, valid)], card)
    assert trained["dice"] == {"class0": round(2 / 3, 3), "class1": 0.8, "class2": 1.0}
    assert trained["iou"] == {"class0": 0.5, "class1": round(2 / 3, 3), "class2": 1.0}
    counted = metric_scores(pair_counts(truth, pred, valid), range(3))
    assert [row.dice for row in counted.labels][2] is None
    assert metric_scores(pair_counts(truth, pred, valid), range(3), absent=1.0).labels[2].iou == 1.0


def test_no_regions_is_an_error() -> None:
    with pytest.raises(ValueError, match="no regions"):
        scores([], _card(2, 2))


def test_a_card_without_preprocess_is_refused_before_training(tmp_path: Path) -> None:
    """``checkpoints.fingerprint`` reads ``card.preprocess``: the template check makes sure there is one."""
    path = make_card(tmp_path)
    data = yaml.safe_load(path.read_text())
    del data["preprocess"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CardError, match="preprocess"):
        read_template(path)
