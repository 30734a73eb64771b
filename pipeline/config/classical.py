"""Weightless (classical) methods a card may name, and the validated parameters of each."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.config.choices import check_choice


class Cleanup(BaseModel):
    """Binary clean-up shared by the mask methods: local morphology, then global component steps.

    ``opening``/``closing`` are ball (disk in 2D) radii in voxels; ``min_size`` drops objects of fewer
    voxels (face-connected); ``largest_component`` keeps the biggest object; ``fill_holes`` fills
    background not connected to the edge, in the whole
    ``volume`` or slice by ``slices`` (each plane across the last axis: axial for RAS CT).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    opening: int = Field(default=0, ge=0, le=16)
    closing: int = Field(default=0, ge=0, le=16)
    min_size: int = Field(default=0, ge=0)
    largest_component: bool = False
    fill_holes: Literal["none", "volume", "slices"] = "none"


class ThresholdParams(Cleanup):
    """Foreground where ``lower < value <= upper`` (either bound may be left out)."""

    lower: float | None = None
    upper: float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> ThresholdParams:
        if self.lower is None and self.upper is None:
            raise ValueError("threshold needs lower, upper or both")
        if self.lower is not None and self.upper is not None and not self.upper > self.lower:
            raise ValueError(f"upper must be > lower, got lower={self.lower}, upper={self.upper}")
        return self


class OtsuParams(Cleanup):
    """Otsu's threshold from a ``bins``-bin histogram of the whole input; foreground ``above`` or ``below`` it."""

    bins: int = Field(default=256, ge=2, le=65536)
    foreground: Literal["above", "below"] = "above"


class KMeansParams(BaseModel):
    """k intensity clusters; centres fitted on a seeded sample of ``sample`` voxels, labels sorted by centre."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    k: int = Field(ge=2, le=16)
    sample: int = Field(default=200_000, ge=100)
    seed: int = 0
    iterations: int = Field(default=50, ge=1)


class RegionGrowParams(Cleanup):
    """Grow from seed voxels (``value > high``) through connected voxels with ``value > low``
    (hysteresis thresholding), optionally capped at ``ceiling``."""

    low: float
    high: float
    ceiling: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> RegionGrowParams:
        if not self.high >= self.low:
            raise ValueError(f"high must be >= low, got low={self.low}, high={self.high}")
        return self


class EdgesParams(Cleanup):
    """Sobel edges of the Gaussian-smoothed input (``sigma`` voxels) above ``edge_above``, plus what they enclose
    (``fill_holes``: ``volume`` or ``slices``)."""

    sigma: float = Field(default=1.0, ge=0.0, le=8.0)
    edge_above: float = Field(gt=0)
    fill_holes: Literal["none", "volume", "slices"] = "slices"


class WatershedParams(Cleanup):
    """Marker watershed on the Sobel gradient: background markers ``value < background_below``,
    foreground markers ``value > foreground_above``, flooded within blocks padded by ``halo`` voxels."""

    background_below: float
    foreground_above: float
    sigma: float = Field(default=1.0, ge=0.0, le=8.0)
    halo: int = Field(default=16, ge=0, le=256)


#: Classical methods a card may name -> the model of their ``params``.
CLASSICAL_METHODS: dict[str, type[BaseModel]] = {
    "threshold": ThresholdParams,
    "otsu": OtsuParams,
    "kmeans": KMeansParams,
    "region_grow": RegionGrowParams,
    "edges": EdgesParams,
    "watershed": WatershedParams,
}


class Classical(BaseModel):
    """A weightless method from :data:`CLASSICAL_METHODS` and its parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: str
    params: Any = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _typed_params(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("method"), str):
            method = check_choice("classical method", data["method"], CLASSICAL_METHODS)
            params = data.get("params") or {}
            if isinstance(params, dict):
                data = {**data, "params": CLASSICAL_METHODS[method].model_validate(params)}
        return data
