"""The output guard (:mod:`pipeline.io.outputs`): naming, the complete output list, and what it refuses."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.errors import InputError, OutputBusyError, OutputError, OutputExistsError
from pipeline.evaluate.instances import instance_csv_path, instance_mask_path
from pipeline.geometry import VolumeGeometry
from pipeline.io.atomic import atomic_path
from pipeline.io.nifti import open_scan, write_labels
from pipeline.io.outputs import (
    Output,
    check_outputs,
    created_parents,
    default_volume_output,
    mark_store,
    model_reads,
    raster_outputs,
    report_csv_path,
    volume_outputs,
)
from pipeline.io.store import work_dir_for, work_store
from pipeline.report.tables import write_report

ROOT = Path(__file__).resolve().parents[2]
PRINT = {"input_sha256": "a" * 64}


# ------------------------------------------------------------------------------------------ naming

@pytest.mark.parametrize(("mask", "instances", "table"), [
    ("scan_seg.nii.gz", "scan_seg_instances.nii.gz", "scan_seg.instances.csv"),
    ("SCAN_SEG.NII.GZ", "SCAN_SEG_instances.NII.GZ", "SCAN_SEG.instances.csv"),
    ("scene_seg.TIF", "scene_seg_instances.TIF", "scene_seg.instances.csv"),
    ("scene_seg.Tiff", "scene_seg_instances.Tiff", "scene_seg.instances.csv"),
])
def test_instance_names_ignore_suffix_case(mask: str, instances: str, table: str) -> None:
    assert instance_mask_path(Path("d") / mask) == Path("d") / instances
    assert instance_csv_path(Path("d") / mask) == Path("d") / table


def test_every_sidecar_is_named_after_the_stem_whatever_the_case() -> None:
    names = [o.path.name for o in raster_outputs(Path("scene_seg.TIF"), ome_zarr=True, instances=True)]
    assert names == ["scene_seg.TIF", "scene_seg.report.json", "scene_seg.report.csv", "scene_seg.qml",
                     "scene_seg.report.html", "scene_seg.ome.zarr", "scene_seg_instances.TIF",
                     "scene_seg.instances.csv"]
    assert default_volume_output(Path("a/SCAN.NII.GZ")) == Path("a/SCAN_seg.NII.GZ")
    assert report_csv_path(Path("scores.JSON")) == Path("scores.csv")


def test_upper_case_gz_mask_is_gzip(tmp_path: Path, data_dir: Path) -> None:
    """``-o M.NII.GZ`` used to be written uncompressed under a .gz name (and read back as truncated)."""
    scan = open_scan(data_dir / "medical" / "example_seg.nii.gz")
    geometry: VolumeGeometry = scan.geometry
    labels = np.asarray(scan.proxy).astype(np.uint8).reshape(geometry.shape)
    path = tmp_path / "M.NII.GZ"
    write_labels(labels, geometry, path)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(path.read_bytes())[344:348] == b"n+1\x00"
    assert np.array_equal(np.asarray(open_scan(path).proxy).reshape(geometry.shape), labels)


# ------------------------------------------------------------------------------------------ the list

def _all_volume(mask: Path) -> list[Output]:
    return volume_outputs(mask, html=True, ome_zarr=True, probabilities=True, instances=True)


def _all_raster(mask: Path) -> list[Output]:
    return raster_outputs(mask, html=True, ome_zarr=True, instances=True, vectors=mask.with_name("polys.gpkg"))


@pytest.mark.parametrize("plan", [_all_volume, _all_raster])
def test_each_existing_output_is_refused_by_name(tmp_path: Path, plan) -> None:
    suffix = "scan_seg.nii.gz" if plan is _all_volume else "scene_seg.tif"
    writes = plan(tmp_path / suffix)
    assert len({o.path for o in writes}) == len(writes) >= 9
    for out in writes:
        out.path.write_text("the user's own file")
        with pytest.raises(OutputExistsError, match=f"^{out.path}: output exists"):
            check_outputs(writes, [], overwrite=False)
        check_outputs(writes, [], overwrite=True)
        out.path.unlink()
    check_outputs(writes, [], overwrite=False)


@pytest.mark.slow
def test_the_list_is_what_a_run_writes(tmp_path: Path, data_dir: Path, tiny_card: Path, client1) -> None:
    """Every file a volume run with every option writes is in the planned list, and nothing else."""
    from pipeline.segment import segment_volume

    scan = Path(shutil.copy(data_dir / "medical" / "example_seg.nii.gz", tmp_path / "scan.nii.gz"))
    mask = tmp_path / "out" / "scan_seg.nii.gz"
    segment_volume(scan, model=tiny_card, output=mask, client=client1, probabilities=True, ome_zarr=True,
                   instances=["class1"])
    written = {p.name for p in mask.parent.iterdir()}
    assert written == {o.path.name for o in _all_volume(mask)}


# ------------------------------------------------------------------------------------------ what it refuses

def test_an_input_by_any_spelling_is_never_an_output(tmp_path: Path) -> None:
    ref = tmp_path / "ref.nii.gz"
    ref.write_bytes(b"reference")
    (tmp_path / "sub").mkdir()
    (tmp_path / "alias.nii.gz").symlink_to(ref)
    os.link(ref, tmp_path / "hard.nii.gz")
    for spelling in (ref, tmp_path / "sub" / ".." / "ref.nii.gz", tmp_path / "alias.nii.gz", tmp_path / "hard.nii.gz"):
        for overwrite in (False, True):
            with pytest.raises(InputError, match="output would overwrite an input of this run"):
                check_outputs(volume_outputs(spelling), [ref], overwrite=overwrite)
    with pytest.raises(InputError, match="ref.nii.gz"):  # and the other way round: a read through a link
        check_outputs(volume_outputs(ref), [tmp_path / "alias.nii.gz"], overwrite=True)
    assert ref.read_bytes() == b"reference"


def test_outputs_inside_a_bundle_and_reads_inside_an_output_store(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    model = SimpleNamespace(card_path=bundle)
    with pytest.raises(InputError, match="bundle"):
        check_outputs(volume_outputs(bundle / "models" / "mask.nii.gz"), model_reads(model), overwrite=True)
    card = SimpleNamespace(card_path=tmp_path / "tiny.yaml", card=SimpleNamespace(weights="w.nii", architecture="UNet"))
    assert model_reads(card) == [tmp_path / "tiny.yaml", tmp_path / "w.nii"]
    with pytest.raises(InputError, match="w.nii"):
        check_outputs(volume_outputs(tmp_path / "w.nii"), model_reads(card), overwrite=True)
    store = tmp_path / "m_probabilities.zarr"
    with pytest.raises(InputError, match="probabilities.zarr"):
        check_outputs(volume_outputs(tmp_path / "m.nii", probabilities=True), [store / "ref.nii.gz"], overwrite=True)


def test_only_files_and_our_stores_are_replaced(tmp_path: Path) -> None:
    mask = tmp_path / "m.nii.gz"
    mask.mkdir()
    with pytest.raises(OutputError, match="is a directory, not a file; --overwrite replaces only those"):
        check_outputs(volume_outputs(mask), [], overwrite=True)
    mask.rmdir()
    os.mkfifo(mask)
    with pytest.raises(OutputError, match="is a FIFO"):
        check_outputs(volume_outputs(mask), [], overwrite=True)
    mask.unlink()
    mask.symlink_to(tmp_path / "gone" / "m.nii.gz")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="is a dangling symlink"):
            check_outputs(volume_outputs(mask), [], overwrite=overwrite)
    mask.unlink()
    store = tmp_path / "m.ome.zarr"
    store.mkdir()
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {"napari": {}}}')
    writes = volume_outputs(mask, ome_zarr=True)
    with pytest.raises(OutputError, match="not a file or a Zarr store volseg wrote"):
        check_outputs(writes, [], overwrite=True)
    mark_store(store, "ome-zarr")
    with pytest.raises(OutputExistsError, match="m.ome.zarr: output exists"):
        check_outputs(writes, [], overwrite=False)
    check_outputs(writes, [], overwrite=True)


@pytest.mark.parametrize(("plan", "name", "message"), [
    (volume_outputs, "mask.txt", "the mask is NIfTI; name it .nii.gz or .nii"),
    (raster_outputs, "mask.nii.gz", "the mask is a Cloud-Optimized GeoTIFF"),
    (lambda m: raster_outputs(m.with_name("m.tif"), vectors=m), "polys.shp", "unknown vector format '.shp'"),
])
def test_a_suffix_the_format_does_not_own_is_refused(tmp_path: Path, plan, name: str, message: str) -> None:
    with pytest.raises(OutputError, match=message):
        check_outputs(plan(tmp_path / name), [], overwrite=True)


def test_atomic_write_never_replaces_a_directory_by_a_file(tmp_path: Path) -> None:
    """Defence behind the guard: ``--overwrite`` onto ``results/`` used to delete the whole tree."""
    (tmp_path / "results" / "old").mkdir(parents=True)
    (tmp_path / "results" / "old" / "a.txt").write_text("kept")
    with pytest.raises(OSError), atomic_path(tmp_path / "results") as tmp:
        tmp.write_text("a file")
    assert (tmp_path / "results" / "old" / "a.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


# ------------------------------------------------------------------------------------------ lock, parents

def test_the_lock_is_the_outputs_not_the_work_directorys(tmp_path: Path) -> None:
    output = tmp_path / "mask.nii.gz"
    with work_store(tmp_path / "work-a", output, PRINT):
        with pytest.raises(OutputBusyError, match="another run is writing it"), \
                work_store(tmp_path / "work-b", output, PRINT):
            pass
        alias = tmp_path / "alias"
        alias.symlink_to(tmp_path)
        with pytest.raises(OutputBusyError), work_store(tmp_path / "work-c", alias / "mask.nii.gz", PRINT):
            pass
    assert not work_dir_for(tmp_path / "work-b", output).exists()


def test_the_guard_runs_again_under_the_lock(tmp_path: Path) -> None:
    output = tmp_path / "mask.nii.gz"

    def finished_meanwhile() -> None:
        raise OutputExistsError(f"{output}: output exists; pass --overwrite to replace it")

    with pytest.raises(OutputExistsError), work_store(tmp_path, output, PRINT, check=finished_meanwhile):
        pytest.fail("the block must not run")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_missing_parents_are_created_and_removed_again_on_failure(tmp_path: Path) -> None:
    writes = volume_outputs(tmp_path / "a" / "b" / "mask.nii.gz")
    check_outputs(writes, [], overwrite=False)  # a missing directory is not an error
    with pytest.raises(RuntimeError), created_parents(writes):
        assert (tmp_path / "a" / "b").is_dir()
        raise RuntimeError
    assert not (tmp_path / "a").exists()
    with created_parents(writes):
        write_report({"labels": []}, tmp_path / "a" / "b" / "mask.report.json")
    assert (tmp_path / "a" / "b" / "mask.report.csv").is_file()
    (tmp_path / "f").write_text("a file")
    with pytest.raises(OutputError, match="f: not a directory, cannot hold mask.nii.gz"):
        check_outputs(volume_outputs(tmp_path / "f" / "x" / "mask.nii.gz"), [], overwrite=False)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_evaluate_creates_the_output_directory(tmp_path: Path, data_dir: Path) -> None:
    mask = data_dir / "medical" / "example_seg.nii.gz"
    done = _cli("evaluate", str(mask), str(mask), "-o", "new/dir/scores.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "new" / "dir").iterdir()) == ["scores.csv", "scores.json"]


def test_output_exists_is_refused_before_torch_and_dask(tmp_path: Path, data_dir: Path) -> None:
    scan = Path(shutil.copy(data_dir / "medical" / "example_ct_sm.nii.gz", tmp_path / "scan.nii.gz"))
    (tmp_path / "scan_seg.report.csv").write_text("the user's own table\n")
    probe = ("import sys, runpy\n"
             "sys.argv = ['pipeline', 'segment-volume', sys.argv[1]]\n"
             "try:\n    runpy.run_module('pipeline.cli', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "heavy = sorted(m for m in ('torch', 'monai', 'distributed') if m in sys.modules)\n"
             "print(code, heavy)\n")
    done = subprocess.run([sys.executable, "-c", probe, str(scan)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.stdout.strip() == "1 []", done.stdout + done.stderr
    assert done.stderr.strip() == f"error: {tmp_path / 'scan_seg.report.csv'}: output exists; pass --overwrite to " \
                                  "replace it"
