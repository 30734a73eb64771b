"""Scoring a network while it trains: sliding-window prediction on whole images, Dice and IoU per label
(counted by :mod:`pipeline.evaluate.metrics`, the one definition of both)."""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from pipeline.config.cards import ModelCard
from pipeline.evaluate import metrics
from pipeline.model.models import apply_preprocess, intensity_statistics
from pipeline.train.datasets import Region
from pipeline.train.device import autocast


def predict(network: Any, image: np.ndarray, card: ModelCard, device: Any) -> np.ndarray:
    """Argmax of MONAI ``sliding_window_inference`` over a whole preprocessed image, as the engine runs it."""
    import torch
    from monai.inferers import sliding_window_inference

    network.eval()
    with torch.no_grad(), autocast(device):
        logits = sliding_window_inference(torch.from_numpy(image)[None].to(device), roi_size=card.roi_size,
                                          sw_batch_size=card.sw_batch_size, predictor=network,
                                          overlap=card.overlap, mode="gaussian")
    return cast("torch.Tensor", logits).argmax(dim=1)[0].cpu().numpy()  # a tensor predictor gives a tensor


#: The Dice and IoU of a class absent from both truth and prediction in a region: a match, as MONAI's
#: ``DiceMetric`` / ``MeanIoU`` count it with ``ignore_empty=False`` (what the shipped cards' numbers record).
ABSENT_CLASS_SCORE = 1.0


def scores(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], card: ModelCard) -> dict[str, dict[str, float]]:
    """Dice and IoU per label over (prediction, truth, valid) regions, mean over regions, rounded to 3 decimals.

    Each region is scored by :func:`pipeline.evaluate.metrics.scores` on its confusion counts. Invalid (nodata)
    pixels count for no class; a class absent from both truth and prediction scores
    :data:`ABSENT_CLASS_SCORE` (1.0) and one predicted where the truth has none 0.0, as MONAI's ``DiceMetric``
    and ``MeanIoU`` (``include_background=True``, ``ignore_empty=False``, ``reduction="mean_batch"``) give them.
    """
    if not pairs:
        raise ValueError("no regions to score")
    classes = range(card.out_channels)
    regions = [metrics.scores(metrics.pair_counts(truth, pred, valid), classes, absent=ABSENT_CLASS_SCORE).labels
               for pred, truth, valid in pairs]
    per_class = [[rows[c] for rows in regions] for c in classes]  # each class's scores, one per region
    names = [label.name for label in card.labels.values()]  # paired with classes 0..n-1 in order, as before
    return {"dice": {name: _mean([s.dice for s in rows]) for name, rows in zip(names, per_class, strict=True)},
            "iou": {name: _mean([s.iou for s in rows]) for name, rows in zip(names, per_class, strict=True)}}


def _mean(values: list[float | None]) -> float:
    """The mean over regions, rounded to 3 decimals (no value is None: absent classes score 1.0)."""
    return round(float(np.mean([v for v in values if v is not None])), 3)


def evaluate(network: Any, regions: list[Region], card: ModelCard, device: Any) -> dict[str, dict[str, float]]:
    """Dice and IoU per label of the network on ``regions`` (each predicted on its whole image, then cut out)."""
    predictions: dict[int, np.ndarray] = {}
    scored = []
    for region in regions:
        pair = region.pair
        if id(pair) not in predictions:
            image = apply_preprocess(card, pair.image, intensity_statistics(card, pair.image))
            predictions[id(pair)] = predict(network, image, card, device)
        scored.append((predictions[id(pair)][region.box], pair.labels[region.box], pair.valid[region.box]))
    return scores(scored, card)
