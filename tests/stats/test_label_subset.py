"""--labels: the kept labels only, in the mask and in the scores."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zarr

from pipeline.config.cards import Label
from pipeline.errors import SettingsError
from pipeline.evaluate.label_subset import kept_rows, lookup, resolve_kept, subset_labels, subset_matrix
from pipeline.evaluate.metrics import confusion, scores

LABELS = {0: Label(name="background"), 1: Label(name="liver"), 2: Label(name="spleen"), 3: Label(name="kidneys"),
          4: Label(name="lungs"), 5: Label(name="bone")}


def test_resolve_names_and_values() -> None:
    assert resolve_kept(["spleen,liver"], LABELS) == (1, 2)
    assert resolve_kept(["5", "liver", "background"], LABELS) == (1, 5)


@pytest.mark.parametrize(("given", "message"), [
    (["livr"], "unknown label for --labels 'livr'; did you mean 'liver'? (the model's labels: background, liver, "
               "spleen, kidneys, lungs, bone)"),
    (["9"], "unknown label for --labels '9'"),
    (["background"], "--labels: name at least one label besides background"),
])
def test_unknown_labels_are_one_line(given: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match="^" + re.escape(message)):
        resolve_kept(given, LABELS)


def test_lookup_keeps_nodata() -> None:
    table = lookup((2,), 4)
    assert table[[0, 1, 2, 3, 255]].tolist() == [0, 0, 2, 0, 255]


def test_mask_and_scores_on_the_real_reference(data_dir: Path, tmp_path: Path) -> None:
    """Subset of the shipped reference vs a shifted copy of itself: equals NumPy on the whole array."""
    ref = np.asanyarray(nib.load(data_dir / "medical" / "example_ct_sm_ct-organs_ref.nii.gz").dataobj)
    pred = np.roll(ref, 2, axis=0)
    z = zarr.create_array(tmp_path / "l.zarr", shape=pred.shape, chunks=(50, 40, 7), dtype=pred.dtype)
    z[...] = pred
    subset_labels(z, (1, 3), 6)
    want = np.where(np.isin(pred, (1, 3)), pred, 0)
    np.testing.assert_array_equal(z[...], want)
    subset_labels(z, (1, 3), 6)  # again, as a resumed run would
    np.testing.assert_array_equal(z[...], want)
    matrix = subset_matrix(confusion(ref.astype(np.int64), pred.astype(np.int64), 6), (1, 3))
    ref_kept = np.where(np.isin(ref, (1, 3)), ref, 0)
    np.testing.assert_array_equal(matrix, confusion(ref_kept.astype(np.int64), want.astype(np.int64), 6))
    measured = scores(matrix)
    rows = kept_rows([{"label": s.label, "dice": s.dice} for s in measured.labels], (1, 3))
    assert [r["label"] for r in rows] == [0, 1, 3]
    liver = 2 * ((ref == 1) & (pred == 1)).sum() / ((ref == 1).sum() + (pred == 1).sum())
    assert rows[1]["dice"] == pytest.approx(liver)
