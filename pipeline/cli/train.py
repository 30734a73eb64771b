"""``train``: a card's network fitted on a catalog dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.app import app
from pipeline.cli.options import DebugOpt, QuietOpt, VerboseOpt, grouped
from pipeline.cli.running import run


@dataclass(frozen=True)
class TrainFlags:
    """``train``'s options, in ``--help`` order."""

    dataset: Annotated[str, typer.Option("--dataset", "-d", help="A name under datasets: in the catalog.")]
    model_card: Annotated[Path, typer.Option("--model-card", help="Card to train (network, roi, labels, preprocess, training.recipe).")]
    epochs: Annotated[int, typer.Option("--epochs", "-e", min=1, help="Epochs of training.recipe.steps_per_epoch batches.")]
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where <name>.pt and <name>.yaml are written.")] = Path("models")
    catalog: Annotated[Path, typer.Option("--catalog", help="The data catalog naming the dataset.")] = Path("data_catalog.yaml")
    seed: Annotated[int, typer.Option("--seed", help="Seed for init, crops and flips.")] = 0
    device: Annotated[str, typer.Option("--device", help="auto (CUDA + AMP when present), cpu, cuda, cuda:1 ...")] = "auto"
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch CPU threads (1 = byte-reproducible).")] = 1


@app.command("train")
@grouped
def train_cmd(flags: TrainFlags, verbose: VerboseOpt = 0, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Train a card's network on a catalog dataset; writes weights, sha256 and the filled card. Resumes."""
    from pipeline.train.trainer import TrainSettings, train

    settings = TrainSettings(seed=flags.seed, device=flags.device, threads=flags.threads, progress=True)
    result = run(lambda: train(flags.dataset, flags.model_card, flags.epochs, catalog=flags.catalog,
                               out_dir=flags.out_dir, settings=settings))
    if result.resumed_from:
        typer.echo(f"resumed after epoch {result.resumed_from}")
    typer.echo(f"loss per epoch: {', '.join(f'{v:.3f}' for v in result.losses)}")
    for name, value in result.metrics["dice_heldout"].items():
        typer.echo(f"  {name:<16} held-out dice {value:.3f}  (train {result.metrics['dice_train'][name]:.3f})")
    typer.echo(f"weights: {result.weights}\ncard:    {result.card}")
