"""Unit tests for issue 15: silent corruption (gzip CRC, float32 overflow) and unbounded inputs (YAML
expansion and depth, roi sizes, label values, files that are not regular files), in process and fast.
The CLI side of each is a case of the corpus (``make_corpus.py``)."""

from __future__ import annotations

import gzip
import logging
import os
import tracemalloc
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import typer
import yaml

from pipeline.cli.running import fail
from pipeline.config.cards import load_card
from pipeline.config.yamlfile import MAX_DEPTH, MAX_NODES, bounded_load, read_mapping
from pipeline.errors import CardError, InputError, ModelError
from pipeline.evaluate.metrics import PairCounts, confusion, pair_counts, scores
from pipeline.io.geotiff import read_bands
from pipeline.io.nifti import iter_slabs, open_scan
from pipeline.model.models import load_weights
from pipeline.report.compare import evaluate_report
from tests.badinputs.make_corpus import _nifti, _raster, _volume

ROOT = Path(__file__).resolve().parents[2]
CT = ROOT / "data" / "medical" / "example_ct_sm.nii.gz"


def _slabs(path: Path, thickness: int) -> np.ndarray:
    return np.concatenate([slab for _, slab in iter_slabs(open_scan(path), thickness)], axis=2)


# ------------------------------------------------------------------------------------------ NIfTI stream

def _scaled_uint16(path: Path) -> Path:
    image = nib.Nifti1Image(np.random.default_rng(0).integers(0, 3000, (20, 17, 13)).astype(np.uint16), np.eye(4))
    image.header.set_slope_inter(0.37, -1024.0)
    nib.save(image, path)
    return path


def _big_endian_float64(path: Path) -> Path:
    nib.save(nib.Nifti1Image(np.random.default_rng(1).normal(size=(9, 8, 7)).astype(">f8"), np.eye(4)), path)
    return path


@pytest.mark.parametrize("make", [lambda d: CT, lambda d: _scaled_uint16(d / "s.nii.gz"),
                                  lambda d: _scaled_uint16(d / "s.nii"), lambda d: _big_endian_float64(d / "b.nii.gz"),
                                  lambda d: _nifti(d / "t.nii", _volume((9, 8, 7, 1), "int8"))],
                         ids=["sample-ct", "uint16-scaled-gz", "uint16-scaled-nii", "big-endian-f8", "trailing-1"])
@pytest.mark.parametrize("thickness", [1, 4, 16])
def test_one_stream_gives_nibabels_values(tmp_path: Path, make: object, thickness: int) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    scan = open_scan(path)
    want = np.asanyarray(nib.load(path).dataobj).reshape(scan.geometry.shape).astype(scan.dtype)
    got = _slabs(path, thickness)
    assert got.dtype == scan.dtype
    np.testing.assert_array_equal(got, want)


def _gzipped(tmp_path: Path, level: int = 1) -> bytearray:
    plain = _nifti(tmp_path / "plain.nii", _volume((12, 10, 8))).read_bytes()
    return bytearray(gzip.compress(plain, compresslevel=level, mtime=0))


@pytest.mark.parametrize(("where", "what"), [(-8, "CRC-32 in the trailer"), (-4, "ISIZE in the trailer"),
                                             (None, "a byte of a stored deflate block")])
def test_a_gzip_stream_that_does_not_match_its_trailer_is_refused(tmp_path: Path, where: int | None,
                                                                   what: str) -> None:
    raw = _gzipped(tmp_path, level=0)
    raw[len(raw) // 2 if where is None else where] ^= 0x01
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(bytes(raw))
    scan = open_scan(path)  # the header reads: the flaw shows only at the end of the stream
    with pytest.raises(InputError, match="truncated or corrupt"):
        list(iter_slabs(scan, 3))


def test_an_intact_gzip_stream_passes(tmp_path: Path) -> None:
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(bytes(_gzipped(tmp_path)))
    assert _slabs(path, 3).shape == (12, 10, 8)


def test_evaluate_checks_the_prediction_stream_too(tmp_path: Path) -> None:
    labels = np.random.default_rng(2).integers(0, 3, (12, 10, 8)).astype(np.uint8)
    plain = _nifti(tmp_path / "pred.nii", labels).read_bytes()
    raw = bytearray(gzip.compress(plain, compresslevel=0, mtime=0))
    raw[-8] ^= 0x01
    (tmp_path / "pred.nii.gz").write_bytes(bytes(raw))
    ref = _nifti(tmp_path / "ref.nii.gz", labels)
    with pytest.raises(InputError, match=r"pred\.nii\.gz: .*CRC check failed"):
        evaluate_report(tmp_path / "pred.nii.gz", ref)


@pytest.mark.parametrize(("slope", "data", "message"), [
    (1e38, _volume((8, 8, 8)), "beyond float32 range once scaled"),
    (1.0, np.where(np.arange(512).reshape(8, 8, 8) == 7, 1e300, 1.0), "1 voxels beyond float32 range"),
])
def test_values_beyond_float32_are_refused_quietly(tmp_path: Path, slope: float, data: np.ndarray,
                                                   message: str) -> None:
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.set_slope_inter(slope, 0.0)
    nib.save(image, tmp_path / "scan.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy's overflow RuntimeWarning would leak to the terminal
        with pytest.raises(InputError, match=message):
            list(iter_slabs(open_scan(tmp_path / "scan.nii.gz"), 4))


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_nibabel_messages_are_not_printed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scan = _nifti(tmp_path / "scan.nii", _volume())
    raw = bytearray(scan.read_bytes())
    raw[70:72] = np.array([999], "<i2").tobytes()  # datatype code
    scan.write_bytes(bytes(raw))
    nib_logger = logging.getLogger("nibabel.global")
    recorder = _Recorder()  # stands for nibabel's own stderr handler
    nib_logger.addHandler(recorder)
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(InputError, match="data code 999 not recognized"):
            open_scan(scan)
    finally:
        nib_logger.removeHandler(recorder)
    # the message is in the error, printed once by the CLI: neither nibabel's handler nor ours printed it
    assert recorder.messages == []
    assert [r for r in caplog.records if r.name.startswith("nibabel")] == []


# ------------------------------------------------------------------------------------------ rasters

def test_a_float64_pixel_beyond_float32_is_refused(tmp_path: Path) -> None:
    data = np.full((1, 64, 64), 3.0)
    data[0, 10, 20] = 1e300
    scene = _raster(tmp_path / "scene.tif", data)
    with pytest.raises(InputError, match="1 valid pixel values beyond float32 range"):
        read_bands(scene, (1,), "float64", slice(0, 64), slice(0, 64))


def test_a_float64_nodata_value_beyond_float32_is_fine(tmp_path: Path) -> None:
    import rasterio

    data = np.full((1, 64, 64), 3.0)
    data[0, 10, 20] = -np.finfo(np.float64).max  # GDAL's usual float64 nodata
    scene = _raster(tmp_path / "scene.tif", data)
    with rasterio.open(scene, "r+") as dst:
        dst.nodata = -np.finfo(np.float64).max
    _, valid = read_bands(scene, (1,), "float64", slice(0, 64), slice(0, 64))
    assert not valid[10, 20] and valid.sum() == 64 * 64 - 1


# ------------------------------------------------------------------------------------------ YAML

def _bomb(levels: int) -> str:
    lines = ["l0: &l0 [" + ", ".join(["x"] * 10) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_aliases_are_bounded_by_what_they_expand_to() -> None:
    assert len(bounded_load(_bomb(4))["l3"]) == 10  # 11,111 expanded nodes: fine
    with pytest.raises(yaml.YAMLError, match=f"expands to .* nodes through its aliases \\(at most {MAX_NODES}"):
        bounded_load(_bomb(6))  # 1,111,111 expanded nodes from 400 bytes


def test_nesting_is_bounded() -> None:
    assert bounded_load("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(yaml.YAMLError, match=f"nested more than {MAX_DEPTH} levels"):
        bounded_load("[" * 20000 + "]" * 20000)


def test_aliases_cannot_nest_past_the_bound() -> None:
    text = "a0: &a0 " + "[" * 40 + "]" * 40 + "\n" + "a1: &a1 " + "[" * 40 + "*a0" + "]" * 40 + "\n"
    with pytest.raises(yaml.YAMLError, match="levels of nesting"):
        bounded_load(text)


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(yaml.YAMLError, match="refers to a node that contains it"):
        bounded_load("&a [*a]")


@pytest.mark.parametrize("path", sorted((ROOT / "models").glob("*.yaml")) + [ROOT / "data_catalog.yaml"],
                         ids=lambda p: p.name)
def test_shipped_yaml_loads_as_safe_load_does(path: Path) -> None:
    text = path.read_text()
    assert bounded_load(text) == yaml.safe_load(text)


def test_a_directory_is_not_a_card(tmp_path: Path) -> None:
    (tmp_path / "card.yaml").mkdir()
    with pytest.raises(CardError, match=r"card\.yaml: not a regular file \(a directory\)"):
        read_mapping(tmp_path / "card.yaml", "model card", CardError)


# ------------------------------------------------------------------------------------------ cards, weights

def _card_with(tmp_path: Path, **changes: object) -> Path:
    card = yaml.safe_load((ROOT / "models" / "ct-organs.yaml").read_text())
    card.update(changes)
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def test_a_roi_beyond_the_memory_ceiling_is_a_card_error(tmp_path: Path) -> None:
    with pytest.raises(CardError, match="GiB per batch of windows"):
        load_card(_card_with(tmp_path, roi_size=[4096, 4096, 4096]))
    assert load_card(_card_with(tmp_path, roi_size=[256, 256, 128])).roi_size == (256, 256, 128)


def test_colours_are_0_to_255(tmp_path: Path) -> None:
    labels = yaml.safe_load((ROOT / "models" / "ct-organs.yaml").read_text())["labels"]
    labels["1"]["color"] = [999, 0, 0]
    with pytest.raises(CardError, match="labels.1.color.0"):
        load_card(_card_with(tmp_path, labels=labels))


@pytest.mark.parametrize("content", [b"these bytes are not a torch file\n" * 8, b"\x80\x02K\x01."],
                         ids=["text", "a-pickled-int"])
def test_bytes_that_are_not_torch_weights_are_a_model_error(tmp_path: Path, content: bytes) -> None:
    from pipeline.io.hashing import sha256_file

    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="refused to load weights"):
        load_weights(path, sha256_file(path))


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_weights_that_are_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "w.pt"
    path.mkdir() if kind == "directory" else os.mkfifo(path)
    with pytest.raises(ModelError, match=r"not a regular file \(a (directory|FIFO)\)"):
        load_weights(path, "0" * 64)


def test_a_missing_scan_is_still_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="file not found"):
        open_scan(tmp_path / "nothing.nii.gz")


# ------------------------------------------------------------------------------------------ metrics

def test_sparse_counts_equal_the_dense_matrix() -> None:
    rng = np.random.default_rng(3)
    ref, pred = rng.integers(0, 6, size=(2, 30, 20, 10))
    whole = confusion(ref, pred, 6)
    streamed = PairCounts.empty()
    for k in range(0, 10, 3):
        streamed = streamed + pair_counts(ref[..., k:k + 3], pred[..., k:k + 3])
    np.testing.assert_array_equal(streamed.dense(6), whole)
    big = ref.copy()
    big[0, 0, 0] = 5000  # past the bincount bound: counted with np.unique
    sparse = pair_counts(big, pred)
    assert sparse.labels.tolist() == [0, 1, 2, 3, 4, 5, 5000]
    expected = whole.copy()
    expected[ref[0, 0, 0], pred[0, 0, 0]] -= 1
    np.testing.assert_array_equal(sparse.dense(5001)[:6, :6], expected)
    assert sparse.dense(5001)[5000, pred[0, 0, 0]] == 1
    assert [s.dice for s in scores(whole).labels] == [s.dice for s in scores(streamed).labels]


def test_evaluate_counts_only_the_pairs_that_occur(tmp_path: Path) -> None:
    labels = np.zeros((24, 24, 16), np.uint32)
    labels[1:4, 2:5, 3:6] = 10_000
    labels[5, 5, 5] = 4_000_000_000  # old: a (4e9)^2 matrix; OverflowError
    pred = _nifti(tmp_path / "pred.nii.gz", labels)
    ref = _nifti(tmp_path / "ref.nii.gz", labels)
    tracemalloc.start()
    try:
        report = evaluate_report(pred, ref)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rows = {row["label"]: row for row in report["labels"]}
    assert sorted(rows) == [0, 10_000, 4_000_000_000]
    assert rows[10_000]["voxels"] == 27 and rows[10_000]["dice"] == 1.0
    assert rows[4_000_000_000]["voxels"] == 1 and rows[4_000_000_000]["dice"] == 1.0
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # a 10001^2 matrix alone is 763 MiB


# ------------------------------------------------------------------------------------------ the CLI line

def test_control_characters_in_a_message_stay_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit):
        fail("x\nerror: fake.nii.gz: file not found\x1b[2K")
    err = capsys.readouterr().err
    assert err == "error: x\\nerror: fake.nii.gz: file not found\\x1b[2K\n"


def test_a_yaml_bundle_config_is_bounded_too(tmp_path: Path) -> None:
    from pipeline.model.models import load_model

    (tmp_path / "configs").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "configs" / "inference.yaml").write_text(_bomb(6) + "network_def: {_target_: monai.networks.nets.UNet}\n")
    (tmp_path / "models" / "model.pt").write_bytes(b"")
    with pytest.raises(ModelError, match=r"inference\.yaml: not a valid YAML bundle config \(expands to"):
        load_model(tmp_path)
