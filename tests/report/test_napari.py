"""napari opens the sample CT with its mask under Xvfb (issue 7): the labels show, in their colours, in place.

Two ways a user gets there: the NIfTI scan + mask read with nibabel and added with the affine's scale and
translation, and the ``--ome-zarr`` copy opened through the napari-ome-zarr reader plugin. Each is rendered by
``napari_render.py`` in a subprocess under ``xvfb-run`` (a Qt/OpenGL crash fails the test, not pytest), at a
slice and camera given in world millimetres, and its screenshot is compared pixel by pixel with the mask's
labels projected onto the canvas; a second screenshot with the labels layer hidden is the control.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from PIL import Image

from pipeline.config.cards import Label
from pipeline.io.nifti import write_labels
from pipeline.io.omezarr import write_ome_zarr
from pipeline.report.sidecars import ome_zarr_path
from tests.report.conftest import CT, napari_xvfb

pytestmark = pytest.mark.slow

RENDER = Path(__file__).with_name("napari_render.py")
#: Screen pixels per voxel side: big enough that voxel edges are a small share of each structure.
PX_PER_VOXEL = 4
#: Per-channel tolerance when matching a canvas pixel to a label colour (8-bit rounding of napari's floats).
COLOR_TOL = 2


@pytest.fixture(scope="module")
def outputs(ct_case: dict[str, Any], ct_labels: dict[int, Label], tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, Path]:
    """The mask and the ``.ome.zarr`` a ``--ome-zarr`` run leaves, written from ct_case's work store by the same
    writers (a degraded reference as the prediction: real anatomy, every structure but the spleen present)."""
    group, geometry = ct_case["group"], ct_case["scan"].geometry
    mask = tmp_path_factory.mktemp("napari") / "ct_seg.nii.gz"
    write_labels(group["labels"], geometry, mask, label_names={v: label.name for v, label in ct_labels.items()})
    store = write_ome_zarr(group["image"], group["labels"], geometry, ome_zarr_path(mask), labels=ct_labels,
                           window=(-1000.0, 1000.0))  # ct-organs' HU window, as segment-volume passes it
    return {"mask": mask, "ome_zarr": store}


def busiest_slice(labels: np.ndarray) -> int:
    """The axial slice (k) showing the most structures, then the most labelled voxels."""
    per_slice = [(len(np.unique(labels[:, :, k][labels[:, :, k] > 0])), int((labels[:, :, k] > 0).sum()))
                 for k in range(labels.shape[2])]
    return max(range(len(per_slice)), key=per_slice.__getitem__)


def render(xvfb: str, source: str, inputs: list[Path], out: Path, *, z: float, center: np.ndarray, zoom: float,
           labels: list[int]) -> dict[str, Any]:
    """Run napari_render.py under its own X server; kill the whole group (xvfb-run, Xvfb, napari) on timeout."""
    command = [xvfb, "-a", "-s", "-screen 0 1280x1024x24", sys.executable, str(RENDER), source,
               *map(str, inputs), str(out), "--z", repr(z), "--center", *map(repr, map(float, center)),
               "--px-per-mm", repr(zoom), "--labels", ",".join(map(str, labels))]
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb", "XDG_RUNTIME_DIR": str(out),
           "NAPARI_CONFIG": str(out / "napari-settings.yaml")}  # no user settings in, none written out
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"napari did not finish within 120 s: {command}")
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def projected(slice_yx: np.ndarray, scale_yx: np.ndarray, translate_yx: np.ndarray, center: np.ndarray,
              zoom: float, canvas: tuple[int, int]) -> np.ndarray:
    """The label under each canvas pixel's centre: camera centre at the canvas centre, y down, x right, voxel
    centres at ``translate + scale * index`` (0 outside the volume)."""
    rows, cols = canvas
    j = np.rint((center[0] + (np.arange(rows) + 0.5 - rows / 2) / zoom - translate_yx[0]) / scale_yx[0]).astype(int)
    i = np.rint((center[1] + (np.arange(cols) + 0.5 - cols / 2) / zoom - translate_yx[1]) / scale_yx[1]).astype(int)
    inside = ((j >= 0) & (j < slice_yx.shape[0]))[:, None] & ((i >= 0) & (i < slice_yx.shape[1]))[None, :]
    view = np.zeros(canvas, dtype=slice_yx.dtype)
    view[inside] = slice_yx[np.clip(j, 0, slice_yx.shape[0] - 1)[:, None], np.clip(i, 0, slice_yx.shape[1] - 1)][inside]
    return view


def classified(png: Path, colors: dict[int, np.ndarray]) -> np.ndarray:
    """Canvas pixels as label ids: ``v`` where the pixel has label ``v``'s colour, else 0."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int64)
    out = np.zeros(rgb.shape[:2], dtype=np.int64)
    for value, color in colors.items():
        out[(np.abs(rgb - color) <= COLOR_TOL).all(axis=-1)] = value
    return out


def iou(want: np.ndarray, got: np.ndarray) -> float:
    """IoU of two canvas masks, the best over shifts of up to one pixel: where a canvas side is odd, voxel edges
    fall on pixel centres and the rasteriser may round either way."""
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return max(float((np.roll(want, s, axis=(0, 1)) & got).sum() / (np.roll(want, s, axis=(0, 1)) | got).sum())
               for s in shifts)


@pytest.mark.parametrize("source", ["nifti", "ome-zarr"])
def test_napari_shows_the_mask_on_the_scan(source: str, outputs: dict[str, Path], ct_case: dict[str, Any],
                                           ct_labels: dict[int, Label], tmp_path: Path) -> None:
    xvfb = napari_xvfb()
    affine = ct_case["scan"].geometry.affine_matrix
    scale = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))[::-1]  # voxel sizes, z y x
    translate = affine[:3, 3][::-1]  # world position of voxel (0, 0, 0), z y x
    prediction = ct_case["prediction"]  # (i, j, k): what was written, independent of the files napari reads
    shape = prediction.shape[::-1]
    k = busiest_slice(prediction)
    slice_yx = prediction[:, :, k].T
    assert len(np.unique(slice_yx[slice_yx > 0])) >= 3  # several structures to find on the canvas
    z = float(translate[0] + scale[0] * k)
    center = translate[1:] + scale[1:] * (np.array(shape[1:]) - 1) / 2
    assert scale[1] == scale[2]
    zoom = PX_PER_VOXEL / float(scale[1])
    ids = sorted(v for v in ct_labels if v > 0)
    inputs = [CT, outputs["mask"]] if source == "nifti" else [outputs["ome_zarr"]]
    facts = render(xvfb, source, inputs, tmp_path, z=z, center=center, zoom=zoom, labels=ids)

    # layers placed by the NIfTI affine (and, for OME-Zarr, by its coordinateTransformations), nothing else
    for layer in (facts["image"], facts["labels"]):
        assert layer["shape"] == list(shape)
        assert np.allclose(layer["scale"], scale), layer
        assert np.allclose(layer["translate"], translate, atol=1e-4), layer
        assert layer["affine_is_identity"], layer
    if source == "ome-zarr":
        for node, layer in (("", facts["image"]), ("labels/prediction", facts["labels"])):
            ngff = zarr.open_group(str(outputs["ome_zarr"] / node), mode="r").attrs["ome"]
            level0 = ngff["multiscales"][0]["datasets"][0]["coordinateTransformations"]
            to_world = {t["type"]: t[t["type"]] for t in level0}
            assert layer["scale"] == pytest.approx(to_world["scale"])
            assert layer["translate"] == pytest.approx(to_world["translation"])
        assert facts["image"]["contrast_limits"] == [-1000.0, 1000.0]  # the OMERO window, not the dtype's range
        for v in ids:  # the card's colours reach napari through the image-label metadata
            assert np.allclose(facts["colors"][str(v)], [*ct_labels[v].color, 255], atol=1), (v, facts["colors"])
    assert facts["dims_point"][0] == pytest.approx(z)

    colors = {v: np.array(facts["colors"][str(v)][:3]) for v in ids}
    for v, color in colors.items():  # distinguishable from the CT's grays and from each other
        assert np.ptp(color) > 3 * COLOR_TOL, (v, color)
        assert all(np.abs(color - other).max() > 2 * COLOR_TOL for w, other in colors.items() if w != v)
    canvas = tuple(facts["canvas"][:2])
    expected = projected(slice_yx, scale[1:], translate[1:], center, zoom, canvas)
    # the whole slice is on the canvas (pixel centres on voxel edges where the canvas side is odd: a row or column)
    assert (expected > 0).sum() == pytest.approx((slice_yx > 0).sum() * PX_PER_VOXEL**2, rel=0.02)
    shown = classified(tmp_path / "shown.png", colors)
    hidden = classified(tmp_path / "hidden.png", colors)
    assert shown.shape == expected.shape
    for v in ids:
        want, got = expected == v, shown == v
        if not want.any():  # e.g. the spleen, dropped from this prediction
            assert got.sum() <= PX_PER_VOXEL**2, (ct_labels[v].name, int(got.sum()))
            continue
        assert got.mean() == pytest.approx(want.mean(), rel=0.05), ct_labels[v].name  # share of the canvas
        assert iou(want, got) > 0.9, (ct_labels[v].name, iou(want, got))  # and in the right place
        assert (hidden == v).sum() <= 0.01 * want.sum(), ct_labels[v].name  # gone with the layer hidden
    # the CT itself is drawn under the labels: gray pixels over most of the slice's footprint
    rgb = np.asarray(Image.open(tmp_path / "hidden.png").convert("RGB")).astype(np.int64)
    gray = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2]) & (rgb[..., 0] > 20)
    footprint = projected(np.ones_like(slice_yx), scale[1:], translate[1:], center, zoom, canvas) > 0
    assert (gray & footprint).sum() > 0.3 * footprint.sum()
