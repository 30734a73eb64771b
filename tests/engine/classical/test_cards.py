"""Classical cards: validated like network cards, loaded without weights, shipped ones listed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config.cards import load_card
from pipeline.errors import CardError
from pipeline.io.hashing import sha256_file
from pipeline.model.models import MODELS_DIR, available_models, load_model
from tests.engine.classical.helpers import classical_card

SHIPPED = ("ct-body", "ct-body-edges", "ct-bone", "ct-bone-grow", "ct-bone-watershed", "ct-kmeans", "otsu-foreground")


def edit(path: Path, **changes: object) -> Path:
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_method_lists_the_choices(tmp_path: Path) -> None:
    path = classical_card(tmp_path, "threshold", {"lower": 0})
    edit(path, classical={"method": "treshold", "params": {"lower": 0}})
    with pytest.raises(CardError, match=r"did you mean 'threshold'.*choices: threshold, otsu, kmeans"):
        load_card(path)


@pytest.mark.parametrize(("classical", "message"), [
    ({"method": "threshold", "params": {}}, "threshold needs lower, upper or both"),
    ({"method": "threshold", "params": {"lower": 0, "radius": 2}}, "radius"),
    ({"method": "otsu", "params": {"bins": 1}}, "bins"),
    ({"method": "kmeans", "params": {"k": 3}}, "needs 3 labels"),
    ({"method": "region_grow", "params": {"low": 5, "high": 1}}, "high must be >= low"),
])
def test_bad_params_name_the_key(tmp_path: Path, classical: dict[str, object], message: str) -> None:
    path = edit(classical_card(tmp_path, "threshold", {"lower": 0}), classical=classical)
    with pytest.raises(CardError, match=message) as info:
        load_card(path)
    assert str(path) in str(info.value)


def test_classical_card_refuses_weights_and_network_cards_need_them(tmp_path: Path) -> None:
    path = edit(classical_card(tmp_path, "threshold", {"lower": 0}), weights="x.pt")
    with pytest.raises(CardError, match="no network or weights"):
        load_card(path)
    path = edit(classical_card(tmp_path, "threshold", {"lower": 0}, name="nosection"), classical=None)
    with pytest.raises(CardError, match="needs a 'classical' section"):
        load_card(path)
    network = yaml.safe_load((MODELS_DIR / "ct-organs.yaml").read_text())
    del network["weights"]
    (tmp_path / "net.yaml").write_text(yaml.safe_dump(network))
    with pytest.raises(CardError, match="needs weights"):
        load_card(tmp_path / "net.yaml")


def test_load_model_has_no_network_and_the_card_is_its_identity(tmp_path: Path) -> None:
    path = classical_card(tmp_path, "otsu", {})
    model = load_model(path)
    assert model.network is None
    assert model.sha256 == sha256_file(path)
    assert model.ref.network() is None  # what workers resolve: no weights to load


def test_shipped_cards_are_listed_and_classical() -> None:
    found = available_models()
    for name in SHIPPED:
        card = load_card(found[name])
        assert card.kind == "classical"
        assert card.metrics, f"{name}: measured metrics missing"
    assert load_card(found["ct-organs"]).kind == "network"
