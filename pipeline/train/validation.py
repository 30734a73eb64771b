"""Scoring a network while it trains: sliding-window prediction on whole images, Dice and IoU per label."""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from pipeline.config.cards import ModelCard
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


def scores(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], card: ModelCard) -> dict[str, dict[str, float]]:
    """MONAI ``DiceMetric`` and ``MeanIoU`` per label over (prediction, truth, valid) regions, mean over regions.

    Invalid (nodata) pixels count for no class; a class absent from both truth and prediction scores
    1.0 and one predicted where the truth has none 0.0 (``ignore_empty=False``).
    """
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
