"""The options that act around a mask: ``--labels``, ``--statistics``, ``--cutout`` (and ``--tta``'s check).

One place for the front end: :func:`resolve` checks them all against the model before any work
(one-line :class:`SettingsError`), and the steps after inference call the functions here, which pick the
volume or raster variant from the geometry, so the driver adds a handful of calls and no branches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.choices import unknown_choice
from pipeline.errors import SettingsError
from pipeline.evaluate.label_subset import kept_rows, resolve_kept, subset_labels, subset_matrix
from pipeline.geometry import VolumeGeometry
from pipeline.io.outputs import Output, cutout_path
from pipeline.model.models import Model


@dataclass(frozen=True, slots=True)
class MaskOptions:
    """The checked values: label values kept / cut out (None: option not given)."""

    kept: tuple[int, ...] | None = None
    cutout: tuple[int, ...] | None = None
    cutout_margin: float = 0.0
    statistics: bool = False
    tta: str = "none"

    def fingerprint(self) -> dict[str, Any]:
        """What of these changes the work store's labels (the rest is computed after them)."""
        return {"labels_kept": list(self.kept) if self.kept else None}


def resolve(model: Model, *, labels: Sequence[str] | None = None, cutout: Sequence[str] | None = None,
            cutout_margin: float = 0.0, statistics: bool = False, tta: str = "none") -> MaskOptions:
    """Check the options against ``model`` (names, margin, tta) before anything is read or written."""
    from pipeline.engine.tta import TTA_MODES, check_tta

    if tta not in TTA_MODES:
        raise SettingsError(unknown_choice("--tta", tta, TTA_MODES))
    check_tta(tta, classical=model.card.kind == "classical")
    kept = resolve_kept(labels, model.labels) if labels else None
    cut = resolve_kept(cutout, model.labels, option="--cutout") if cutout else None
    if cut and kept:
        dropped = [model.labels[v].name for v in cut if v not in kept]
        if dropped:
            raise SettingsError(f"--cutout {','.join(dropped)}: dropped from the mask by --labels")
    if not (math.isfinite(cutout_margin) and cutout_margin >= 0):
        raise SettingsError(f"--cutout-margin must be a finite number >= 0, got {cutout_margin}")
    return MaskOptions(kept=kept, cutout=cut, cutout_margin=float(cutout_margin), statistics=statistics, tta=tta)


def extra_outputs(choices: MaskOptions, mask: Path) -> list[Output]:
    """The files these options add (checked by the output guard with the others)."""
    if not choices.cutout:
        return []
    kind = "nifti" if str(mask).lower().endswith((".nii", ".nii.gz")) else "geotiff"
    return [Output(cutout_path(mask), kind)]


def apply_labels(choices: MaskOptions, labels: Any, n_labels: int) -> None:
    """``--labels``: drop the other labels from the work store's mask (in place, chunk by chunk)."""
    if choices.kept:
        subset_labels(labels, choices.kept, n_labels)


def scored_matrix(choices: MaskOptions, matrix: np.ndarray) -> np.ndarray:
    """The confusion matrix the report scores: with ``--labels``, dropped labels are background on both sides."""
    return subset_matrix(matrix, choices.kept) if choices.kept else matrix


def finish_report(choices: MaskOptions, report: dict[str, Any], group: Any, geometry: Any, model: Model,
                  client: Any = None) -> None:
    """Keep the rows of kept labels only, and add the ``statistics`` section (and its CSV columns)."""
    if choices.kept:
        report["labels"] = kept_rows(report["labels"], choices.kept)
        report["labels_kept"] = [model.labels[v].name for v in choices.kept]
    if choices.tta != "none":
        from pipeline.engine.tta import mirror_axes, passes

        axes = mirror_axes(choices.tta, model.card.spatial_dims, model.card)
        report["run"]["tta"] = {"mode": choices.tta, "axes": list(axes), "passes_per_window": passes(axes)}
    if not choices.statistics:
        return
    section = _statistics(group, geometry, model, client)
    if choices.kept:
        section["rows"] = kept_rows(section["rows"], choices.kept)
    from pipeline.evaluate.label_statistics import add_to_label_rows

    add_to_label_rows(report["labels"], section)
    report["statistics"] = section


def _statistics(group: Any, geometry: Any, model: Model, client: Any) -> dict[str, Any]:
    from pipeline.evaluate.label_statistics import raster_statistics, volume_statistics

    n = model.card.out_channels
    if isinstance(geometry, VolumeGeometry):
        return volume_statistics(group, model.labels, n, geometry.voxel_volume_ml, client=client)
    from pipeline.geometry import metres_per_unit

    metres = metres_per_unit(geometry)
    bands = group["image"].attrs.get("source", {}).get("bands") or list(range(1, group["image"].shape[0] + 1))
    hectares = geometry.pixel_area * metres**2 / 1e4 if metres else None
    return raster_statistics(group, model.labels, n, bands, hectares, client=client)


def write_cutout(choices: MaskOptions, group: Any, geometry: Any, mask: Path) -> dict[str, Any] | None:
    """``--cutout``: the input restricted to the labels, beside the mask; the report's facts (or None)."""
    if not choices.cutout:
        return None
    from pipeline.io.cutout import write_raster_cutout, write_volume_cutout

    target = cutout_path(mask)
    if isinstance(geometry, VolumeGeometry):
        return write_volume_cutout(group, geometry, choices.cutout, choices.cutout_margin, target)
    from pipeline.geometry import pixel_size_m

    return write_raster_cutout(group, geometry, choices.cutout, choices.cutout_margin, target, pixel_size_m(geometry))
