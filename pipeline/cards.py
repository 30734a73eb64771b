"""Model cards: a model is data (a YAML card + a weights file), never a code branch.

A card names a MONAI network from :data:`ARCHITECTURES` with the keyword arguments
for its constructor, the labels it predicts, how to window the input and how to
normalise intensities. Cards are loaded with ``yaml.safe_load`` and validated here,
so a malformed card fails with one line naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.choices import check_choice
from pipeline.errors import CardError

#: Registry of networks a card may name: card name -> (module, class). Imported lazily.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "UNet": ("monai.networks.nets", "UNet"),
    "BasicUNet": ("monai.networks.nets", "BasicUNet"),
    "SegResNet": ("monai.networks.nets", "SegResNet"),
    "AttentionUnet": ("monai.networks.nets", "AttentionUnet"),
    "SwinUNETR": ("monai.networks.nets", "SwinUNETR"),
    "UNETR": ("monai.networks.nets", "UNETR"),
    "DynUNet": ("monai.networks.nets", "DynUNet"),
}

RGB = Annotated[tuple[int, int, int], Field(description="colour as 0-255 RGB")]


class Label(BaseModel):
    """One output class."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    color: RGB = (128, 128, 128)


class WindowScale(BaseModel):
    """Clip intensities to ``[a_min, a_max]`` then map linearly to ``[b_min, b_max]``.

    Pointwise, so it gives the same result on a chunk as on the whole volume
    (CT Hounsfield windows, reflectance scaling of satellite bands).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["window"] = "window"
    a_min: float
    a_max: float
    b_min: float = 0.0
    b_max: float = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> WindowScale:
        if not self.a_max > self.a_min:
            raise ValueError(f"a_max must be > a_min, got a_min={self.a_min}, a_max={self.a_max}")
        return self


class ZScore(BaseModel):
    """Subtract the mean and divide by the standard deviation of the whole volume.

    The statistics are global (computed in one streaming pass before inference),
    over voxels above ``threshold`` when it is given (MR background is excluded).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["zscore"] = "zscore"
    threshold: float | None = None


Preprocess = Annotated[WindowScale | ZScore, Field(discriminator="kind")]


class ModelCard(BaseModel):
    """Everything needed to rebuild, run and judge a model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str = ""
    domain: Literal["medical", "geo"] = "medical"
    architecture: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    spatial_dims: Literal[2, 3]
    in_channels: int = Field(ge=1)
    labels: dict[int, Label]
    roi_size: tuple[int, ...]
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(default=4, ge=1)
    preprocess: Preprocess
    bands: tuple[int, ...] | None = Field(default=None, description="1-based raster bands, in model order")
    weights: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        return check_choice("architecture", value, ARCHITECTURES)

    @field_validator("labels")
    @classmethod
    def _contiguous_labels(cls, value: dict[int, Label]) -> dict[int, Label]:
        if sorted(value) != list(range(len(value))):
            raise ValueError(f"label values must be 0..N-1 without gaps, got {sorted(value)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if len(self.roi_size) != self.spatial_dims:
            raise ValueError(f"roi_size needs {self.spatial_dims} sides, got {self.roi_size}")
        if any(s < 1 for s in self.roi_size):
            raise ValueError(f"roi_size sides must be >= 1, got {self.roi_size}")
        for key, want in (("spatial_dims", self.spatial_dims), ("in_channels", self.in_channels),
                          ("out_channels", len(self.labels))):
            got = self.kwargs.get(key, want)
            if got != want:
                raise ValueError(f"kwargs.{key} is {got} but the card says {want}")
        if self.bands is not None and len(self.bands) != self.in_channels:
            raise ValueError(f"bands lists {len(self.bands)} bands but in_channels is {self.in_channels}")
        return self

    @property
    def out_channels(self) -> int:
        return len(self.labels)

    def network_kwargs(self) -> dict[str, Any]:
        """Constructor arguments, with the card's dims and channels filled in."""
        return {"spatial_dims": self.spatial_dims, "in_channels": self.in_channels,
                "out_channels": self.out_channels, **self.kwargs}


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "card"
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def load_card(path: str | Path) -> ModelCard:
    """Read and validate a model card.

    Raises
    ------
    CardError
        The file is not YAML, uses non-safe tags, or fails validation.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CardError(f"{path}: model card not found") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        reason = str(e).splitlines()[0]
        raise CardError(f"{path}: not a valid YAML model card ({reason})") from e
    if not isinstance(data, dict):
        raise CardError(f"{path}: a model card must be a YAML mapping, got {type(data).__name__}")
    try:
        return ModelCard.model_validate(data)
    except ValidationError as e:
        raise CardError(f"{path}: {_describe(e)}") from e
