"""Open a scan + mask in napari as a user would, screenshot one axial slice, print what napari made of them as JSON.

Run under a display (``xvfb-run -a python napari_render.py ...``; the test does it in a subprocess, so a Qt or
OpenGL crash cannot take pytest down):

- ``nifti SCAN MASK OUT``: both read with nibabel, as arrays in ``z, y, x`` = NIfTI ``(k, j, i)`` order, added
  with ``scale`` = voxel sizes and ``translate`` = world position of voxel 0 from the affine (a radiologist's
  session: napari has no NIfTI reader of its own).
- ``ome-zarr STORE OUT``: opened through the napari-ome-zarr reader plugin, image + ``labels/`` together.

The view is set in world coordinates given by the caller (``--z`` slice position, ``--center``, ``--px-per-mm``),
never from the layers' own extents, so a layer placed wrongly lands off the slice or off the canvas. The window is
shown, 1200 x 900, on the X server (a hidden viewer's canvas screenshots black under Xvfb). The labels layer is made
visible (the plugin opens labels hidden) and opaque, so the canvas shows its colours exactly rather than blended with
the CT. Writes ``OUT/shown.png`` and the control ``OUT/hidden.png`` (labels layer hidden).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np


def nifti_layers(viewer: Any, scan: str, mask: str) -> tuple[Any, Any]:
    import nibabel as nib

    image = nib.load(scan)
    affine = image.affine
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # voxel size per i, j, k column
    placement = {"scale": zooms[::-1], "translate": affine[:3, 3][::-1]}
    data = np.asarray(image.dataobj).transpose(2, 1, 0)
    labels = np.asarray(nib.load(mask).dataobj).transpose(2, 1, 0)
    return (viewer.add_image(data, name="scan", **placement),
            viewer.add_labels(labels, name="mask", **placement))


def ome_zarr_layers(viewer: Any, store: str) -> tuple[Any, Any]:
    from napari.layers import Image, Labels

    layers = viewer.open(store, plugin="napari-ome-zarr")
    images = [layer for layer in layers if isinstance(layer, Image)]
    labels = [layer for layer in layers if isinstance(layer, Labels)]
    if len(images) != 1 or len(labels) != 1:
        sys.exit(f"napari-ome-zarr gave {[type(layer).__name__ for layer in layers]}, not one image + one labels")
    return images[0], labels[0]


def describe(layer: Any, visible_on_open: bool) -> dict[str, Any]:
    data = layer.data[0] if layer.multiscale else layer.data
    return {"name": layer.name, "type": type(layer).__name__, "shape": list(data.shape),
            "scale": [float(v) for v in layer.scale], "translate": [float(v) for v in layer.translate],
            "affine_is_identity": bool(np.allclose(layer.affine.affine_matrix, np.eye(layer.ndim + 1))),
            "multiscale": bool(layer.multiscale), "visible_on_open": visible_on_open,
            "contrast_limits": [float(v) for v in layer.contrast_limits] if hasattr(layer, "contrast_limits") else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", choices=["nifti", "ome-zarr"])
    parser.add_argument("paths", nargs="+", help="SCAN MASK OUT (nifti) or STORE OUT (ome-zarr)")
    parser.add_argument("--z", type=float, required=True, help="world z (mm) of the axial slice to show")
    parser.add_argument("--center", type=float, nargs=2, required=True, metavar=("Y", "X"))
    parser.add_argument("--px-per-mm", type=float, required=True)
    parser.add_argument("--labels", type=lambda s: [int(v) for v in s.split(",")], required=True,
                        help="label ids whose layer colours to report")
    args = parser.parse_args()
    *inputs, out = args.paths
    out_dir = Path(out)

    import napari
    from PIL import Image as PILImage

    # shown on the (virtual) display: a hidden viewer's canvas is never drawn and screenshots black under Xvfb
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1200, 900)
    image, labels = nifti_layers(viewer, *inputs) if args.source == "nifti" else ome_zarr_layers(viewer, *inputs)
    opened_visible = {"image": bool(image.visible), "labels": bool(labels.visible)}
    labels.visible = True
    labels.opacity = 1.0
    viewer.dims.ndisplay = 2
    viewer.dims.set_point(0, args.z)
    viewer.scene.camera.center = tuple(args.center)
    viewer.scene.camera.zoom = args.px_per_mm
    shown = viewer.screenshot(canvas_only=True, flash=False)
    labels.visible = False
    hidden = viewer.screenshot(canvas_only=True, flash=False)
    PILImage.fromarray(shown).save(out_dir / "shown.png")
    PILImage.fromarray(hidden).save(out_dir / "hidden.png")
    facts = {
        "napari": napari.__version__,
        "plugin": version("napari-ome-zarr") if args.source == "ome-zarr" else None,
        "image": describe(image, opened_visible["image"]), "labels": describe(labels, opened_visible["labels"]),
        "colors": {str(k): [float(v) * 255 for v in labels.get_color(k)] for k in args.labels},
        "dims_point": [float(v) for v in viewer.dims.point],
        "camera": {"center": [float(v) for v in viewer.scene.camera.center], "zoom": float(viewer.scene.camera.zoom)},
        "canvas": list(shown.shape),
    }
    print(json.dumps(facts), flush=True)  # the last stdout line (the plugin prints its own lines before it)
    # the screenshots and facts are out; skip Qt/OpenGL teardown at interpreter exit, which can crash headless
    os._exit(0)


if __name__ == "__main__":
    main()
