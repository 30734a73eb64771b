"""The HTML report: orientation, slice choice, chunk-limited reads, and the page's content."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.config.cards import Label
from pipeline.io.outputs import html_report_path
from pipeline.report.focus import find_focus, largest_label
from pipeline.report.html_report import volume_report
from pipeline.report.images import compose, display_size, label_lut
from pipeline.report.planes import plane_maps
from tests.factories import oblique_affine
from tests.report.conftest import CT_REF


def marker_volume(shape: tuple[int, int, int], affine: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """A volume with one bright voxel at the patient's right-anterior-superior corner region."""
    volume = np.zeros(shape, dtype=np.int16)
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1).T
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    # the corner with the largest x + y + z is the right-anterior-superior one in RAS+
    corner = tuple(int(v) for v in corners[np.argmax(world.sum(axis=1))])
    volume[corner] = 1000
    return volume, corner


@pytest.mark.parametrize("affine", [
    np.diag([2.0, 3.0, 4.0, 1.0]),                      # RAS
    np.diag([-2.0, -3.0, 4.0, 1.0]),                    # LPS (DICOM-style storage)
    np.array([[0, 0, 2.0, 0], [3.0, 0, 0, 0], [0, -4.0, 0, 0], [0, 0, 0, 1]]),  # permuted + flipped axes
    oblique_affine(lps=True),
])
def test_planes_are_shown_in_radiological_convention(affine: np.ndarray) -> None:
    """Patient right on the screen's left, anterior and superior at the top, whatever the storage order."""
    volume, corner = marker_volume((6, 7, 8), affine)
    for plane in plane_maps(affine):
        image = plane.orient(volume[plane.index(corner[plane.axis])])
        row, col = np.argwhere(image == 1000)[0]
        sides = plane.sides()
        if plane.view.name == "axial":  # right-anterior: top-left
            assert (row, col) == (0, 0)
            assert sides == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
        if plane.view.name == "coronal":  # right-superior: top-left
            assert (row, col) == (0, 0)
            assert sides["top"] == "S"
            assert sides["left"] == "R"
        if plane.view.name == "sagittal":  # anterior-superior: top-left
            assert (row, col) == (0, 0)
            assert sides["top"] == "S"
            assert sides["left"] == "A"


def test_physical_aspect() -> None:
    assert display_size((30, 100), (5.0, 1.0), longest=300) == (200, 300)  # 150 mm tall, 100 mm wide
    assert display_size((100, 100), (1.0, 1.0), longest=320) == (320, 320)


def test_focus_is_inside_the_largest_structure() -> None:
    labels = np.zeros((40, 50, 30), dtype=np.uint8)
    labels[2:6, 2:6, 2:6] = 1                # small
    labels[20:36, 10:40, 5:25] = 2           # largest
    labels[(labels == 2) & (np.arange(50)[None, :, None] % 2 == 0)] = 0  # holes: the centroid need not be labelled
    rows = [{"label": v, "voxels": int((labels == v).sum())} for v in range(3)]
    assert largest_label(rows, "voxels") == 2
    focus = find_focus(labels, 2, budget=labels.size)
    assert labels[focus.point] == 2
    assert focus.low == (2, 2, 2)
    assert focus.high == (35, 39, 24)
    coarse = find_focus(labels, 2, budget=2000)  # strided: still inside, up to the stride
    assert 20 <= coarse.point[0] < 36
    assert 10 <= coarse.point[1] < 40
    assert find_focus(labels, None).point == (20, 25, 15)  # nothing predicted: the centre
    assert largest_label([{"label": 0, "voxels": 9}, {"label": 1, "voxels": 0}], "voxels") is None


def test_compose_blends_label_colours_and_keeps_background() -> None:
    lut = label_lut({0: Label(name="bg", color=(9, 9, 9)), 1: Label(name="a", color=(200, 0, 0))})
    gray = np.full((2, 2), 0.5, dtype=np.float32)
    rgb = compose(gray, np.array([[0, 1], [255, 1]]), lut, alpha=0.5)
    assert tuple(rgb[0, 0]) == (128, 128, 128)   # background: untouched
    assert tuple(rgb[1, 0]) == (128, 128, 128)   # nodata: untouched
    assert tuple(rgb[0, 1]) == (164, 64, 64)     # 0.5 * 127.5 + 0.5 * (200, 0, 0)


class Recorder:
    """A Zarr array stand-in that records every selection read from it."""

    def __init__(self, array: Any) -> None:
        self.array, self.keys = array, []
        self.shape, self.chunks, self.dtype, self.ndim = array.shape, array.chunks, array.dtype, array.ndim

    def __getitem__(self, key: Any) -> Any:
        self.keys.append(key)
        return self.array[key]

    @property
    def oindex(self) -> Any:
        recorder = self

        class Orthogonal:
            def __getitem__(self, key: Any) -> Any:
                recorder.keys.append(key)
                return recorder.array.oindex[key]

        return Orthogonal()


def test_reads_only_planes_and_one_strided_pass(ct_case: dict[str, Any], ct_labels: dict[int, Label],
                                                tmp_path: Path) -> None:
    group = ct_case["group"]
    image, labels = Recorder(group["image"]), Recorder(group["labels"])
    store = {"image": image, "labels": labels}
    scan = ct_case["scan"]
    volume_report(ct_case["report"], store, ct_labels, geometry=scan.geometry,
                  window=(-1000, 1000), reference=CT_REF, path=tmp_path / "r.html")
    def planes(key: tuple[Any, ...]) -> bool:  # a plane (int) or a few planes (list) on some axis
        return any(isinstance(k, int | list) for k in key)

    assert len(image.keys) == 3 + 1  # three planes, then the montage's slices in one orthogonal read
    assert all(planes(key[1:]) for key in image.keys)
    assert isinstance(image.keys[-1][3], list)
    assert len(image.keys[-1][3]) == 12
    strided = [k for k in labels.keys if not planes(k)]
    assert len(strided) == 1
    assert all(s.step == 1 for s in strided[0])  # the focus pass (small sample: stride 1)
    assert len(labels.keys) == 1 + 3 + 1


def test_report_page(ct_case: dict[str, Any], ct_labels: dict[int, Label], tmp_path: Path) -> None:
    scan, report = ct_case["scan"], ct_case["report"]
    path = html_report_path(tmp_path / "ct_seg.nii.gz")
    assert path.name == "ct_seg.report.html"
    started = time.perf_counter()
    volume_report(report, ct_case["group"], ct_labels, geometry=scan.geometry,
                  window=(-1000, 1000), reference=CT_REF, path=path)
    seconds = time.perf_counter() - started
    html = path.read_text()
    assert seconds < 5  # about 0.3-0.5 s on 2 busy cores; generous for CI
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 3 * 3 + 1 + 2  # 3 planes x (input, reference, prediction), montage, Dice, confusion
    assert "http://" not in html.replace("http://mrcc", "")
    assert "<script" not in html
    for row in report["labels"]:
        assert f"<td>{row['dice']:.3f}</td>" in html
        assert f"{row['volume_ml']:.2f}" in html
        assert "#{:02x}{:02x}{:02x}".format(*ct_labels[row["label"]].color) in html
    assert f"{report['pixel_accuracy']:.4f}" in html
    assert f"{report['mean_pixel_accuracy']:.4f}" in html
    assert report["model_sha256"] in html
    assert "0.1.0+gtest" in html
    assert "Mvox/s" in html
    spleen = next(r for r in report["labels"] if r["name"] == "spleen")
    assert spleen["dice"] == 0.0  # the degraded 'prediction' misses it: shown as 0.000
    assert "1024 MB" in html


def test_report_without_reference(ct_case: dict[str, Any], ct_labels: dict[int, Label], tmp_path: Path) -> None:
    report = {**ct_case["report"], "reference": None, "confusion_matrix": None, "pixel_accuracy": None,
              "mean_pixel_accuracy": None,
              "labels": [{**row, "dice": None, "iou": None, "reference_voxels": None, "reference_volume_ml": None}
                         for row in ct_case["report"]["labels"]]}
    scan = ct_case["scan"]
    path = volume_report(report, ct_case["group"], ct_labels, geometry=scan.geometry,
                         window=None, reference=None, path=tmp_path / "r.html")
    html = path.read_text()
    assert len(re.findall(r'src="data:image/png', html)) == 3 * 2 + 1  # input + prediction per plane, montage
    assert "no reference" in html
    assert "dice-chart" not in html


def raster_store(directory: Path, height: int, width: int) -> Any:
    import zarr

    group = zarr.open_group(zarr.storage.LocalStore(directory / "r.zarr"), mode="w", zarr_format=3)
    rng = np.random.default_rng(0)
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[height - 300 : height - 200, width - 250 : width - 100] = 1  # the only structure: bottom right
    valid = np.ones((height, width), dtype=bool)
    valid[:, :20] = False
    data = {"image": rng.integers(0, 1000, size=(1, height, width), dtype=np.uint16), "labels": labels, "valid": valid}
    for name, values in data.items():
        chunks = (*values.shape[:-2], 256, 256)
        group.create_array(name, shape=values.shape, chunks=chunks, dtype=values.dtype)[:] = values
    return group


@pytest.mark.parametrize(("height", "width", "panels"), [(900, 700, 3), (1500, 1300, 4)])
def test_raster_panels(tmp_path: Path, height: int, width: int, panels: int) -> None:
    from pipeline.report.html_report import raster_report
    from pipeline.report.panels import MAX_PNG_SIDE

    group = raster_store(tmp_path, height, width)
    labels = {0: Label(name="background", color=(0, 0, 0)), 1: Label(name="building", color=(230, 60, 60))}
    recorded = Recorder(group["image"])
    report = {"model": "m", "model_sha256": "0" * 64, "output": "o.tif", "reference": "ref.geojson",
              "area_unit": "metre^2",
              "input": {"path": "scene.tif", "sha256": "1" * 64, "height": height, "width": width, "bands": [1],
                        "crs": "EPSG:32616"},
              "labels": [{"label": 0, "name": "background", "pixels": 10, "area": 2.5, "area_ha": 0.00025,
                          "reference_area": 2.0, "dice": 0.9, "iou": 0.8},
                         {"label": 1, "name": "building", "pixels": 15000, "area": 3750.0, "area_ha": 0.375,
                          "reference_area": 3000.0, "dice": 0.7, "iou": 0.6}],
              "pixel_accuracy": 0.95, "mean_pixel_accuracy": 0.9, "confusion_matrix": [[90, 10], [5, 95]],
              "run": {"seconds_total": 1.0, "seconds_inference": 0.5, "mvox_per_s": 1.0, "windows": 4, "blocks": 1,
                      "peak_rss_mb": 100.0, "code_version": "x"}}
    seen: list[tuple[slice, slice]] = []

    def truth(rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        seen.append((rows, cols))
        return np.asarray(group["labels"][rows, cols]), np.ones((rows.stop - rows.start, cols.stop - cols.start), bool)

    path = raster_report(report, {"image": recorded, "labels": group["labels"], "valid": group["valid"]}, labels,
                         spacing=(0.5, 0.5), window=None, reference=truth, path=tmp_path / "r.html")
    html = path.read_text()
    assert html.count("data:image/png") == panels + 2
    assert "0.3750" in html
    assert "3750.0" in html
    assert "Mpx/s" in html
    (rows, cols), = seen  # the reference is read for the shown window only
    if panels == 3:  # fits: the whole scene, strided to at most MAX_PNG_SIDE
        assert (rows, cols) == (slice(0, height), slice(0, width))
        assert "strided x2" in html
    else:  # a full-resolution window around the structure, and an overview
        assert rows.stop - rows.start == cols.stop - cols.start == MAX_PNG_SIDE
        assert rows.start <= height - 300
        assert rows.stop >= height - 200
        assert cols.start <= width - 250
        assert cols.stop >= width - 100
        assert "overview" in html
        windowed = [k for k in recorded.keys if k[1].step in (None, 1)]
        assert all(k[1].stop - k[1].start <= MAX_PNG_SIDE for k in windowed)
