"""The report's charts (matplotlib, Agg): Dice per label and the confusion matrix, as PNG data URIs."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.config.cards import Label


def figure_uri(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, pil_kwargs={"compress_level": 3})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def dice_chart(rows: Sequence[Mapping[str, Any]], labels: Mapping[int, Label]) -> str | None:
    """A horizontal Dice bar per label, in the label's colour (None without Dice values)."""
    scored = [row for row in rows if row.get("dice") is not None]
    if not scored:
        return None
    from matplotlib.figure import Figure

    height = 0.3 * len(scored) + 0.7
    fig = Figure(figsize=(5, height))
    fig.subplots_adjust(left=0.25, right=0.95, bottom=0.45 / height, top=1 - 0.1 / height)
    ax = fig.add_subplot()
    names = [row["name"] for row in scored]
    colours = [np.array(labels[row["label"]].color) / 255 if row["label"] in labels else (0.5, 0.5, 0.5)
               for row in scored]
    ax.barh(names, [row["dice"] for row in scored], color=colours, edgecolor="black", linewidth=0.5)
    for y, row in enumerate(scored):
        ax.text(min(row["dice"] + 0.01, 0.88), y, f"{row['dice']:.3f}", va="center", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("Dice")
    return figure_uri(fig)


def confusion_chart(matrix: Sequence[Sequence[int]], names: Sequence[str]) -> str | None:
    """Heatmap of the confusion matrix, rows = reference, normalised per reference label."""
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] < 2 or counts.sum() == 0:
        return None
    from matplotlib.figure import Figure

    n = counts.shape[0]
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = 1.6 + 0.5 * n
    fig = Figure(figsize=(side, side))
    fig.subplots_adjust(left=1.2 / side, bottom=1.2 / side, right=1 - 0.1 / side, top=1 - 0.1 / side)
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names[:n], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), names[:n], fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("reference")
    if n <= 12:
        for (r, c), value in np.ndenumerate(share):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value > 0.6 else "black")
    return figure_uri(fig)
