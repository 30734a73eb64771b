"""OME-Zarr / plain Zarr input (issue 18): metadata -> geometry, in-place reads, bad inputs one line each,
mode pyramid of labels, and a round trip of the real CT whose labels equal the NIfTI path's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import zarr

from pipeline.errors import InputError, InputNotFoundError, OutputError
from pipeline.io.ngff import open_zarr_input, parse_orientation, zarr_geometry
from pipeline.io.ngff_labels import check_label_target, mode_downsample, mode_reduce
from pipeline.io.zarr_source import store_identity, zarr_view

CT = Path(__file__).resolve().parents[2] / "data" / "medical" / "example_ct_sm.nii.gz"


def write_ngff(path: Path, levels: list[np.ndarray], *, axes: list[dict[str, Any]], scales: list[list[float]],
               translation: list[float], chunks: tuple[int, ...]) -> Path:
    """An OME-Zarr image written by ome-zarr's own writer (what other tools produce)."""
    from ome_zarr.writer import write_multiscale

    root = zarr.open_group(zarr.storage.LocalStore(path), mode="w")
    write_multiscale(levels, root, axes=axes, storage_options={"chunks": chunks},
                     coordinate_transformations=[[{"type": "scale", "scale": s},
                                                  {"type": "translation", "translation": translation}] for s in scales])
    return path


def zyx(unit: str = "millimeter") -> list[dict[str, Any]]:
    return [{"name": n, "type": "space", "unit": unit} for n in "zyx"]


@pytest.fixture(scope="module")
def ct_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real sample CT stored z, y, x (= NIfTI k, j, i) with a second level halved in y/x."""
    image = nib.load(CT)
    data = np.ascontiguousarray(np.asarray(image.dataobj).astype(np.int16).transpose(2, 1, 0))
    translation = [float(v) for v in image.affine[:3, 3][::-1]]
    return write_ngff(tmp_path_factory.mktemp("ngff") / "ct.ome.zarr", [data, data[:, ::2, ::2]], axes=zyx(),
                      scales=[[3.0, 3.0, 3.0], [3.0, 6.0, 6.0]], translation=translation, chunks=(16, 40, 40))


def test_geometry_from_axes_scale_translation_and_orientation(ct_store: Path) -> None:
    source = open_zarr_input(ct_store)
    assert [a.name for a in source.axes] == ["z", "y", "x"] and source.spatial_shape == (30, 101, 122)
    geometry = zarr_geometry(source, orientation="SAR", card_orientation="RAS")
    nifti = nib.load(CT).affine
    # stored voxel (z, y, x) lands where the NIfTI affine puts voxel (i, j, k) = (x, y, z)
    assert np.allclose(geometry.affine_matrix @ [7, 5, 3, 1], nifti @ [3, 5, 7, 1])
    coarse = open_zarr_input(ct_store, level=1)
    assert coarse.spatial_shape == (30, 51, 61) and coarse.array.scale == (3.0, 6.0, 6.0)


def test_micrometre_units_become_millimetres(tmp_path: Path) -> None:
    store = write_ngff(tmp_path / "um.ome.zarr", [np.zeros((4, 5, 6), np.uint8)], axes=zyx("micrometer"),
                       scales=[[500.0, 250.0, 250.0]], translation=[1000.0, 0.0, 0.0], chunks=(4, 5, 6))
    level = open_zarr_input(store).array
    assert level.scale == (0.5, 0.25, 0.25) and level.translation == (1.0, 0.0, 0.0)


def test_view_reads_spans_channel_first_without_copy(tmp_path: Path) -> None:
    data = np.arange(2 * 5 * 6 * 7, dtype=np.float32).reshape(1, 2, 5, 6, 7)  # t (one point), c, z, y, x
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, *zyx()]
    store = write_ngff(tmp_path / "c.ome.zarr", [data], axes=axes, scales=[[1.0] * 5],
                       translation=[0.0] * 5, chunks=(1, 1, 2, 3, 4))
    source = open_zarr_input(store)
    view = zarr_view(source, zarr_geometry(source, orientation=None, card_orientation=None))
    assert view.shape == (2, 5, 6, 7)
    span = view[(slice(None), slice(1, 4), slice(2, 6), slice(0, 3))]
    np.testing.assert_array_equal(span, data[0, :, 1:4, 2:6, 0:3])
    np.testing.assert_array_equal(view.to_dask().compute(), data[0])
    assert not any(p.name == "work.zarr" for p in tmp_path.rglob("*"))


def test_plain_array_with_spacing_and_axes(tmp_path: Path) -> None:
    group = zarr.open_group(zarr.storage.LocalStore(tmp_path / "raw.zarr"), mode="w")
    group.create_array("volume", shape=(8, 9, 10), chunks=(4, 4, 4), dtype="uint16")[:] = 7
    source = open_zarr_input(tmp_path / "raw.zarr", array="volume", spacing=(0.5, 0.5, 1.0), axes="zyx")
    assert source.spatial_shape == (8, 9, 10) and source.array.scale == (0.5, 0.5, 1.0) and not source.multiscales
    with pytest.raises(InputError, match="needs --spacing and --axes"):
        open_zarr_input(tmp_path / "raw.zarr", array="volume")
    with pytest.raises(InputError, match="no array 'nope'"):
        open_zarr_input(tmp_path / "raw.zarr", array="nope", spacing=(1, 1, 1), axes="zyx")
    with pytest.raises(InputError, match="--axes 'zzx'"):
        open_zarr_input(tmp_path / "raw.zarr", array="volume", spacing=(1, 1, 1), axes="zzx")


def test_bad_inputs_one_line_each(tmp_path: Path, ct_store: Path) -> None:
    with pytest.raises(InputNotFoundError, match="not found"):
        open_zarr_input(tmp_path / "missing.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(InputError, match="not a Zarr store"):
        open_zarr_input(tmp_path / "empty.zarr")
    zarr.open_group(zarr.storage.LocalStore(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(InputError, match="no 'multiscales'"):
        open_zarr_input(tmp_path / "plain.zarr")
    with pytest.raises(InputError, match=r"level 2 does not exist \(levels 0..1\)"):
        open_zarr_input(ct_store, level=2)
    odd = write_ngff(tmp_path / "odd.ome.zarr", [np.zeros((2, 3, 4), np.uint8)], axes=zyx(), scales=[[1.0] * 3],
                     translation=[0.0] * 3, chunks=(2, 3, 4))
    meta = zarr.open_group(zarr.storage.LocalStore(odd), mode="r+")
    ome = dict(meta.attrs["ome"])
    ome["multiscales"] = [{**ome["multiscales"][0], "axes": [{"name": "z", "type": "wavelength"}, *zyx()[1:]]}]
    meta.attrs["ome"] = ome
    with pytest.raises(InputError, match="unknown type 'wavelength'"):
        open_zarr_input(odd)
    cplx = write_ngff(tmp_path / "c.ome.zarr", [np.zeros((2, 3, 4), np.complex64)], axes=zyx(), scales=[[1.0] * 3],
                      translation=[0.0] * 3, chunks=(2, 3, 4))
    with pytest.raises(InputError, match="complex64 is not a real scalar"):
        open_zarr_input(cplx)
    for codes in ("RAR", "RA", "XYZ"):
        with pytest.raises(InputError, match="--orientation"):
            parse_orientation(codes)


def test_read_only_or_remote_store_asks_for_output_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "ro.ome.zarr"
    store.mkdir()
    monkeypatch.setattr("pipeline.io.ngff_labels.os.access", lambda path, mode: False)  # root ignores chmod
    with pytest.raises(OutputError, match="read-only; write the labels elsewhere with -o"):
        check_label_target(store, "ct-organs", overwrite=False, in_input=True)
    with pytest.raises(OutputError, match="local stores only; pass -o"):
        check_label_target("s3://bucket/x.ome.zarr", "ct-organs", overwrite=False, in_input=True)


def test_mode_reduce_takes_the_most_frequent_label() -> None:
    block = np.array([[1, 1, 2, 0], [1, 3, 2, 2]], dtype=np.uint8)
    out = mode_reduce(block.reshape(1, 2, 2, 2), axis=(1, 3), n_labels=4)  # (y, fy, x, fx), as coarsen gives it
    assert out.tolist() == [[1, 2]]
    import dask.array as da

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(5, 7, 9)).astype(np.uint8)
    coarse = mode_downsample(da.from_array(labels, chunks=(4, 4, 4)), (1, 2, 2), (5, 4, 5), 3).compute()
    assert coarse.shape == (5, 4, 5)
    for z, y, x in [(0, 0, 0), (4, 3, 4), (2, 1, 3)]:
        votes = np.bincount(np.pad(labels, ((0, 0), (0, 1), (0, 1)), mode="edge")[z, 2 * y:2 * y + 2, 2 * x:2 * x + 2]
                            .ravel(), minlength=3)
        assert coarse[z, y, x] == votes.argmax()


def test_identity_changes_when_a_chunk_is_rewritten(tmp_path: Path) -> None:
    store = write_ngff(tmp_path / "i.ome.zarr", [np.zeros((4, 4, 4), np.uint8)], axes=zyx(), scales=[[1.0] * 3],
                       translation=[0.0] * 3, chunks=(2, 2, 2))
    before = store_identity(open_zarr_input(store))
    assert before == store_identity(open_zarr_input(store))
    array = zarr.open_array(zarr.storage.LocalStore(store), path="0", mode="r+")
    array[0, 0, 0] = 9
    assert store_identity(open_zarr_input(store))["input_sha256"] != before["input_sha256"]


@pytest.mark.slow
def test_round_trip_real_ct_equals_the_nifti_labels(ct_store: Path, tmp_path: Path) -> None:
    """The sample CT as OME-Zarr, segmented in place by ct-organs: labels/ct-organs equals the NIfTI run's
    mask on the same voxels, has the image's transforms and a mode pyramid, and ome-zarr's reader finds it."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label as LabelSpec
    from ome_zarr.reader import Reader

    from pipeline.cluster import ClusterSettings
    from pipeline.segment import segment_volume
    from pipeline.segment.ngff import segment_zarr

    cluster = ClusterSettings(workers=0)
    result = segment_zarr(ct_store, model="ct-organs", orientation="SAR", cluster=cluster, backend="torch")
    nifti = segment_volume(CT, model="ct-organs", output=tmp_path / "ct_seg.nii.gz", cluster=cluster, html=False,
                           backend="torch")
    expected = np.asarray(nib.load(nifti.mask).dataobj).transpose(2, 1, 0)
    labels = zarr.open_group(zarr.storage.LocalStore(result.labels), mode="r")
    np.testing.assert_array_equal(np.asarray(labels["0"]), expected)
    assert len(np.unique(expected)) > 2  # real anatomy, not an empty mask
    nodes = list(Reader(parse_url(str(ct_store)))())
    label = next(n for n in nodes if n.load(LabelSpec) is not None)
    image = next(n for n in nodes if n.data and n.load(LabelSpec) is None)
    assert label.metadata["coordinateTransformations"][0] == image.metadata["coordinateTransformations"][0]
    assert [np.asarray(d).shape for d in label.data] == [(30, 101, 122), (30, 51, 61)]
    assert result.report_json.exists() and result.report["input"]["level"] == 0
