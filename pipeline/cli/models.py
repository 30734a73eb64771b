"""``models list`` and ``models show``: the model cards."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from pipeline.cli.app import models_app
from pipeline.cli.options import DebugOpt, QuietOpt, VerboseOpt
from pipeline.cli.running import run


@models_app.command("list")
def models_list(verbose: VerboseOpt = 0, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Name, domain, dims and labels of every card in models/."""
    from pipeline.config.cards import load_card
    from pipeline.model.models import available_models

    for name, path in available_models().items():
        card = load_card(path)
        how = f"classical {card.classical.method}" if card.classical else f"roi {list(card.roi_size)}"
        typer.echo(f"{name:<18} {card.domain:<8} {card.spatial_dims}D  {how}  "
                   f"labels: {', '.join(label.name for label in card.labels.values())}")
        dice = card.metrics.get("dice_heldout") or {}
        scores = ", ".join(f"{k} {v:.3f}" for k, v in dice.items() if isinstance(v, int | float) and k != "background")
        if card.sha256 or scores:
            typer.echo(f"{'':<18} sha256 {(card.sha256 or '-')[:12]}  held-out dice: {scores or '-'}")


@models_app.command("show")
def models_show(name: Annotated[str, typer.Argument(help="Card name or path, a MONAI bundle directory or a TorchScript file.")],
                verbose: VerboseOpt = 0, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Print a model card as JSON (for a bundle directory: the card made from its metadata)."""
    from pipeline.config.cards import load_card
    from pipeline.model.bundles import imported_path
    from pipeline.model.models import load_model, resolve_card_path

    def card_of() -> Any:
        imported = imported_path(name)
        if imported is not None and imported.is_dir():
            return load_model(imported).card
        return load_card(resolve_card_path(imported or name))

    card = run(card_of)
    typer.echo(json.dumps(card.model_dump(mode="json"), indent=2))
