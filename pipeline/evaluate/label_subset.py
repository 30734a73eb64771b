"""``--labels NAME[,NAME]``: keep only some labels of a mask; every other label becomes background.

Pure parts (:func:`resolve_kept`, :func:`lookup`, :func:`subset_matrix`) plus one chunk-by-chunk rewrite of
the work store's label array. Values at or above the model's label count (raster nodata, 255) are kept as
they are. The confusion matrix is mapped the same way as the mask, so the report scores what was kept:
reference voxels of dropped labels count as background too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from pipeline.config.cards import Label
from pipeline.config.choices import unknown_choice
from pipeline.errors import SettingsError
from pipeline.evaluate.instances import parse_classes
from pipeline.geometry import block_slices


def resolve_kept(values: Iterable[str] | None, labels: Mapping[int, Label], *,
                 option: str = "--labels") -> tuple[int, ...]:
    """``["liver,spleen"]`` -> their label values, sorted; names or values; unknown ones are refused with
    the card's labels listed. Background (0) is always kept, so naming it adds nothing. ``option`` names
    the option in the messages."""
    by_name = {label.name: value for value, label in labels.items()}
    kept: set[int] = set()
    for text in parse_classes(values):
        value = by_name.get(text, int(text) if text.isdigit() and int(text) in labels else None)
        if value is None:
            message = unknown_choice(f"label for {option}", text, list(by_name), listing="the model's labels")
            raise SettingsError(message)
        kept.add(value)
    if not kept - {0}:
        raise SettingsError(f"{option}: name at least one label besides background")
    return tuple(sorted(kept - {0}))


def lookup(kept: Iterable[int], n_labels: int) -> np.ndarray:
    """A table mapping label values to themselves when kept, to 0 when dropped; values >= ``n_labels``
    (nodata) map to themselves."""
    table = np.arange(max(n_labels, 256), dtype=np.int64)
    dropped = np.setdiff1d(np.arange(1, n_labels), np.asarray(list(kept), dtype=np.int64))
    table[dropped] = 0
    return table


def subset_matrix(matrix: np.ndarray, kept: Iterable[int]) -> np.ndarray:
    """The confusion matrix (reference, prediction) with dropped labels moved to background on both sides."""
    n = matrix.shape[0]
    table = lookup(kept, n)[:n]
    out = np.zeros_like(matrix)
    np.add.at(out, (table[:, None], table[None, :]), matrix)
    return out


def kept_rows(rows: list[dict[str, Any]], kept: Iterable[int]) -> list[dict[str, Any]]:
    """Report rows of background and the kept labels only."""
    keep = {0, *kept}
    return [row for row in rows if row["label"] in keep]


def subset_labels(labels: Any, kept: Iterable[int], n_labels: int) -> None:
    """Rewrite a label array (Zarr, in place) chunk by chunk through :func:`lookup`; idempotent, so a
    resumed run may do it again."""
    table = lookup(kept, n_labels).astype(labels.dtype)
    for box in block_slices(labels.shape, labels.chunks):
        block = np.asarray(labels[box])
        mapped = table[block]
        if not np.array_equal(mapped, block):
            labels[box] = mapped
