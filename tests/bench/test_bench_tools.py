"""The benchmark's own tools: mirrored inputs keep the sample's geometry, the meter sees a whole process tree."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest
import rasterio

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    """bench/ holds scripts, not a package: load one under a private name (it finds its siblings itself)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


inputs, measure = _load("inputs"), _load("measure")


@pytest.mark.parametrize("fmt", ["nii.gz", "nii"])
def test_mirrored_volume_keeps_geometry_and_flips_each_copy(tmp_path: Path, fmt: str) -> None:
    sample = nib.load(inputs.SAMPLE_CT)
    original = np.asanyarray(sample.dataobj)
    path = inputs.volume("1.4M", fmt, cache=tmp_path)
    image = nib.load(path)
    assert path.name.endswith(fmt) and image.shape == (122, 101, 120)
    assert np.array_equal(image.affine, sample.affine)
    assert image.header.get_zooms() == sample.header.get_zooms()
    assert image.header.get_data_dtype() == sample.header.get_data_dtype()
    data = np.asanyarray(image.dataobj)
    assert np.array_equal(data[:, :, 0:30], original)
    assert np.array_equal(data[:, :, 30:60], original[:, :, ::-1])  # the second copy is flipped: continuous
    assert np.array_equal(data[:, :, 60:90], original)
    assert not list(tmp_path.glob(".*.partial"))


def test_mirrored_ome_zarr_holds_the_nifti_voxels_stored_zyx(tmp_path: Path) -> None:
    """The 1 Gvox OME-Zarr benchmark input's builder, at 1.4M: the .nii's voxels as (k, j, i), its geometry in
    NGFF scale/translation, readable by the pipeline's reader."""
    from pipeline.io.ngff import open_zarr_input, zarr_geometry

    nifti = nib.load(inputs.volume("1.4M", "nii", cache=tmp_path))
    store = inputs.volume("1.4M", "ome.zarr", cache=tmp_path)
    source = open_zarr_input(store)
    import zarr

    stored = np.asarray(zarr.open_array(zarr.storage.LocalStore(store), path="0"))
    assert np.array_equal(stored, np.asanyarray(nifti.dataobj).transpose(2, 1, 0))
    geometry = zarr_geometry(source, orientation="SAR", card_orientation=None)
    assert np.allclose(geometry.affine_matrix @ [5, 7, 9, 1], nifti.affine @ [9, 7, 5, 1])


def test_mirrored_raster_keeps_georeference_and_crops(tmp_path: Path) -> None:
    path = tmp_path / "scene.tif"
    inputs.write_mirrored_geotiff(inputs.SAMPLE_TILE, (1000, 1900), path)
    with rasterio.open(inputs.SAMPLE_TILE) as src, rasterio.open(path) as out:
        original = src.read()
        assert (out.height, out.width, out.count) == (1000, 1900, src.count)
        assert out.crs == src.crs and out.transform == src.transform and out.nodata == src.nodata
        assert out.profile["tiled"]
        data = out.read()
    assert np.array_equal(data[:, :900, :900], original)
    assert np.array_equal(data[:, 900:, :900], original[:, ::-1][:, :100])      # rows flipped, cropped to 100
    assert np.array_equal(data[:, :900, 900:1800], original[:, :, ::-1])        # columns flipped
    assert np.array_equal(data[:, :900, 1800:], original[:, :, :100])           # third copy, cropped


def test_measure_sees_a_grandchilds_memory(tmp_path: Path) -> None:
    """The meter sums the whole tree: here the 200 MB live in a grandchild, the child itself is small."""
    grandchild = "import time; b = b'\\1' * (200 * 2**20); time.sleep(1.5)"
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}], check=True)"
    run = measure.measure([sys.executable, "-c", child], log_dir=tmp_path / "logs")
    assert run.returncode == 0, run.stderr
    assert run.peak_processes >= 2
    assert run.peak_pss_bytes >= 150 * 2**20
    assert run.peak_rss_bytes >= run.peak_pss_bytes
    assert run.seconds >= 1.5 and run.peak_dir_bytes is None


def test_measure_watches_a_directory_and_reports_failure(tmp_path: Path) -> None:
    work = tmp_path / "work"
    script = ("import os, sys, time; os.makedirs(sys.argv[1]); p = os.path.join(sys.argv[1], 'x');"
              "open(p, 'wb').write(b'\\1' * (8 * 2**20)); time.sleep(1.5); os.remove(p); sys.exit(3)")
    run = measure.measure([sys.executable, "-c", script, str(work)], watch=work, log_dir=tmp_path / "logs")
    assert run.returncode == 3
    assert run.peak_dir_bytes >= 8 * 2**20 and measure.dir_bytes(work) == 0


def test_compare_volumes_counts_differing_voxels(tmp_path: Path) -> None:
    e2e = _load("e2e")
    labels = (np.asanyarray(nib.load(inputs.SAMPLE_CT).dataobj) > 0).astype(np.uint8)
    changed = labels.copy()
    changed[5, 6, 7] ^= 1
    changed[-1, -1, -1] ^= 1  # the very last voxel: the streamed comparison must reach the end
    affine = nib.load(inputs.SAMPLE_CT).affine
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(changed, affine), tmp_path / "b.nii")
    same, total = e2e.compare_volumes(tmp_path / "a.nii.gz", tmp_path / "b.nii", chunk=1000)
    assert (same, total) == (labels.size - 2, labels.size)
