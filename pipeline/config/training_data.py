"""Training datasets of the catalog: image/label pairs for ``pipeline train`` and the validation split."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from pipeline.config.choices import check_choice
from pipeline.config.segmenters import SEGMENTERS
from pipeline.config.yamlfile import resolve_relative


def _id_list(value: Any) -> list[int]:
    """``[5, "25-50"]`` -> ``[5, 25, ..., 50]``: label ids, with inclusive ranges written as strings."""
    ids: list[int] = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str) and re.fullmatch(r"\d+-\d+", item.strip()):
            low, high = (int(v) for v in item.split("-"))
            if high < low:
                raise ValueError(f"range {item!r} is empty")
            ids.extend(range(low, high + 1))
        elif isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            ids.append(item)
        else:
            raise ValueError(f"label ids must be integers >= 0 or ranges like '25-50', got {item!r}")
    return ids


class TrainingPair(BaseModel):
    """One image and its labels on the same grid: NIfTI + NIfTI, GeoTIFF + GeoTIFF, or GeoTIFF + vectors."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    image: Path
    labels: Path

    @field_validator("image", "labels")
    @classmethod
    def _anchor(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_relative(value, info)


class Holdout(BaseModel):
    """Held back from training in every pair: indices ``>= start`` along spatial ``axis`` (array order)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    axis: int = Field(ge=0, le=2, description="volumes: 0=i, 1=j, 2=k; rasters: 0=row, 1=column")
    start: int = Field(ge=1)


class TrainingDataset(BaseModel):
    """Image/label pairs for ``pipeline train``, and what is kept for validation (a region and/or pairs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str
    description: str = ""
    pairs: list[TrainingPair] = Field(min_length=1)
    validation: list[TrainingPair] = Field(default_factory=list, description="pairs never trained on")
    holdout: Holdout | None = None
    bands: tuple[Annotated[int, Field(ge=1)], ...] | None = Field(default=None, description="geo only: 1-based")
    label_map: dict[Annotated[int, Field(ge=1)], list[int]] | None = Field(
        default=None, description="class -> source label ids (ranges as 'a-b'); every other id is background (0)")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        return check_choice("kind", value, SEGMENTERS)

    @field_validator("label_map", mode="before")
    @classmethod
    def _expand_ranges(cls, value: Any) -> Any:
        return {k: _id_list(v) for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _has_validation(self) -> TrainingDataset:
        if self.holdout is None and not self.validation:
            raise ValueError("needs a validation split: 'holdout' (a region) and/or 'validation' (pairs)")
        if self.bands is not None and self.kind != "geo":
            raise ValueError(f"bands is only valid for kind 'geo', not {self.kind!r}")
        return self
