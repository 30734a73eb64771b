"""Instance labels: ids across chunk borders equal scipy.ndimage.label, sizes and centroids in world/map units."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config.cards import Label
from pipeline.errors import SettingsError
from pipeline.evaluate.instances import (
    find_instances,
    instance_csv_path,
    instance_mask_path,
    parse_classes,
    raster_rows,
    resolve_classes,
    volume_rows,
)
from pipeline.geometry import RasterGeometry, VolumeGeometry
from pipeline.io.store import create_array, open_work_group
from tests.factories import oblique_affine, run_and_check_clean_failure, write_nifti

LABELS = {0: Label(name="background"), 1: Label(name="lesion"), 2: Label(name="nodule")}


def test_classes_by_name_value_and_comma_lists() -> None:
    assert parse_classes(["lesion,nodule", " 2 ", ""]) == ["lesion", "nodule", "2"]
    assert resolve_classes(["nodule", "1", "2"], LABELS) == [2, 1]
    with pytest.raises(SettingsError, match=r"unknown class for --instances 'lesoin'; did you mean 'lesion'"):
        resolve_classes(["lesoin"], LABELS)
    with pytest.raises(SettingsError, match="background"):
        resolve_classes(["background"], LABELS)


def test_output_names() -> None:
    assert instance_mask_path(Path("a/scan_seg.nii.gz")) == Path("a/scan_seg_instances.nii.gz")
    assert instance_csv_path(Path("a/scan_seg.nii.gz")) == Path("a/scan_seg.instances.csv")
    assert instance_mask_path(Path("scene_seg.tif")) == Path("scene_seg_instances.tif")
    assert instance_csv_path(Path("scene_seg.tif")) == Path("scene_seg.instances.csv")


def test_two_classes_across_chunk_borders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.random((33, 26, 12)), 1.3)
    labels = np.digitize(field, np.quantile(field, [0.55, 0.8])).astype(np.uint8)
    group = open_work_group(tmp_path / "w.zarr")
    stored = create_array(group, "labels", shape=labels.shape, chunks=(7, 10, 5), dtype=np.uint8, channel_axis=False)
    stored[...] = labels
    ids, objects = find_instances(group, [2, 1])
    first, n_first = ndimage.label(labels == 2)
    second, n_second = ndimage.label(labels == 1)
    assert n_first > 3
    assert n_second > 3
    want = np.where(second > 0, second + n_first, first).astype(np.uint32)
    np.testing.assert_array_equal(ids[...], want)
    assert [o["id"] for o in objects] == list(range(1, n_first + n_second + 1))
    assert [o["label"] for o in objects] == [2] * n_first + [1] * n_second
    assert [o["count"] for o in objects] == np.bincount(want.ravel())[1:].tolist()


def test_volume_rows_in_world_mm() -> None:
    affine = oblique_affine(lps=True)
    geometry = VolumeGeometry(shape=(10, 10, 10), affine=tuple(affine.ravel()), zooms=(0.8, 1.1, 2.5))
    rows = volume_rows([{"id": 1, "label": 1, "count": 100, "centroid_index": [1.5, 2.0, 3.0]}], LABELS, geometry)
    x, y, z, _ = affine @ [1.5, 2.0, 3.0, 1.0]
    assert rows[0]["centroid_x_mm"] == pytest.approx(x, abs=1e-3)
    assert rows[0]["centroid_y_mm"] == pytest.approx(y, abs=1e-3)
    assert rows[0]["centroid_z_mm"] == pytest.approx(z, abs=1e-3)
    assert rows[0]["volume_ml"] == pytest.approx(100 * 0.8 * 1.1 * 2.5 / 1000)
    assert rows[0]["name"] == "lesion"


def test_raster_rows_in_map_units() -> None:
    geometry = RasterGeometry(height=20, width=30, transform=(0.5, 0.0, 1000.0, 0.0, -0.5, 2000.0))
    rows = raster_rows([{"id": 1, "label": 2, "count": 8, "centroid_index": [3.0, 4.0]}], LABELS, geometry, 1.0)
    assert (rows[0]["centroid_x"], rows[0]["centroid_y"]) == (1000.0 + 4.5 * 0.5, 2000.0 - 3.5 * 0.5)
    assert rows[0]["area"] == 2.0
    assert rows[0]["area_m2"] == 2.0


def test_unknown_class_fails_before_any_work(tmp_path: Path, data_dir: Path) -> None:
    scan = tmp_path / "scan.nii.gz"
    shutil.copy(data_dir / "medical/example_ct_sm.nii.gz", scan)
    run_and_check_clean_failure(CliRunner(), app, ["segment-volume", str(scan), "-m", "ct-bone", "--instances", "bones",
                                                   "--workers", "1"], tmp_path, "did you mean 'bone'")


@pytest.mark.slow
def test_volume_end_to_end(tmp_path: Path, data_dir: Path, client2: object) -> None:
    from pipeline.segment import segment_volume

    voxels = np.asarray(nib.load(data_dir / "medical/example_ct_sm.nii.gz").dataobj)
    scan = write_nifti(tmp_path / "scan.nii.gz", voxels, oblique_affine())
    result = segment_volume(scan, model="ct-bone-grow", chunks=(50, 40, 13), client=client2, instances=["bone"],
                            html=False)
    mask = nib.load(result.mask)
    found = nib.load(instance_mask_path(result.mask))
    want, count = ndimage.label(np.asarray(mask.dataobj) == 1)
    assert count > 3
    assert found.get_data_dtype() == np.uint32
    np.testing.assert_array_equal(np.asarray(found.dataobj), want)
    np.testing.assert_array_equal(found.affine, mask.affine)
    section = result.report["instances"]
    assert section["count"] == count
    assert section["classes"] == ["bone"]
    with open(section["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["voxels"]) for r in rows] == np.bincount(want.ravel())[1:].tolist()
    centre = np.array(ndimage.center_of_mass(want > 0, want, 1))
    world = mask.affine @ [*centre, 1.0]
    assert float(rows[0]["centroid_x_mm"]) == pytest.approx(world[0], abs=1e-3)


@pytest.mark.slow
def test_raster_end_to_end(tmp_path: Path, data_dir: Path, client2: object) -> None:
    import rasterio

    from pipeline.segment.raster import segment_raster

    scene = data_dir / "geo/sample_geotiff.tif"
    result = segment_raster(scene, model="otsu-foreground", output=tmp_path / "scene_seg.tif", chunks=(300, 350),
                            client=client2, instances=["foreground"], html=False)
    with rasterio.open(result.mask) as m, rasterio.open(instance_mask_path(result.mask)) as i, \
            rasterio.open(scene) as s:
        assert i.dtypes[0] == "uint32"
        assert (i.crs, i.transform, i.shape) == (s.crs, s.transform, s.shape)
        want, count = ndimage.label(m.read(1) == 1)
        np.testing.assert_array_equal(i.read(1), want)
    assert result.report["instances"]["count"] == count > 10
    assert result.report["instances"]["objects"][0]["area_m2"] == pytest.approx(
        np.count_nonzero(want == 1) * 0.25)
