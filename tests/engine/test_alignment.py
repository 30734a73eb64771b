"""Window alignment: a scan stored in another axis order, direction or voxel size is shown to the network
as it was trained (card ``orientation`` / ``spacing``), and the mask still lands on the scan's own grid.

The end-to-end tests use the real sample CT and the shipped ct-organs model: the same anatomy stored as
LPS, as S-L-P (a sagittal-first layout) and at 1.5 mm must segment as well as the RAS 3 mm original.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from scipy import ndimage

from pipeline.config.cards import load_card
from pipeline.engine.alignment import alignment_for, voxel_sizes, window_alignment
from pipeline.errors import CardError
from pipeline.evaluate.metrics import confusion, scores
from tests.factories import oblique_affine

MODELS = Path(__file__).resolve().parents[2] / "models"
ALL_CODES = ["".join(c) for axes in itertools.permutations(("LR", "PA", "IS"))
             for c in itertools.product(*axes)]  # the 48 axis-code orientations


def _affine_for(codes: str, zooms: tuple[float, float, float] = (3.0, 3.0, 3.0),
                shape: tuple[int, int, int] = (5, 6, 7)) -> np.ndarray:
    """An affine whose voxel axes run along ``codes`` (what a scan stored that way has)."""
    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(codes))
    return np.diag([*zooms, 1.0]) @ inv_ornt_aff(transform, shape)


@pytest.mark.parametrize("codes", ALL_CODES)
def test_windows_reach_the_network_as_nibabel_would_reorient_them(codes: str) -> None:
    affine = _affine_for(codes)
    assert nib.aff2axcodes(affine) == tuple(codes)
    alignment = window_alignment(affine, (4, 6, 8), orientation="RAS")
    window = np.random.default_rng(0).normal(size=alignment.roi_scan).astype(np.float32)
    want = apply_orientation(window, ornt_transform(io_orientation(affine), axcodes2ornt("RAS")))
    shown = alignment.to_model(torch.from_numpy(window)[None, None])
    assert shown.shape[2:] == (4, 6, 8)
    np.testing.assert_array_equal(shown[0, 0].numpy(), want)
    np.testing.assert_array_equal(alignment.to_scan(shown)[0, 0].numpy(), window)
    assert alignment.is_identity == (codes == "RAS")


def test_window_size_follows_the_voxel_size() -> None:
    card_roi = (64, 64, 32)
    fine = window_alignment(np.diag([1.5, 1.5, 1.5, 1.0]), card_roi, spacing=(3.0, 3.0, 3.0))
    assert fine.roi_scan == (128, 128, 64) and fine.resamples
    close = window_alignment(np.diag([2.9, 3.1, 3.0, 1.0]), card_roi, spacing=(3.0, 3.0, 3.0))
    assert close.roi_scan == card_roi and not close.resamples  # within 5%: used as is
    # spacing is per *model* axis: an S-L-P scan with 1 mm slices along its first axis
    slp = window_alignment(_affine_for("SLP", zooms=(0.75, 0.75, 1.0)), card_roi, orientation="RAS",
                           spacing=(3.0, 3.0, 3.0))
    assert slp.roi_scan == (96, 256, 256)
    # oblique (rotated 17 degrees, tilted, LPS): voxel sizes from the affine's columns, the closest axes
    oblique = oblique_affine(zooms=(1.5, 1.5, 3.0), lps=True)
    np.testing.assert_allclose(voxel_sizes(oblique), (1.5, 1.5, 3.0), rtol=1e-6)
    tilted = window_alignment(oblique, card_roi, orientation="RAS", spacing=(3.0, 3.0, 3.0))
    assert tilted.perm == (0, 1, 2) and tilted.flip == (True, True, False) and tilted.roi_scan == (128, 128, 32)


def test_resampled_windows_come_back_on_the_scan_grid() -> None:
    alignment = window_alignment(np.diag([1.5, 1.5, 6.0, 1.0]), (8, 8, 8), spacing=(3.0, 3.0, 3.0))
    assert alignment.roi_scan == (16, 16, 4)
    ramp = torch.linspace(0, 1, 16)[:, None, None].expand(16, 16, 4)[None, None].contiguous()
    shown = alignment.to_model(ramp)
    assert shown.shape == (1, 1, 8, 8, 8)
    back = alignment.to_scan(shown)
    assert back.shape == ramp.shape
    assert float((back - ramp).abs().max()) < 0.05  # a smooth field survives the round trip


def test_cards_check_orientation_and_spacing(tmp_path: Path) -> None:
    text = (MODELS / "ct-organs.yaml").read_text()
    for bad, why in (("orientation: RRS", "one of each"), ("orientation: RA", "one of each")):
        path = tmp_path / "bad.yaml"
        path.write_text(text.replace("orientation: RAS", bad))
        with pytest.raises(CardError, match=why):
            load_card(path)
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace("spacing:\n- 3.0\n- 3.0\n- 3.0\n", "spacing:\n- 3.0\n- -1.0\n- 3.0\n"))
    with pytest.raises(CardError, match="3 positive sizes"):
        load_card(path)
    buildings = (MODELS / "buildings.yaml").read_text().replace("roi_size:", "orientation: RAS\nroi_size:", 1)
    path.write_text(buildings)
    with pytest.raises(CardError, match="orientation is for 3D cards"):
        load_card(path)
    assert load_card(MODELS / "buildings.yaml").spacing == (0.5, 0.5)  # metres per pixel


def test_scans_already_aligned_take_the_unchanged_path() -> None:
    card = load_card(MODELS / "ct-organs.yaml")
    scan = nib.load(MODELS.parent / "data" / "medical" / "example_ct_sm.nii.gz")
    attrs = {"kind": "volume", "affine": scan.affine.ravel().tolist()}
    assert alignment_for(attrs, card) is None  # RAS at 3 mm: bit-identical to no alignment
    from pipeline.io.geotiff import open_raster

    scene = open_raster(MODELS.parent / "data" / "geo" / "sample_geotiff.tif").geometry.to_attrs()
    assert alignment_for(scene, load_card(MODELS / "buildings.yaml")) is None  # 0.5 m: as trained


# ------------------------------------------------------------------ end to end, real CT and model


def _variant(directory: Path, name: str, data: np.ndarray, ref: np.ndarray, affine: np.ndarray) -> tuple[Path, Path]:
    scan, reference = directory / f"{name}.nii.gz", directory / f"{name}_ref.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), scan)
    nib.save(nib.Nifti1Image(ref.astype(np.uint8), affine), reference)
    return scan, reference


def _without_spacing(model: str, directory: Path) -> Path:
    """A copy of a shipped card (and its weights) without ``spacing``: the control that shows what it buys."""
    import shutil

    import yaml

    card = yaml.safe_load((MODELS / f"{model}.yaml").read_text())
    del card["spacing"]
    shutil.copy(MODELS / card["weights"], directory / card["weights"])
    path = directory / "plain.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


@pytest.fixture(scope="module")
def ct(data_dir: Path) -> dict[str, Any]:
    scan = nib.load(data_dir / "medical" / "example_ct_sm.nii.gz")
    ref = nib.load(data_dir / "medical" / "example_ct_sm_ct-organs_ref.nii.gz")
    return {"data": np.asarray(scan.dataobj), "ref": np.asarray(ref.dataobj), "affine": scan.affine}


LABELS = ("background", "liver", "spleen", "kidneys", "lungs", "bone")


def _dice(result: Any, reference: np.ndarray) -> dict[str, float]:
    mask = np.asarray(nib.load(result.mask).dataobj)
    return {LABELS[s.label]: s.dice for s in scores(confusion(reference, mask, len(LABELS))).labels}


@pytest.mark.slow
@pytest.mark.parametrize("codes", ["LPS", "SLP"])
def test_a_reoriented_ct_segments_like_the_original(tmp_path: Path, ct: dict[str, Any], codes: str,
                                                    client2: Any) -> None:
    from pipeline.segment import segment_volume

    original = segment_volume(_variant(tmp_path, "ras", ct["data"], ct["ref"], ct["affine"])[0], model="ct-organs",
                              output=tmp_path / "ras_seg.nii.gz", client=client2, html=False)
    to_codes = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(codes))
    affine = ct["affine"] @ inv_ornt_aff(to_codes, ct["data"].shape)
    data, ref = (apply_orientation(a, to_codes) for a in (ct["data"], ct["ref"]))
    scan, _ = _variant(tmp_path, codes, data, ref, affine)
    result = segment_volume(scan, model="ct-organs", output=tmp_path / f"{codes}_seg.nii.gz", client=client2,
                            html=False)
    mask = nib.load(result.mask)
    np.testing.assert_array_equal(mask.affine, nib.load(scan).affine)  # the scan's own grid, not RAS
    back = apply_orientation(np.asarray(mask.dataobj), ornt_transform(axcodes2ornt(codes), axcodes2ornt("RAS")))
    same = np.asarray(nib.load(original.mask).dataobj)
    assert (back == same).mean() > 0.99  # only where window positions differ at the borders
    want, got = _dice(original, ct["ref"]), _dice(result, ref)
    for label in ("liver", "spleen", "kidneys", "bone"):
        assert got[label] > want[label] - 0.03, (label, got, want)


@pytest.mark.slow
def test_a_finer_ct_is_windowed_at_the_models_voxel_size(tmp_path: Path, ct: dict[str, Any], client2: Any) -> None:
    """The sample CT resampled to 1.5 mm: with the card's spacing the model keeps its Dice; the same
    weights without it (windows of 1.5 mm voxels) lose most of it, so the check can fail."""
    from pipeline.segment import segment_volume

    data = ndimage.zoom(ct["data"].astype(np.float32), 2, order=1).round().astype(np.int16)
    ref = ndimage.zoom(ct["ref"], 2, order=0)
    affine = ct["affine"].copy()
    affine[:3, :3] /= 2
    scan, _ = _variant(tmp_path, "fine", data, ref, affine)
    aligned = _dice(segment_volume(scan, model="ct-organs", output=tmp_path / "aligned.nii.gz", client=client2,
                                   html=False), ref)
    plain_card = _without_spacing("ct-organs", tmp_path)
    plain = _dice(segment_volume(scan, model=plain_card, output=tmp_path / "plain.nii.gz",
                                 client=client2, html=False), ref)
    assert aligned["liver"] > 0.85 and aligned["bone"] > 0.7, aligned
    assert plain["liver"] < aligned["liver"] - 0.2, (plain, aligned)


def test_training_pairs_are_turned_to_the_cards_orientation(tmp_path: Path) -> None:
    from pipeline.config.training_data import TrainingPair
    from pipeline.train.datasets import _read_medical

    card = load_card(MODELS / "ct-organs.yaml")
    rng = np.random.default_rng(1)
    data = rng.integers(-1000, 1000, (10, 12, 8)).astype(np.int16)
    labels = rng.integers(0, 6, data.shape).astype(np.uint8)
    ras = _variant(tmp_path, "ras", data, labels, np.diag([3.0, 3.0, 3.0, 1.0]))
    to_ipl = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt("IPL"))
    other = _variant(tmp_path, "ipl", apply_orientation(data, to_ipl), apply_orientation(labels, to_ipl),
                     np.diag([3.0, 3.0, 3.0, 1.0]) @ inv_ornt_aff(to_ipl, data.shape))
    want = _read_medical(TrainingPair(image=ras[0], labels=ras[1]), card)
    got = _read_medical(TrainingPair(image=other[0], labels=other[1]), card)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)
    fine = _variant(tmp_path, "fine", data, labels, np.diag([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(Exception, match="resample the pair"):
        _read_medical(TrainingPair(image=fine[0], labels=fine[1]), card)


# ------------------------------------------------------------------ rasters: ground sampling distance


def _resampled_scene(source: Path, target: Path, scale: float, crs: str | None = None) -> Path:
    """The scene at ``scale`` x its pixel count (average when shrinking), optionally warped to ``crs``."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.warp import calculate_default_transform, reproject

    with rasterio.open(source) as src:
        profile = src.profile.copy()
        if crs is None:
            height, width = round(src.height * scale), round(src.width * scale)
            data = src.read(out_shape=(src.count, height, width),
                            resampling=Resampling.average if scale < 1 else Resampling.bilinear)
            profile.update(height=height, width=width,
                           transform=src.transform * src.transform.scale(src.width / width, src.height / height))
            with rasterio.open(target, "w", **profile) as out:
                out.write(data)
            return target
        transform, width, height = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        profile.update(crs=crs, transform=transform, width=width, height=height)
        with rasterio.open(target, "w", **profile) as out:
            reproject(rasterio.band(src, 1), rasterio.band(out, 1), resampling=Resampling.bilinear)
    return target


def test_ground_pixel_size_in_metres_for_any_crs(data_dir: Path, tmp_path: Path) -> None:
    from pipeline.geometry import pixel_size_m
    from pipeline.io.geotiff import open_raster

    geo = data_dir / "geo"
    np.testing.assert_allclose(pixel_size_m(open_raster(geo / "sample_geotiff.tif").geometry), (0.5, 0.5), rtol=0.01)
    # Web Mercator's "metres" are stretched by 1/cos(latitude) (1.2x in Atlanta): the ground size is not
    mercator = _resampled_scene(geo / "sample_geotiff.tif", tmp_path / "mercator.tif", 1.0, crs="EPSG:3857")
    assert open_raster(mercator).geometry.transform[0] > 0.55
    np.testing.assert_allclose(pixel_size_m(open_raster(mercator).geometry), (0.5, 0.5), rtol=0.01)
    road = open_raster(geo / "road_mask_input.tif").geometry  # EPSG:4326, 2.7e-6 degrees
    latitude = road.transform[5] + road.transform[4] * road.height / 2
    want = (2.7e-6 * 111_195, 2.7e-6 * 111_195 * np.cos(np.radians(latitude)))
    np.testing.assert_allclose(pixel_size_m(road), want, rtol=0.01)
    ungeoreferenced = open_raster(geo / "sample_fp_mask.tif").geometry
    assert ungeoreferenced.crs is None and pixel_size_m(ungeoreferenced) is None


def test_a_scene_far_off_the_models_scale_is_refused(data_dir: Path, tmp_path: Path) -> None:
    """The 0.5 m buildings model on 30 m-class Landsat: one line naming the file, nothing written."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "mask.tif"
    result = CliRunner().invoke(app, ["segment-raster", str(data_dir / "geo" / "RGB.byte.tif"), "-m", "buildings",
                                      "-o", str(out)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {data_dir / 'geo' / 'RGB.byte.tif'}: grid spacing 30")
    assert "too far off the scale" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_coarser_scene_is_windowed_at_the_models_ground_size(data_dir: Path, tmp_path: Path,
                                                              client2: Any) -> None:
    """The SpaceNet tile at 0.83 m instead of 0.5 m: with the card's spacing the buildings model keeps most
    of its Dice against the human footprints; the same weights on raw 0.83 m pixels lose much of it."""
    from pipeline.segment.raster import segment_raster

    scene = _resampled_scene(data_dir / "geo" / "sample_geotiff.tif", tmp_path / "coarse.tif", 0.6)
    footprints = data_dir / "geo" / "geotiff_labels.geojson"

    def building_dice(model: Any, name: str) -> float:
        result = segment_raster(scene, model=model, output=tmp_path / f"{name}.tif", reference=footprints,
                                client=client2, html=False)
        return next(row["dice"] for row in result.report["labels"] if row["name"] == "building")

    plain_card = _without_spacing("buildings", tmp_path)
    aligned, plain = building_dice("buildings", "aligned"), building_dice(plain_card, "plain")
    assert aligned > 0.65, aligned
    assert plain < aligned - 0.15, (plain, aligned)
