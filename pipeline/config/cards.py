"""Model cards: a model is data (a YAML card + a weights file), never a code branch.

A card names a MONAI network from :data:`ARCHITECTURES` with the keyword arguments
for its constructor, the labels it predicts, how to window the input and how to
normalise intensities. Cards are loaded with ``yaml.safe_load`` and validated here,
so a malformed card fails with one line naming the file and the key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.config.choices import BACKENDS, check_choice
from pipeline.config.classical import Classical
from pipeline.config.preprocess import Preprocess
from pipeline.config.yamlfile import read_mapping
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

#: Networks that are not built from a class but imported whole (see :mod:`pipeline.model.bundles`).
IMPORTED = ("torchscript", "bundle")

Channel = Annotated[int, Field(ge=0, le=255)]
RGB = Annotated[tuple[Channel, Channel, Channel], Field(description="colour as 0-255 RGB")]
#: Most memory one batch of windows may take (inputs + outputs, float32): a card's roi and
#: sw_batch_size are sized against it, so a typo (roi 4096^3 is 256 GiB per channel) fails as a
#: card error instead of an allocation. The shipped network cards need 0.75-14 MiB.
MAX_WINDOW_BYTES = 16 * 2**30


class Coded(BaseModel):
    """A coded concept (DICOM code sequence item): ``value`` in ``scheme`` (SCT = SNOMED CT), read as ``meaning``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    value: str = Field(min_length=1, max_length=64)
    scheme: str = Field(default="SCT", min_length=1, max_length=16)
    meaning: str = Field(min_length=1, max_length=64)


class LabelCode(BaseModel):
    """What a label is, as DICOM SEG codes it: a segmented property category (CID 7150, e.g. Anatomical
    Structure) and type (CID 7151, e.g. Liver). Labels without one are written as generic Tissue."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    category: Coded
    type: Coded


class Label(BaseModel):
    """One output class."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    color: RGB = (128, 128, 128)
    code: LabelCode | None = None


class ModelCard(BaseModel):
    """Everything needed to rebuild, run and judge a model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str = ""
    kind: Literal["network", "classical"] = "network"
    domain: Literal["medical", "geo"] = "medical"
    architecture: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    spatial_dims: Literal[2, 3]
    in_channels: int = Field(ge=1)
    labels: dict[int, Label]
    roi_size: tuple[int, ...] = ()
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(default=4, ge=1, description="windows per network call (MONAI's); OpenVINO "
                               "calls hold at most 2^16 voxels (engine/forward.py): one 3D window")
    backend: str = Field(default="auto", description="CPU inference backend (pipeline.config.choices.BACKENDS): "
                         "auto = OpenVINO on CPU when it converts the network faithfully, else torch")
    preprocess: Preprocess | None = None
    orientation: str | None = Field(default=None, description="3D: axis codes the network was trained in, e.g. RAS")
    spacing: tuple[float, ...] | None = Field(default=None, description="grid spacing it was trained at: mm per "
                                              "axis of `orientation` (3D), metres per row/column (2D)")
    bands: tuple[int, ...] | None = Field(default=None, description="1-based raster bands, in model order")
    weights: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    classical: Classical | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str | None) -> str | None:
        return None if value is None else check_choice("architecture", value, [*ARCHITECTURES, *IMPORTED])

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        return check_choice("backend", value, BACKENDS)

    @model_validator(mode="before")
    @classmethod
    def _classical_roi(cls, data: Any) -> Any:
        """A classical card has no windows: its roi is one voxel (blocks then default to the engine's size)."""
        if isinstance(data, dict) and data.get("kind") == "classical" and "roi_size" not in data:
            dims = data.get("spatial_dims")
            if dims in (2, 3):
                data = {**data, "roi_size": (1,) * dims}
        return data

    @field_validator("labels")
    @classmethod
    def _contiguous_labels(cls, value: dict[int, Label]) -> dict[int, Label]:
        if sorted(value) != list(range(len(value))):
            raise ValueError(f"label values must be 0..N-1 without gaps, got {sorted(value)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        self._check_kind()
        if len(self.roi_size) != self.spatial_dims:
            raise ValueError(f"roi_size needs {self.spatial_dims} sides, got {self.roi_size}")
        if any(s < 1 for s in self.roi_size):
            raise ValueError(f"roi_size sides must be >= 1, got {self.roi_size}")
        batch = window_bytes(self.roi_size, self.sw_batch_size, self.in_channels + len(self.labels))
        if batch > MAX_WINDOW_BYTES:
            raise ValueError(f"roi_size {list(self.roi_size)} with sw_batch_size {self.sw_batch_size} needs "
                             f"{batch / 2**30:.3g} GiB per batch of windows (at most {MAX_WINDOW_BYTES // 2**30} GiB)")
        for key, want in (("spatial_dims", self.spatial_dims), ("in_channels", self.in_channels),
                          ("out_channels", len(self.labels))):
            got = self.kwargs.get(key, want)
            if got != want:
                raise ValueError(f"kwargs.{key} is {got} but the card says {want}")
        if self.bands is not None and len(self.bands) != self.in_channels:
            raise ValueError(f"bands lists {len(self.bands)} bands but in_channels is {self.in_channels}")
        self._check_alignment()
        return self

    def _check_alignment(self) -> None:
        """The engine aligns windows to ``orientation`` (3D) and ``spacing`` (2D and 3D) of network cards."""
        if self.orientation is None and self.spacing is None:
            return
        if self.kind != "network":
            raise ValueError("orientation and spacing are for network cards")
        if self.orientation is not None:
            codes = self.orientation
            if self.spatial_dims != 3:
                raise ValueError("orientation is for 3D cards (a raster's rows and columns are the map's)")
            if len(codes) != 3 or [sum(c in pair for c in codes) for pair in ("LR", "PA", "IS")] != [1, 1, 1]:
                raise ValueError("orientation must be 3 axis codes, one of each of L/R, P/A, I/S (e.g. RAS), "
                                 f"got {codes!r}")
        if self.spacing is not None and (len(self.spacing) != self.spatial_dims
                                         or not all(0 < s < 1e6 for s in self.spacing)):
            raise ValueError(f"spacing needs {self.spatial_dims} positive sizes (mm or metres), got {self.spacing}")

    def _check_kind(self) -> None:
        if self.kind == "classical":
            if self.classical is None:
                raise ValueError("a classical card needs a 'classical' section (method + params)")
            for key in ("architecture", "weights", "sha256"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} is for network cards; a classical card has no network or weights")
            if self.classical.method == "kmeans" and len(self.labels) != self.classical.params.k:
                raise ValueError(f"kmeans with k={self.classical.params.k} needs {self.classical.params.k} labels")
            if self.classical.method != "kmeans" and len(self.labels) != 2:
                raise ValueError(f"method {self.classical.method} gives a mask: it needs exactly 2 labels")
            return
        if self.classical is not None:
            raise ValueError("'classical' is only for cards with kind: classical")
        missing = [key for key in ("architecture", "weights", "sha256", "preprocess") if getattr(self, key) is None]
        if missing or not self.roi_size:
            raise ValueError(f"a network card needs {', '.join(missing or ['roi_size'])}")

    @property
    def out_channels(self) -> int:
        return len(self.labels)

    def network_kwargs(self) -> dict[str, Any]:
        """Constructor arguments, with the card's dims and channels filled in."""
        return {"spatial_dims": self.spatial_dims, "in_channels": self.in_channels,
                "out_channels": self.out_channels, **self.kwargs}


def window_bytes(roi_size: tuple[int, ...], batch: int, channels: int) -> int:
    """float32 bytes of one batch of ``batch`` windows of ``roi_size`` with ``channels`` in + out."""
    return 4 * math.prod(roi_size) * batch * channels


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
    data = read_mapping(path, "model card", CardError)
    try:
        return ModelCard.model_validate(data)
    except ValidationError as e:
        raise CardError(f"{path}: {_describe(e)}") from e
