"""What training writes: the weights and the card filled with its metrics and the training record."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.config.cards import ModelCard, _describe
from pipeline.errors import ModelError
from pipeline.io.hashing import sha256_file
from pipeline.train.checkpoints import save_state


def compact_map(label_map: dict[int, list[int]] | None) -> dict[int, list[int | str]] | None:
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


def relative(path: Path) -> str:
    """A path relative to the working directory when it is inside it (cards must not carry home dirs)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def write_outputs(out: Path, card: ModelCard, raw: dict[str, Any], network: Any, metrics: dict[str, Any],
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
