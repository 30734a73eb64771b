"""Intensity preprocessing a card may ask for: pointwise windows and global-statistics normalisations,
alone or chained."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    clip: bool = True  #: False: MONAI ``ScaleIntensityRanged(clip=False)``, linear beyond the window too

    @model_validator(mode="after")
    def _ordered(self) -> WindowScale:
        if not self.a_max > self.a_min:
            raise ValueError(f"a_max must be > a_min, got a_min={self.a_min}, a_max={self.a_max}")
        return self


class ZScore(BaseModel):
    """Subtract the mean and divide by the standard deviation of the whole volume.

    The statistics are global (computed in one streaming pass before inference),
    over voxels above ``threshold`` when it is given (MR background is excluded).
    ``nonzero`` and ``channel_wise`` are MONAI ``NormalizeIntensityd``'s: statistics over the non-zero
    voxels only, which alone are normalised (zeros stay 0); one mean/std per channel.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["zscore"] = "zscore"
    threshold: float | None = None
    nonzero: bool = False
    channel_wise: bool = False

    @model_validator(mode="after")
    def _one_mask(self) -> ZScore:
        if self.nonzero and self.threshold is not None:
            raise ValueError("zscore takes threshold or nonzero, not both")
        return self


class MinMax(BaseModel):
    """Map the image's own minimum..maximum to ``[minv, maxv]`` (MONAI ``ScaleIntensityd``); global
    statistics, per channel with ``channel_wise``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["minmax"] = "minmax"
    minv: float = 0.0
    maxv: float = 1.0
    channel_wise: bool = False


class Percentiles(BaseModel):
    """Map the ``lower``..``upper`` percentiles of the image to ``[b_min, b_max]``, optionally clipped
    (MONAI ``ScaleIntensityRangePercentilesd``). The percentiles are exact (NumPy's linear rule), from
    value counts streamed over chunks."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["percentiles"] = "percentiles"
    lower: float = Field(ge=0.0, le=100.0)
    upper: float = Field(ge=0.0, le=100.0)
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = False
    relative: bool = False
    channel_wise: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Percentiles:
        if not self.upper > self.lower:
            raise ValueError(f"upper must be > lower, got lower={self.lower}, upper={self.upper}")
        return self


Step = Annotated[WindowScale | ZScore | MinMax | Percentiles, Field(discriminator="kind")]


class Chain(BaseModel):
    """Several steps in order, each on the previous one's output (a bundle's ``NormalizeIntensityd`` then
    ``ScaleIntensityd``); each step's global statistics are taken on what reaches it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["chain"] = "chain"
    steps: tuple[Step, ...] = Field(min_length=1)


Preprocess = Annotated[WindowScale | ZScore | MinMax | Percentiles | Chain, Field(discriminator="kind")]


def preprocess_steps(preprocess: Any) -> tuple[Any, ...]:
    """The card's preprocessing as a tuple of single steps (empty for none)."""
    if preprocess is None:
        return ()
    return tuple(preprocess.steps) if isinstance(preprocess, Chain) else (preprocess,)
