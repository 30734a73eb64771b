"""Import models people already have: MONAI bundles and TorchScript files, into the same :class:`Model`.

* A **MONAI bundle** is a directory with ``configs/inference.json`` (or ``.yaml``) and
  ``models/model.pt`` (a state_dict). The network is built from the config's ``network_def`` with
  ``monai.bundle.ConfigParser`` and the weights load with ``torch.load(weights_only=True)``.
  Loaded as a directory, the roi, labels and intensity preprocessing come from the bundle
  (``inferer``, ``preprocessing`` in the inference config; ``network_data_format`` in
  ``configs/metadata.json``). Loaded through a volseg card (``architecture: bundle``,
  ``weights: <bundle>/models/model.pt``), **the card wins**: its roi, labels and preprocess are
  used and the bundle only supplies the network, so a card can fix what a bundle leaves unsaid.
  A ``volseg.yaml`` card inside the bundle directory is used when the directory is loaded.
* A **TorchScript** file is named by a card (``architecture: torchscript``, ``weights: x.ts``);
  passing the file itself finds the card beside it (``x.yaml``). It loads with ``torch.jit.load``
  on the CPU after the card's sha256 is checked.

Trust: building a bundle's network runs its config. ``_target_`` can name any Python callable and
``$`` expressions are ``eval``'d, so by default only ``monai.*`` targets (or MONAI's short names),
harmless expressions (literals, arithmetic, references, ``len``...: :mod:`pipeline.model.bundle_config`)
and no macros of code (``_requires_``) or ``_mode_`` are allowed in ``network_def`` and everything it
references. ``trust=True`` (``--trust``, ``trust: true`` in a catalog source) lifts that: only pass it
for bundles whose code you would run. TorchScript runs only TorchScript code (no pickle), so it needs
no such flag. The card's values (roi, overlap, intensity steps, spacing) are read with ``@`` references
and harmless expressions resolved as ``ConfigParser`` resolves them.
A bundle's ``Orientationd`` / ``Spacingd`` become the card's ``orientation`` / ``spacing``: volseg aligns
each window to them (:mod:`pipeline.engine.alignment`) rather than resampling the scan.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config.cards import ModelCard
from pipeline.config.yamlfile import read_mapping
from pipeline.errors import CardError, ModelError, first_line
from pipeline.io.hashing import sha256_file
from pipeline.model.bundle_config import BundleValues, harmless
from pipeline.model.weights import check_sha256, load_weights

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
WEIGHTS = Path("models") / "model.pt"
CARD_IN_BUNDLE = "volseg.yaml"
TORCHSCRIPT_SUFFIXES = (".ts", ".pt", ".pth")
#: Colours for labels a bundle does not colour (it never does).
PALETTE = [(0, 0, 0), (230, 60, 60), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)]


@dataclass(frozen=True)
class ImportedNetwork:
    """An imported network, built and with its weights loaded, and the card that describes it:
    :func:`pipeline.model.models.load_model` makes it a :class:`~pipeline.model.models.Model`."""

    card: ModelCard
    card_path: Path
    network: Any
    sha256: str


def bundle_config(root: Path) -> Path | None:
    """The inference config of a bundle directory, or None when ``root`` is not a bundle."""
    if not root.is_dir():
        return None
    return next((root / "configs" / n for n in CONFIG_NAMES if (root / "configs" / n).is_file()), None)


def imported_path(name_or_path: Any) -> Path | None:
    """The card or bundle directory to load when ``name_or_path`` is a bundle or a TorchScript file, else None."""
    if name_or_path is None:
        return None
    path = Path(name_or_path)
    if bundle_config(path) is not None:
        return path / CARD_IN_BUNDLE if (path / CARD_IN_BUNDLE).is_file() else path.resolve()  # workers' cwd
    if path.suffix in TORCHSCRIPT_SUFFIXES and path.is_file():
        card = next((c for c in (path.with_suffix(".yaml"), path.with_suffix(".yml")) if c.is_file()), None)
        if card is None:
            raise CardError(f"{path}: a TorchScript or weights file needs a card beside it ({path.stem}.yaml) "
                            "saying its roi, labels and preprocessing")
        return card
    return None


# ---------------------------------------------------------------- bundles


@contextlib.contextmanager
def _monai_quiet() -> Iterator[None]:
    """Silence MONAI's renaming notices about a bundle's own metadata (``optional_packages_version`` is now
    ``required_packages_version``): not the user's to act on, and an error must stay one line."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected deprecated name", category=UserWarning)
        yield


def _parser(root: Path) -> Any:
    from monai.bundle import ConfigParser

    config = bundle_config(root)
    if config is None:
        raise ModelError(f"{root}: not a MONAI bundle (no configs/inference.json)")
    if config.suffix in {".yaml", ".yml"}:
        read_mapping(config, "bundle config", ModelError)  # bounded: anchors cannot expand it without limit
    parser = ConfigParser()
    try:
        with _monai_quiet():
            parser.read_config(str(config))
            metadata = root / "configs" / "metadata.json"
            if metadata.is_file():
                parser.read_meta(str(metadata))
            parser["bundle_root"] = str(root)
            parser.resolve_macro_and_relative_ids()
    except (ValueError, OSError, KeyError, RecursionError) as e:  # RecursionError: JSON nested too deep
        raise ModelError(f"{config}: not a readable bundle config ({first_line(e)})") from e
    if parser.get("network_def") is None:
        raise ModelError(f"{config}: the bundle config has no 'network_def'")
    return parser


def untrusted_parts(parser: Any, root: str = "network_def") -> list[str]:
    """What building ``root`` would run beyond MONAI's own classes: non-monai targets, expressions, ...

    Follows ``@`` references transitively, since the parser resolves them while building.
    """
    from monai.bundle.reference_resolver import ReferenceResolver

    found: list[str] = []
    seen: set[str] = set()
    todo = [root]
    while todo:
        ident = todo.pop()
        if ident in seen:
            continue
        seen.add(ident)
        stack = [(ident, parser.get(ident))]
        while stack:
            where, node = stack.pop()
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == "_target_" and isinstance(value, str) and "." in value and not value.startswith("monai."):
                        found.append(f"{where}: _target_ {value!r}")
                    elif key in ("_requires_", "_mode_") and not (key == "_mode_" and value == "default"):
                        found.append(f"{where}: {key}")
                    stack.append((f"{where}::{key}", value))
            elif isinstance(node, list):
                stack.extend((f"{where}::{i}", v) for i, v in enumerate(node))
            elif isinstance(node, str):
                if node.startswith("$") and not harmless(node):
                    found.append(f"{where}: expression {node[:60]!r}")
                todo.extend(ReferenceResolver.match_refs_pattern(node))
    return found


def build_bundle_network(root: Path, *, trust: bool = False) -> Any:
    """The bundle's ``network_def``, built by MONAI's ConfigParser after the trust check."""
    parser = _parser(root)
    risky = untrusted_parts(parser)
    if risky and not trust:
        raise ModelError(f"{root}: bundle config would run code outside monai ({risky[0]}"
                         f"{f' and {len(risky) - 1} more' if len(risky) > 1 else ''}); "
                         "pass --trust (trust: true in a catalog source, load_model(..., trust=True)) "
                         "only if you would run its code")
    try:
        with _monai_quiet():
            return parser.get_parsed_content("network_def", instantiate=True)
    except Exception as e:  # the config names the class; any failure to build it is the bundle's
        reason = first_line(e)
        raise ModelError(f"{root}: cannot build the bundle's network_def ({reason})") from e


def _bundle_state(path: Path, expected: str) -> dict[str, Any]:
    """A bundle's ``model.pt``: a state_dict, or a checkpoint dict holding one under ``model``."""
    state = load_weights(path, expected)
    inner = state.get("model")
    return inner if isinstance(inner, dict) else state


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _preprocessing_steps(parser: Any) -> list[tuple[str, str]]:
    """``(transform class name, config id)`` of every transform in the bundle's ``preprocessing``, in order."""
    steps: list[tuple[str, str]] = []

    def visit(node: Any, ident: str) -> None:
        if isinstance(node, dict):
            if "_target_" in node:
                steps.append((str(node["_target_"]).rsplit(".", 1)[-1], ident))
            for key, value in node.items():
                visit(value, f"{ident}::{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                visit(value, f"{ident}::{index}")

    visit(parser.get("preprocessing"), "preprocessing")
    return steps


def bundle_alignment(parser: Any, values: BundleValues | None = None) -> dict[str, Any]:
    """The bundle's ``Orientationd`` axcodes and ``Spacingd`` pixdim as card ``orientation`` / ``spacing``:
    volseg aligns each window to them (:mod:`pipeline.engine.alignment`) instead of resampling the scan."""
    values = values or BundleValues(parser)
    found: dict[str, Any] = {}
    for target, ident in _preprocessing_steps(parser):
        if target in ("Orientationd", "Orientation"):
            codes = values.get(f"{ident}::axcodes")
            if isinstance(codes, str):
                found["orientation"] = codes.upper()
        if target in ("Spacingd", "Spacing"):
            pixdim = values.get(f"{ident}::pixdim")
            if isinstance(pixdim, list | tuple) and pixdim and all(_number(v) is not None for v in pixdim):
                found["spacing"] = [float(v) for v in pixdim]
    return found


def _intensity_step(target: str, get: Any) -> dict[str, Any] | None:
    """One MONAI intensity transform as a card step; None for other transforms; CardError when unsupported."""
    name = target.removesuffix("d")
    if name == "ScaleIntensityRange":
        step = {k: _number(get(k, default)) for k, default in
                (("a_min", None), ("a_max", None), ("b_min", None), ("b_max", None))}
        if None in step.values():
            raise CardError(f"{target} needs numeric a_min, a_max, b_min, b_max")
        return {"kind": "window", **step, "clip": bool(get("clip", False))}
    if name == "ScaleIntensity":
        if get("factor") is not None:
            raise CardError(f"{target} with factor is not supported (only minv/maxv min-max scaling)")
        minv, maxv = get("minv", 0.0), get("maxv", 1.0)
        minv, maxv = (0.0, 1.0) if minv is None or maxv is None else (_number(minv), _number(maxv))
        if minv is None or maxv is None:
            raise CardError(f"{target} needs numeric minv/maxv")
        return {"kind": "minmax", "minv": minv, "maxv": maxv, "channel_wise": bool(get("channel_wise", False))}
    if name == "NormalizeIntensity":
        if get("subtrahend") is not None or get("divisor") is not None:
            raise CardError(f"{target} with a fixed subtrahend/divisor is not supported")
        return {"kind": "zscore", "nonzero": bool(get("nonzero", False)),
                "channel_wise": bool(get("channel_wise", False))}
    if name == "ScaleIntensityRangePercentiles":
        step = {k: _number(get(k)) for k in ("lower", "upper", "b_min", "b_max")}
        if None in step.values():
            raise CardError(f"{target} needs numeric lower, upper, b_min, b_max")
        return {"kind": "percentiles", **step, "clip": bool(get("clip", False)),
                "relative": bool(get("relative", False)), "channel_wise": bool(get("channel_wise", False))}
    return None


def bundle_preprocess(parser: Any, values: BundleValues | None = None) -> dict[str, Any]:
    """The intensity steps of the bundle's ``preprocessing``, in order, as a card ``preprocess``: one step
    (window, minmax, zscore, percentiles) or a ``chain`` of them."""
    values = values or BundleValues(parser)
    steps = []
    for target, ident in _preprocessing_steps(parser):
        step = _intensity_step(target, lambda key, default=None, i=ident: values.get(f"{i}::{key}", default))
        if step is not None:
            steps.append(step)
    if not steps:
        raise CardError("cannot tell the bundle's intensity preprocessing (no ScaleIntensityRanged, ScaleIntensityd, "
                        "NormalizeIntensityd or ScaleIntensityRangePercentilesd); write a volseg card for it "
                        "(architecture: bundle)")
    return steps[0] if len(steps) == 1 else {"kind": "chain", "steps": steps}


def bundle_roi(parser: Any, values: BundleValues, inputs: dict[str, Any]) -> Any:
    """The window the network sees: the inferer's ``roi_size``; else the metadata's input ``spatial_shape``;
    else, for a ``SimpleInferer`` bundle (whole image, resized), its ``Resized`` ``spatial_size``: the size
    it was trained on, which volseg slides over a raster too big to resize whole."""
    roi = values.get("inferer::roi_size") or inputs.get("spatial_shape")
    if roi:
        return roi
    for target, ident in _preprocessing_steps(parser):
        if target in ("Resized", "Resize"):
            return values.get(f"{ident}::spatial_size")
    return None


def bundle_card(root: Path, parser: Any, sha256: str, *, trust: bool = False) -> ModelCard:
    """A card made from the bundle's own config and metadata (references and harmless expressions resolved)."""
    values = BundleValues(parser, trust=trust)
    meta = parser.get("_meta_") or {}
    data_format = meta.get("network_data_format") or {}
    inputs: dict[str, Any] = next(iter((data_format.get("inputs") or {}).values()), {})
    outputs: dict[str, Any] = next(iter((data_format.get("outputs") or {}).values()), {})
    try:
        roi = bundle_roi(parser, values, inputs)
        overlap, batch = values.get("inferer::overlap", 0.25), values.get("inferer::sw_batch_size", 4)
        preprocess = bundle_preprocess(parser, values)
        alignment = bundle_alignment(parser, values) if isinstance(roi, list) and len(roi) == 3 else {}
    except CardError as e:
        raise CardError(f"{root}: {e}") from e
    if not isinstance(roi, list) or not roi or not all(isinstance(s, int) for s in roi):
        raise CardError(f"{root}: the bundle states no numeric roi (inferer.roi_size, metadata spatial_shape or a "
                        "Resized spatial_size); write a volseg card for it")
    names = outputs.get("channel_def") or {}
    count = int(outputs.get("num_channels") or len(names) or 0)
    if count < 1:
        raise CardError(f"{root}: the bundle's metadata does not say its output channels; write a volseg card")
    labels = {i: {"name": str(names.get(str(i), names.get(i, f"class{i}"))), "color": PALETTE[i % len(PALETTE)]}
              for i in range(count)}
    name = re.sub(r"[^a-z0-9_.-]+", "-", str(meta.get("name") or root.name).lower()).strip("-.") or "bundle"
    try:
        return ModelCard.model_validate({
            "name": name, "description": str(meta.get("description", "")), "architecture": "bundle",
            "domain": "medical" if len(roi) == 3 else "geo", "spatial_dims": len(roi),
            "in_channels": int(inputs.get("num_channels") or 1), "labels": labels, "roi_size": roi,
            "overlap": overlap, "sw_batch_size": batch,
            "preprocess": preprocess, "weights": str(WEIGHTS), "sha256": sha256, **alignment,
            "training": {"source": f"MONAI bundle {meta.get('name', root.name)} {meta.get('version', '')}".strip()}})
    except ValueError as e:
        raise CardError(f"{root}: bundle metadata does not make a valid card ({first_line(e)})") from e


def load_bundle(root: Path, card: ModelCard | None = None, card_path: Path | None = None, *,
                trust: bool = False) -> ImportedNetwork:
    """A bundle's network with its weights; roi/labels/preprocess from ``card`` if given, else from the bundle."""
    weights = root / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{root}: bundle has no {WEIGHTS}")
    network = build_bundle_network(root, trust=trust)
    sha256 = card.sha256 if card is not None and card.sha256 else sha256_file(weights)
    if card is None:
        card = bundle_card(root, _parser(root), sha256, trust=trust)
    try:
        network.load_state_dict(_bundle_state(weights, sha256), strict=True)
    except RuntimeError as e:
        raise ModelError(f"{weights}: weights do not fit the bundle's network_def ({first_line(e)})") from e
    network.eval()
    return ImportedNetwork(card=card, card_path=card_path or root, network=network, sha256=sha256)


# ---------------------------------------------------------------- cards naming imported models


def load_imported(card: ModelCard, card_path: Path, *, trust: bool = False) -> ImportedNetwork:
    """Load the network of a card whose architecture is ``torchscript`` or ``bundle``."""
    weights = card_path.parent / str(card.weights)
    if card.architecture == "bundle":
        if weights.parent.name != "models" or bundle_config(weights.parent.parent) is None:
            raise CardError(f"{card_path}: bundle weights must be <bundle>/models/model.pt, not {card.weights}")
        return load_bundle(weights.parent.parent, card, card_path, trust=trust)
    return ImportedNetwork(card=card, card_path=card_path, network=load_torchscript(weights, str(card.sha256)),
                           sha256=str(card.sha256))


def load_torchscript(path: Path, expected_sha256: str) -> Any:
    """``torch.jit.load`` on the CPU after the checksum: TorchScript code only, never a pickle."""
    import torch

    check_sha256(path, expected_sha256, "TorchScript file")
    try:
        network = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise ModelError(f"{path}: not a TorchScript file ({first_line(e)})") from e
    return network.eval()
