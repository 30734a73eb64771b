"""A card to train: its ``training.recipe`` and the checks that it fits the card's network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.config.cards import ARCHITECTURES, ModelCard, _describe
from pipeline.config.yamlfile import read_mapping
from pipeline.errors import CardError

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
