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

import contextlib
import datetime
import hashlib
import itertools
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.config.cards import ARCHITECTURES, ModelCard, _describe
from pipeline.config.catalog import TrainingDataset, load_catalog
from pipeline.config.yamlfile import read_mapping
from pipeline.errors import CardError, ModelError, PipelineError, first_line
from pipeline.io.hashing import sha256_file
from pipeline.model.models import apply_preprocess, build_network, intensity_statistics
from pipeline.train.datasets import LabelledImage, Region, load_pair, split_regions

logger = logging.getLogger(__name__)

PLACEHOLDER_SHA256 = "0" * 64


class Recipe(BaseModel):
    """How a card is trained (its ``training.recipe``); defaults suit the small shipped UNets."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    batch_size: int = Field(default=4, ge=1)
    steps_per_epoch: int = Field(default=100, ge=1)
    crop_size: tuple[int, ...] | None = Field(default=None, description="default: the card's roi_size")
    lr: float = Field(default=1e-3, gt=0)
    lr_min: float = Field(default=1e-5, ge=0, description="cosine annealing over all steps down to this")
    class_ratios: tuple[float, ...] | None = Field(default=None, description="crop centre class odds; default equal")
    flip_axes: tuple[int, ...] = Field(default=(), description="spatial axes flipped at random (p=0.5 each)")
    rotate90: bool = Field(default=False, description="random quarter turns in the first two spatial axes")
    pad: tuple[int, ...] | None = Field(default=None, description="zeros added (after preprocessing) to both ends "
                                        "of each training region, per spatial axis, as sliding windows pad")


@dataclass(frozen=True)
class TrainResult:
    card: Path
    weights: Path
    metrics: dict[str, Any]
    losses: list[float]  #: mean training loss per epoch, over the whole run (resumed epochs included)
    resumed_from: int  #: epochs already done when this call started (0: fresh)


# ---------------------------------------------------------------- card template


def read_template(path: Path) -> tuple[ModelCard, Recipe, dict[str, Any]]:
    """Read a card to train: like :func:`pipeline.config.cards.load_card`, but weights and sha256 may be missing."""
    data = read_mapping(path, "model card", CardError)
    data.setdefault("weights", f"{data.get('name', path.stem)}.pt")
    data.setdefault("sha256", PLACEHOLDER_SHA256)
    try:
        card = ModelCard.model_validate(data)
        recipe = Recipe.model_validate((data.get("training") or {}).get("recipe") or {})
    except ValidationError as e:
        raise CardError(f"{path}: {_describe(e)}") from e
    if card.architecture not in ARCHITECTURES:
        raise CardError(f"{path}: only network cards naming a MONAI architecture ({', '.join(ARCHITECTURES)}) "
                        f"can be trained, not {card.architecture or card.kind!r}")
    crop = recipe.crop_size or card.roi_size
    if len(crop) != card.spatial_dims or any(a >= card.spatial_dims for a in recipe.flip_axes):
        raise CardError(f"{path}: training.recipe crop_size/flip_axes do not fit {card.spatial_dims}D")
    if recipe.pad is not None and len(recipe.pad) != card.spatial_dims:
        raise CardError(f"{path}: training.recipe.pad needs {card.spatial_dims} values")
    if recipe.class_ratios is not None and len(recipe.class_ratios) != card.out_channels:
        raise CardError(f"{path}: training.recipe.class_ratios needs {card.out_channels} values")
    return card, recipe, data


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


# ---------------------------------------------------------------- evaluation


def predict(network: Any, image: np.ndarray, card: ModelCard, device: Any) -> np.ndarray:
    """Argmax of MONAI ``sliding_window_inference`` over a whole preprocessed image, as the engine runs it."""
    import torch
    from monai.inferers import sliding_window_inference

    network.eval()
    with torch.no_grad(), _autocast(device):
        logits = sliding_window_inference(torch.from_numpy(image)[None].to(device), roi_size=card.roi_size,
                                          sw_batch_size=card.sw_batch_size, predictor=network,
                                          overlap=card.overlap, mode="gaussian")
    return logits.argmax(dim=1)[0].cpu().numpy()


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


# ---------------------------------------------------------------- training


def _autocast(device: Any) -> Any:
    import torch

    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()


def resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise PipelineError(f"--device {name!r}: {e}") from e


def fingerprint(dataset_name: str, dataset: TrainingDataset, card: ModelCard, recipe: Recipe,
                epochs: int, seed: int) -> str:
    """What a checkpoint must match to be resumed: same data, network, recipe, epochs and seed."""
    what = {"dataset": dataset_name, "entry": dataset.model_dump(mode="json"), "recipe": recipe.model_dump(mode="json"),
            "network": [card.architecture, card.network_kwargs()], "preprocess": card.preprocess.model_dump(),
            "roi": card.roi_size, "epochs": epochs, "seed": seed}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _load_checkpoint(path: Path, key: str) -> dict[str, Any] | None:
    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file is not worth failing for: start over
        logger.warning("%s: unreadable checkpoint (%s); starting over", path, first_line(e))
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != key:
        logger.warning("%s: checkpoint is from other arguments; starting over", path)
        return None
    return state


def save_state(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a file object: the archive is then named ``archive``, not after the (temporary,
    pid-stamped) file name, so the same tensors always give the same bytes and the same sha256."""
    import torch

    with path.open("wb") as f:
        torch.save(state, f)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".partial")
    save_state(state, tmp)
    os.replace(tmp, path)


def train(dataset: str, model_card: str | os.PathLike[str], epochs: int, *,
          catalog: str | os.PathLike[str] = "data_catalog.yaml", out_dir: str | os.PathLike[str] = "models",
          seed: int = 0, device: str = "auto", threads: int = 1, progress: bool = False,
          on_epoch: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train ``model_card``'s network on ``dataset`` for ``epochs``; write ``<name>.pt`` and ``<name>.yaml``.

    Resumes from ``<out_dir>/.<name>.ckpt.pt`` when it was written with the same arguments.
    ``on_epoch(epoch, mean_loss)`` is called after each epoch's checkpoint is saved.

    Raises
    ------
    CatalogError, CardError, InputError
        Unknown dataset, bad card or recipe, unreadable or mismatched pairs.
    """
    import monai
    import torch
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism
    from tqdm import tqdm

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
    prepared = [prepare(r, card, recipe.pad) for r in train_regions]
    samples = [{"image": p.image, "label": p.labels[None], "indices": class_indices(p.labels, card.out_channels)}
               for p in prepared]
    transform = crop_transform(card, recipe)

    torch.manual_seed(seed)
    network = build_network(card).to(dev)
    optimizer = torch.optim.Adam(network.parameters(), lr=recipe.lr)
    total = epochs * recipe.steps_per_epoch
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=recipe.lr_min)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    key = fingerprint(dataset, entry, card, recipe, epochs, seed)
    checkpoint = out / f".{card.name}.ckpt.pt"
    state = _load_checkpoint(checkpoint, key)
    losses: list[float] = []
    history: list[dict[str, float]] = []
    first = 0
    if state is not None:
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        first, losses, history = int(state["epoch"]), list(state["losses"]), list(state["history"])
        logger.info("resuming %s from %s after epoch %d of %d", card.name, checkpoint, first, epochs)

    for epoch in range(first, epochs):
        torch.manual_seed(seed * 100_003 + epoch)  # every draw of this epoch follows from (seed, epoch)
        transform.set_random_state(seed=(seed * 100_003 + epoch) % 2**32)
        pick = np.random.default_rng([seed, epoch])
        network.train()
        running = 0.0
        bar = tqdm(range(recipe.steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress,
                   leave=False)
        for _ in bar:
            crops = transform(samples[int(pick.integers(len(samples)))])
            x = torch.stack([c["image"].as_tensor() for c in crops]).to(dev)
            y = torch.stack([c["label"].as_tensor() for c in crops]).long().to(dev)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(dev):
                loss = loss_fn(network(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            running += float(loss.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        losses.append(running / recipe.steps_per_epoch)
        val = evaluate(network, val_regions, card, dev)["dice"]
        history.append(val)
        logger.info("epoch %d/%d: loss %.4f, validation dice %s", epoch + 1, epochs, losses[-1], val)
        _save_checkpoint(checkpoint, {
            "fingerprint": key, "epoch": epoch + 1, "losses": losses, "history": history,
            "model": network.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {}})
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1])

    network = network.cpu().eval()
    held, seen = (evaluate(network, r, card, torch.device("cpu")) for r in (val_regions, train_regions))
    metrics = {"dice_heldout": held["dice"], "iou_heldout": held["iou"],
               "dice_train": seen["dice"], "iou_train": seen["iou"],
               "heldout": [r.what for r in val_regions], "train": [r.what for r in train_regions],
               "method": (f"argmax of monai sliding_window_inference (roi {list(card.roi_size)}, overlap "
                          f"{card.overlap}, gaussian, sw_batch_size {card.sw_batch_size}) on each whole "
                          "preprocessed image, cut to the region; monai DiceMetric and MeanIoU per label "
                          "(include_background, ignore_empty=False: 1.0 when a class is absent from truth and "
                          "prediction), mean over "
                          "regions; nodata excluded; final weights, no checkpoint selection")}
    wall = time.perf_counter() - started
    weights, card_out = _write_outputs(out, card, raw_card, network, metrics, {
        "dataset": dataset, "label_map": _compact_map(entry.label_map),
        "pairs": [f"{_rel(p.image)} + {_rel(p.labels)}" for p in entry.pairs],
        "validation_pairs": [f"{_rel(p.image)} + {_rel(p.labels)}" for p in entry.validation],
        "holdout": entry.holdout.model_dump() if entry.holdout else None,
        "recipe": recipe.model_dump(mode="json", exclude_defaults=False),
        "epochs": epochs, "steps": total, "seed": seed, "optimizer": "Adam, cosine annealing per step",
        "loss": "monai DiceCELoss(to_onehot_y=True, softmax=True)",
        "train_loss_per_epoch": [round(v, 4) for v in losses],
        "validation_dice_per_epoch": history,
        "device": f"{dev.type}{' + AMP' if dev.type == 'cuda' else f', {threads} thread(s)'}",
        "wall_time_s": round(wall, 1), "date": datetime.date.today().isoformat(),
        "code_version": _code_version(), "torch": str(torch.__version__), "monai": str(monai.__version__),
        "python": platform.python_version(),
        "command": (f"pipeline train --dataset {dataset} --model-card {_rel(card_path)} --epochs {epochs} "
                    f"--seed {seed} --out-dir {_rel(out)}"),
    })
    checkpoint.unlink(missing_ok=True)
    return TrainResult(card=card_out, weights=weights, metrics=metrics, losses=losses, resumed_from=first)


def _compact_map(label_map: dict[int, list[int]] | None) -> dict[int, list[int | str]] | None:
    """``{5: [25, 26, ..., 50, 92]}`` -> ``{5: ["25-50", 92]}``, as the catalog may write it."""
    if label_map is None:
        return None
    out: dict[int, list[int | str]] = {}
    for value, ids in label_map.items():
        runs: list[int | str] = []
        for _, group in itertools.groupby(enumerate(sorted(set(ids))), key=lambda t: t[1] - t[0]):
            members = [v for _, v in group]
            runs.append(members[0] if len(members) == 1 else f"{members[0]}-{members[-1]}")
        out[value] = runs
    return out


def _rel(path: Path) -> str:
    """A path relative to the working directory when it is inside it (cards must not carry home dirs)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _code_version() -> str:
    from pipeline.version import code_version

    return code_version()


def _write_outputs(out: Path, card: ModelCard, raw: dict[str, Any], network: Any, metrics: dict[str, Any],
                   training: dict[str, Any]) -> tuple[Path, Path]:
    """Weights first, then the card naming their sha256, each written to a temporary and renamed."""
    from pipeline.io.atomic import atomic_path

    weights = out / f"{card.name}.pt"
    with atomic_path(weights) as tmp:
        save_state(network.state_dict(), tmp)
        digest = sha256_file(tmp)
    notes = {k: v for k, v in (raw.get("metrics") or {}).items() if k == "notes"}  # human-written, kept
    filled = {**raw, "weights": weights.name, "sha256": digest, "metrics": {**metrics, **notes},
              "training": training}
    text = yaml.safe_dump(json.loads(json.dumps(filled)), sort_keys=False)  # via JSON: no YAML anchors
    try:
        ModelCard.model_validate(yaml.safe_load(text))
    except ValidationError as e:  # never write a card the loader would refuse
        raise ModelError(f"{out / card.name}.yaml: the filled card does not validate ({_describe(e)})") from e
    card_path = out / f"{card.name}.yaml"
    with atomic_path(card_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return weights, card_path
