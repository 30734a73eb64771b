"""Load models from cards: ``load_model(name_or_path)`` -> :class:`Model`.

The engine uses exactly ``.network``, ``.roi_size``, ``.overlap``, ``.labels``,
``.preprocess`` (whole array) and ``.preprocess_block`` (one chunk, with global
statistics), so ``argmax(sliding_window_inference(preprocess(x)))`` with MONAI is
the reference result for any model.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.cards import ARCHITECTURES, IMPORTED, Label, ModelCard, load_card
from pipeline.config.choices import unknown_choice
from pipeline.errors import CardError, ModelError
from pipeline.io.hashing import sha256_file
from pipeline.model import bundles, intensity
from pipeline.model.bundles import ImportedNetwork
from pipeline.model.conversions import has_card_entry
from pipeline.model.intensity import neutralise
from pipeline.model.weights import check_sha256, load_weights

logger = logging.getLogger(__name__)

#: Directory searched for cards by name; ``PIPELINE_MODELS_DIR`` overrides it.
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
DEFAULT_MODEL = "ct-organs"

Statistics = intensity.Statistics


def models_dir() -> Path:
    return Path(os.environ.get("PIPELINE_MODELS_DIR", MODELS_DIR))


def available_models() -> dict[str, Path]:
    """Card name -> card path for every valid card in :func:`models_dir`."""
    found: dict[str, Path] = {}
    for path in sorted(models_dir().glob("*.yaml")):
        try:
            found[load_card(path).name] = path
        except CardError as e:
            logger.warning("skipping invalid card: %s", e)
    return found


def resolve_card_path(name_or_path: str | os.PathLike[str] | None) -> Path:
    """Turn a model name, a card path or ``None`` (the default model) into a card path."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        if not candidate.is_file():
            raise CardError(f"{candidate}: model card not found")
        return candidate.resolve()
    named = models_dir() / f"{name_or_path}.yaml"  # the usual case: parse one card, not every card (0.3 s)
    if named.is_file() and candidate.name == str(name_or_path):
        try:
            if load_card(named).name == str(name_or_path):
                return named
        except CardError:
            pass  # reported below, as the scan skips it
    cards = available_models()
    if str(name_or_path) in cards:
        return cards[str(name_or_path)]
    raise CardError(unknown_choice("model", str(name_or_path), cards, listing="available"))


def build_network(card: ModelCard) -> Any:
    """Instantiate the card's MONAI network with random weights."""
    architecture = card.architecture
    if architecture is None or architecture not in ARCHITECTURES:
        raise CardError(f"card {card.name!r}: {architecture or card.kind!r} is not built from a MONAI class")
    module_name, class_name = ARCHITECTURES[architecture]
    cls = getattr(importlib.import_module(module_name), class_name)
    try:
        return cls(**card.network_kwargs())
    except (TypeError, ValueError, AssertionError) as e:
        raise CardError(f"card {card.name!r}: cannot build {card.architecture}: {e}") from e


def intensity_statistics(card: ModelCard, array: Any, valid: Any = None) -> Statistics:
    """Global statistics the card's preprocessing needs (empty for pointwise ones).

    ``array`` (C, *spatial) may be NumPy or Dask; with Dask the statistics stream over chunks
    (:mod:`pipeline.model.intensity`). With ``valid`` (*spatial, bool), only valid pixels count: nodata
    never shifts the statistics.
    """
    return intensity.statistics(card.preprocess, array, valid)


def apply_preprocess(card: ModelCard, block: np.ndarray, statistics: Statistics,
                     valid: np.ndarray | None = None) -> np.ndarray:
    """Normalise one chunk (C, *spatial) -> float32, given global ``statistics``; pixels not ``valid``
    (*spatial) become :data:`~pipeline.model.intensity.NEUTRAL`, whatever their stored value."""
    return neutralise(intensity.apply(card.preprocess, block, statistics), valid)


@dataclass(frozen=True)
class Model:
    """A loaded model: card + network (eval mode, CPU) + identity.

    The network is built on first use of :attr:`network` (``loader``; None: weightless). It is built at load
    time, so a bad weights file fails there, except when an OpenVINO conversion of these very weights exists:
    CPU runs then never build it and never import torch (see :func:`_converted_before`).
    """

    card: ModelCard
    card_path: Path
    loader: Callable[[], Any] | None
    sha256: str
    trust: bool = False  #: passed on to workers through :attr:`ref`

    @functools.cached_property
    def network(self) -> Any:
        return None if self.loader is None else self.loader()

    @property
    def identity(self) -> str | None:
        """:func:`card_identity` of the card: how the engine finds a conversion without the network."""
        return card_identity(self.card)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def roi_size(self) -> tuple[int, ...]:
        return self.card.roi_size

    @property
    def overlap(self) -> float:
        return self.card.overlap

    @property
    def labels(self) -> dict[int, Label]:
        return self.card.labels

    def statistics(self, array: Any, valid: Any = None) -> Statistics:
        return intensity_statistics(self.card, array, valid)

    def preprocess_block(self, block: np.ndarray, statistics: Statistics,
                         valid: np.ndarray | None = None) -> np.ndarray:
        return apply_preprocess(self.card, block, statistics, valid)

    def preprocess(self, array: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Whole-array preprocessing: (C, *spatial) -> float32 (C, *spatial); invalid pixels neutral."""
        return apply_preprocess(self.card, array, self.statistics(array, valid), valid)

    def on_backend(self, backend: str | None) -> Model:
        """This model with its card's CPU inference ``backend`` replaced (None: unchanged). Runs use the
        card in the driver's hands, and the work store's fingerprint includes it, so resume never mixes two."""
        if backend is None:
            return self
        return replace(self, card=ModelCard.model_validate({**self.card.model_dump(), "backend": backend}))

    @property
    def ref(self) -> ModelRef:
        """A small picklable handle that Dask workers resolve through their own cache."""
        return ModelRef(str(self.card_path), self.sha256, self.trust)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its ref (e.g. inside ``preprocess_block`` tasks): the receiving process reloads it
        through its own cache, so weights never travel with a task graph and TorchScript (unpicklable) works."""
        return _cached_model, (str(self.card_path), self.sha256, self.trust)


@dataclass(frozen=True)
class ModelRef:
    """What travels to Dask workers instead of the network: card path + weights sha256."""

    card_path: str
    sha256: str
    trust: bool = False  #: a bundle's config may run non-monai code (see pipeline.model.bundles)

    def load(self) -> Model:
        """The model, once per process (its network is built here unless it is not needed, see :class:`Model`)."""
        return _cached_model(self.card_path, self.sha256, self.trust)

    def network(self) -> Any:
        return self.load().network

    def identity(self) -> str | None:
        """The model's :func:`card_identity` (loads the card, not the network)."""
        return self.load().identity


def load_model(name_or_path: str | os.PathLike[str] | None = None, *, trust: bool = False) -> Model:
    """Load a model by card name (``"ct-organs"``), card path, MONAI bundle directory, TorchScript file
    (with its card beside it), or the default model. ``trust`` lets a bundle config run non-monai code.

    Raises
    ------
    CardError
        Unknown name, invalid card, unknown architecture.
    ModelError
        Missing weights, checksum mismatch, unsafe or incompatible weights.
    """
    imported = bundles.imported_path(name_or_path)
    if imported is not None and imported.is_dir():
        return _imported_model(bundles.load_bundle(imported, trust=trust), trust=trust)
    card_path = resolve_card_path(imported or name_or_path)
    card = load_card(card_path)
    if card.architecture in IMPORTED:
        return _imported_model(bundles.load_imported(card, card_path, trust=trust), trust=trust)
    if card.kind == "classical":  # weightless: the card itself is the model's identity
        return Model(card=card, card_path=card_path, loader=None, sha256=sha256_file(card_path))
    _, sha256 = _weights(card, card_path)
    builder = functools.partial(_built_network, card, card_path)
    if _converted_before(card, card_path):  # these very weights built, converted and passed parity before
        return Model(card=card, card_path=card_path, loader=builder, sha256=sha256)
    return Model(card=card, card_path=card_path, loader=given(builder()), sha256=sha256)


def _weights(card: ModelCard, card_path: Path) -> tuple[Path, str]:
    """A network card's weights file and sha256 (the card's validation requires both)."""
    if card.weights is None or card.sha256 is None:
        raise CardError(f"{card_path}: a network card needs weights and sha256")
    return card_path.parent / card.weights, card.sha256


def _imported_model(imported: ImportedNetwork, *, trust: bool) -> Model:
    """A bundle's or TorchScript file's network, already built, as a :class:`Model`."""
    return Model(card=imported.card, card_path=imported.card_path, loader=given(imported.network),
                 sha256=imported.sha256, trust=trust)


def _built_network(card: ModelCard, card_path: Path) -> Any:
    """The card's network with its checked weights, in eval mode."""
    network = build_network(card)
    weights, sha256 = _weights(card, card_path)
    state = load_weights(weights, sha256)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ModelError(f"{weights}: weights do not fit {card.architecture} ({first})") from e
    return network.eval()


def _converted_before(card: ModelCard, card_path: Path) -> bool:
    """Whether the network may be built only when used: the weights file is the one the card names (checked
    now, so a wrong file fails here as always) and this exact network has a checked OpenVINO conversion, which
    it could only get by building, loading and passing the parity check before. CPU runs then need no torch."""
    identity = card_identity(card)
    if identity is None:
        return False
    if not has_card_entry(identity):
        return False
    check_sha256(*_weights(card, card_path))
    return True


def card_identity(card: ModelCard) -> str | None:
    """What fixes a card's network exactly, for finding its conversion without building it: architecture,
    arguments, weights sha256 and the versions of the code that builds it. None for imported networks
    (bundles, TorchScript) and weightless cards, whose structure the card does not spell out."""
    if card.architecture not in ARCHITECTURES or not card.sha256:
        return None
    versions = {name: _version(name) for name in ("torch", "monai", "openvino")}
    return json.dumps({"architecture": card.architecture, "kwargs": card.network_kwargs(), "sha256": card.sha256,
                       "versions": versions}, sort_keys=True, default=str)


@functools.cache
def _version(package: str) -> str:
    """An installed package's version, read once per process (every block task asks for the card identity)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def given(network: Any) -> Callable[[], Any]:
    """A loader for a network that is already built."""
    return lambda: network


@functools.lru_cache(maxsize=4)
def _cached_model(card_path: str, sha256: str, trust: bool = False) -> Model:
    """One model per (card, weights) per process: Dask workers load it once, not per task."""
    logger.info("loading model %s in process %d", card_path, os.getpid())
    model = load_model(card_path, trust=trust)
    if model.sha256 != sha256:
        raise ModelError(f"{card_path}: card changed while running (sha256 {model.sha256[:12]} != {sha256[:12]})")
    return model
