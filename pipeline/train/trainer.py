"""``pipeline train``: fit a card's MONAI network on a catalog dataset and write weights + a filled card.

The card is the recipe: its network, roi, labels and ``preprocess`` are what inference uses, and
its ``training.recipe`` (batch size, steps per epoch, crop, learning rate, flips, padding) is how it
is trained, so retraining a shipped model is ``pipeline train --dataset X --model-card models/X.yaml``.
Crops are MONAI's ``RandCropByLabelClassesd`` (classes drawn with equal odds unless the recipe gives
ratios) from the training regions only; validation is ``sliding_window_inference`` on whole images,
scored with ``DiceMetric`` on the held-out regions, exactly as the engine would run the model.

Reproducible and resumable: every random draw of epoch ``e`` comes from ``(seed, e)`` (network init
from ``seed``), so no RNG state has to be saved and a run resumed from the per-epoch checkpoint
``<out>/.<name>.ckpt.pt`` gives byte-identical weights to an uninterrupted one (CPU, same threads).
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.cards import ModelCard
from pipeline.config.catalog import load_catalog
from pipeline.config.training_data import TrainingDataset
from pipeline.errors import PipelineError
from pipeline.model.models import apply_preprocess, build_network, intensity_statistics
from pipeline.train.checkpoints import fingerprint, load_checkpoint, save_checkpoint
from pipeline.train.datasets import LabelledImage, Region, load_pair, split_regions
from pipeline.train.device import autocast, resolve_device
from pipeline.train.outputs import compact_map, relative, write_outputs
from pipeline.train.recipe import Recipe, read_template
from pipeline.train.validation import evaluate
from pipeline.version import code_version

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    card: Path
    weights: Path
    metrics: dict[str, Any]
    losses: list[float]  #: mean training loss per epoch, over the whole run (resumed epochs included)
    resumed_from: int  #: epochs already done when this call started (0: fresh)


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Prepared:
    """A region ready for training or validation: preprocessed image (C, *s), labels (*s), valid (*s)."""

    what: str
    image: np.ndarray
    labels: np.ndarray
    valid: np.ndarray


def prepare(region: Region, card: ModelCard, pad: tuple[int, ...] | None) -> Prepared:
    """Preprocess a pair with statistics of the *whole* image (as inference does), then cut the region out."""
    pair: LabelledImage = region.pair
    image = apply_preprocess(card, pair.image, intensity_statistics(card, pair.image))
    image, labels, valid = image[(slice(None), *region.box)], pair.labels[region.box], pair.valid[region.box]
    if pad is not None and any(pad):
        widths = [(p, p) for p in pad]
        image = np.pad(image, [(0, 0), *widths])
        labels, valid = np.pad(labels, widths), np.pad(valid, widths)
    return Prepared(region.what, np.ascontiguousarray(image), np.ascontiguousarray(labels), valid)


def crop_transform(card: ModelCard, recipe: Recipe) -> Any:
    """MONAI dictionary transforms: class-balanced crops of the recipe's size, then flips / quarter turns."""
    from monai.transforms import Compose, RandCropByLabelClassesd, RandFlipd, RandRotate90d

    keys = ["image", "label"]
    steps: list[Any] = [RandCropByLabelClassesd(
        keys=keys, label_key="label", spatial_size=list(recipe.crop_size or card.roi_size),
        ratios=list(recipe.class_ratios) if recipe.class_ratios else None, num_classes=card.out_channels,
        num_samples=recipe.batch_size, indices_key="indices", warn=False)]
    steps += [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in recipe.flip_axes]
    if recipe.rotate90:
        steps.append(RandRotate90d(keys=keys, prob=0.75, max_k=3, spatial_axes=(0, 1)))
    return Compose(steps)


def class_indices(labels: np.ndarray, n_classes: int) -> list[np.ndarray]:
    """Flat voxel indices per class, computed once (MONAI would redo it for every batch)."""
    from monai.transforms.utils import map_classes_to_indices

    return [np.asarray(i) for i in map_classes_to_indices(labels[None], num_classes=n_classes)]


# ---------------------------------------------------------------- training


@dataclass(frozen=True, slots=True)
class TrainSettings:
    """How a training run executes; ``seed`` also fixes what it produces (init, crops, flips)."""

    seed: int = 0  #: seed for init, crops and flips
    device: str = "auto"  #: auto (CUDA + AMP when present), cpu, cuda, cuda:1 ...
    threads: int = 1  #: torch CPU threads (1: byte-reproducible)
    progress: bool = False  #: draw a progress bar over each epoch's batches


DEFAULT_SETTINGS = TrainSettings()


def train(dataset: str, model_card: str | os.PathLike[str], epochs: int, *,
          catalog: str | os.PathLike[str] = "data_catalog.yaml", out_dir: str | os.PathLike[str] = "models",
          settings: TrainSettings = DEFAULT_SETTINGS,
          on_epoch: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train ``model_card``'s network on ``dataset`` for ``epochs``; write ``<name>.pt`` and ``<name>.yaml``.

    Resumes from ``<out_dir>/.<name>.ckpt.pt`` when it was written with the same arguments (``settings.seed`` included).
    ``on_epoch(epoch, mean_loss)`` is called after each epoch's checkpoint is saved.

    Raises
    ------
    CatalogError, CardError, InputError
        Unknown dataset, bad card or recipe, unreadable or mismatched pairs.
    """
    import torch
    from monai.utils import set_determinism
    seed, device, threads, progress = settings.seed, settings.device, settings.threads, settings.progress
    if epochs < 1:
        raise PipelineError(f"--epochs must be >= 1, got {epochs}")
    started = time.perf_counter()
    card_path, out = Path(model_card), Path(out_dir)
    entry = load_catalog(catalog).dataset(dataset)
    card, recipe, raw_card = read_template(card_path)
    if not out.is_dir():
        raise PipelineError(f"{out}: output directory does not exist")
    dev = resolve_device(device)
    torch.set_num_threads(threads)
    set_determinism(seed=seed)  # also makes cuDNN deterministic

    pairs = [load_pair(p, entry, card) for p in entry.pairs]
    held = [load_pair(p, entry, card) for p in entry.validation]
    train_regions, val_regions = split_regions(pairs, held, entry.holdout)
    samples = _samples(train_regions, card, recipe)
    run = _Run.start(card, recipe, dev, seed, total=epochs * recipe.steps_per_epoch)
    key = fingerprint(dataset, entry, card, recipe, epochs, seed)
    checkpoint = out / f".{card.name}.ckpt.pt"
    state = load_checkpoint(checkpoint, key)
    if state is not None:
        run.resume(state)
        logger.info("resuming %s from %s after epoch %d of %d", card.name, checkpoint, run.first, epochs)

    for epoch in range(run.first, epochs):
        run.losses.append(run.epoch(samples, recipe, seed, epoch, label=f"epoch {epoch + 1}/{epochs}",
                                    progress=progress))
        val = evaluate(run.network, val_regions, card, dev)["dice"]
        run.history.append(val)
        logger.info("epoch %d/%d: loss %.4f, validation dice %s", epoch + 1, epochs, run.losses[-1], val)
        save_checkpoint(checkpoint, run.state(key, epoch + 1))
        if on_epoch is not None:
            on_epoch(epoch + 1, run.losses[-1])

    network = run.network.cpu().eval()
    metrics = _final_metrics(network, card, val_regions, train_regions)
    weights, card_out = write_outputs(out, card, raw_card, network, metrics, _training_record(
        dataset, entry, recipe, run, epochs=epochs, seed=seed, threads=threads, wall=time.perf_counter() - started,
        command=(f"pipeline train --dataset {dataset} --model-card {relative(card_path)} --epochs {epochs} "
                 f"--seed {seed} --out-dir {relative(out)}")))
    checkpoint.unlink(missing_ok=True)
    return TrainResult(card=card_out, weights=weights, metrics=metrics, losses=run.losses, resumed_from=run.first)


def _samples(regions: list[Region], card: ModelCard, recipe: Recipe) -> list[dict[str, Any]]:
    """The training regions preprocessed and padded, as MONAI dictionaries with their class indices."""
    prepared = [prepare(r, card, recipe.pad) for r in regions]
    return [{"image": p.image, "label": p.labels[None], "indices": class_indices(p.labels, card.out_channels)}
            for p in prepared]


@dataclass
class _Run:
    """One training run: the network, its optimiser, learning-rate schedule, AMP scaler and loss, and what the
    epochs so far gave (mean loss and validation Dice per epoch)."""

    network: Any
    optimizer: Any
    schedule: Any
    scaler: Any
    loss_fn: Any
    transform: Any
    device: Any
    losses: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    first: int = 0  #: epochs done before this call (resumed)

    @classmethod
    def start(cls, card: ModelCard, recipe: Recipe, device: Any, seed: int, *, total: int) -> _Run:
        """A fresh network (initialised from ``seed``), Adam with cosine annealing over ``total`` steps."""
        import torch
        from monai.losses import DiceCELoss

        transform = crop_transform(card, recipe)
        torch.manual_seed(seed)
        network = build_network(card).to(device)
        optimizer = torch.optim.Adam(network.parameters(), lr=recipe.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=recipe.lr_min)
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        return cls(network, optimizer, schedule, scaler, DiceCELoss(to_onehot_y=True, softmax=True), transform, device)

    def resume(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (:func:`state`) of the same arguments."""
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.first, self.losses, self.history = int(state["epoch"]), list(state["losses"]), list(state["history"])

    def state(self, key: str, epochs_done: int) -> dict[str, Any]:
        """The checkpoint after ``epochs_done`` epochs, for arguments of fingerprint ``key``."""
        return {"fingerprint": key, "epoch": epochs_done, "losses": self.losses, "history": self.history,
                "model": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {}}

    def epoch(self, samples: list[dict[str, Any]], recipe: Recipe, seed: int, epoch: int, *, label: str,
              progress: bool) -> float:
        """One epoch of ``recipe.steps_per_epoch`` batches, every draw from ``(seed, epoch)``; the mean loss."""
        import torch
        from tqdm import tqdm

        torch.manual_seed(seed * 100_003 + epoch)  # every draw of this epoch follows from (seed, epoch)
        self.transform.set_random_state(seed=(seed * 100_003 + epoch) % 2**32)
        pick = np.random.default_rng([seed, epoch])
        self.network.train()
        running = 0.0
        bar = tqdm(range(recipe.steps_per_epoch), desc=label, disable=not progress, leave=False)
        for _ in bar:
            crops = self.transform(samples[int(pick.integers(len(samples)))])
            x = torch.stack([c["image"].as_tensor() for c in crops]).to(self.device)
            y = torch.stack([c["label"].as_tensor() for c in crops]).long().to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.device):
                loss = self.loss_fn(self.network(x), y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.schedule.step()
            running += float(loss.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        return running / recipe.steps_per_epoch


def _final_metrics(network: Any, card: ModelCard, val_regions: list[Region],
                   train_regions: list[Region]) -> dict[str, Any]:
    """The trained network scored on CPU on the held-out and the training regions, as the card records it."""
    import torch

    held, seen = (evaluate(network, r, card, torch.device("cpu")) for r in (val_regions, train_regions))
    return {"dice_heldout": held["dice"], "iou_heldout": held["iou"],
            "dice_train": seen["dice"], "iou_train": seen["iou"],
            "heldout": [r.what for r in val_regions], "train": [r.what for r in train_regions],
            "method": (f"argmax of monai sliding_window_inference (roi {list(card.roi_size)}, overlap "
                       f"{card.overlap}, gaussian, sw_batch_size {card.sw_batch_size}) on each whole "
                       "preprocessed image, cut to the region; monai DiceMetric and MeanIoU per label "
                       "(include_background, ignore_empty=False: 1.0 when a class is absent from truth and "
                       "prediction), mean over "
                       "regions; nodata excluded; final weights, no checkpoint selection")}


def _training_record(dataset: str, entry: TrainingDataset, recipe: Recipe, run: _Run, *, epochs: int, seed: int,
                     threads: int, wall: float, command: str) -> dict[str, Any]:
    """The card's ``training`` section: data, recipe, schedule, loss curve, device, versions and the command."""
    import monai
    import torch

    dev = run.device
    return {
        "dataset": dataset, "label_map": compact_map(entry.label_map),
        "pairs": [f"{relative(p.image)} + {relative(p.labels)}" for p in entry.pairs],
        "validation_pairs": [f"{relative(p.image)} + {relative(p.labels)}" for p in entry.validation],
        "holdout": entry.holdout.model_dump() if entry.holdout else None,
        "recipe": recipe.model_dump(mode="json", exclude_defaults=False),
        "epochs": epochs, "steps": epochs * recipe.steps_per_epoch, "seed": seed,
        "optimizer": "Adam, cosine annealing per step",
        "loss": "monai DiceCELoss(to_onehot_y=True, softmax=True)",
        "train_loss_per_epoch": [round(v, 4) for v in run.losses],
        "validation_dice_per_epoch": run.history,
        "device": f"{dev.type}{' + AMP' if dev.type == 'cuda' else f', {threads} thread(s)'}",
        "wall_time_s": round(wall, 1), "date": datetime.date.today().isoformat(),
        "code_version": code_version(), "torch": str(torch.__version__), "monai": str(monai.__version__),
        "python": platform.python_version(),
        "command": command,
    }
