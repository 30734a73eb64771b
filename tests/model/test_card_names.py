"""A model name finds its card by the card's ``name``, whatever the file is called; `<name>.yaml` is only a shortcut."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import CardError
from pipeline.model.models import resolve_card_path
from tests.factories import make_card


def test_names_are_the_cards_not_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_MODELS_DIR", str(tmp_path))
    direct = make_card(tmp_path, name="alpha")
    renamed = make_card(tmp_path, name="beta")
    renamed.rename(tmp_path / "gamma.yaml")  # file gamma.yaml, card beta
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    assert resolve_card_path("alpha") == direct
    assert resolve_card_path("beta") == tmp_path / "gamma.yaml"
    with pytest.raises(CardError, match="unknown model 'gamma'"):
        resolve_card_path("gamma")  # no card is named gamma
    with pytest.raises(CardError, match="unknown model 'broken'"):
        resolve_card_path("broken")
