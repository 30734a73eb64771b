"""Generate the bad-input corpus: small broken NIfTI scans, GeoTIFFs, model cards, weights and catalogs.

Every case gets its own directory under ``dest`` holding its inputs (a few KB each; nothing binary is
committed) and says how to run it: the ``pipeline`` CLI arguments, the exit code and a substring of the
one line the CLI must print. :mod:`tests.badinputs.test_corpus` runs each in a subprocess and checks that
nothing is written and no input changes; ``--table`` runs them all and rewrites the table in README.md
from what the CLI really printed.

    python -m tests.badinputs.make_corpus DEST            # write the corpus
    python -m tests.badinputs.make_corpus --table         # run it (in a temp dir), update README.md
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # run as a script: make ``tests`` importable
    sys.path.insert(0, str(ROOT))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

#: A file a malicious payload would create; its absence proves the payload never ran.
MARKER = "PWNED"
README = Path(__file__).with_name("README.md")
TABLE_START, TABLE_END = "<!-- table:start -->", "<!-- table:end -->"


@dataclass(frozen=True)
class Case:
    """One bad input and what the CLI must do with it."""

    name: str
    area: str  #: nifti, geotiff, card, weights, catalog, output
    wrong: str  #: what is wrong, in words (README table)
    argv: tuple[str, ...]  #: arguments after ``pipeline``
    message: str  #: substring of the one line the CLI must print
    names: str  #: the file (or name) that line must mention
    exit_code: int = 1
    marker: bool = False  #: a payload in the input would create ``<case dir>/PWNED``
    root_ignores: bool = False  #: meaningless as root (permission bits), skipped there


@dataclass
class Outcome:
    """What one CLI run did."""

    exit_code: int
    stdout: str
    stderr: str
    seconds: float
    lines: list[str] = field(default_factory=list)  #: non-blank stderr lines


# --------------------------------------------------------------------------------------------- builders

def _volume(shape: tuple[int, ...] = (24, 24, 16), dtype: str = "int16", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, size=shape).astype(dtype)


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None, *, version: int = 1,
           qform: np.ndarray | None = None, qform_code: int = 1, sform_code: int = 1) -> Path:
    cls = nib.Nifti2Image if version == 2 else nib.Nifti1Image
    affine = np.diag([1.5, 1.5, 3.0, 1.0]) if affine is None else affine
    image = cls(data, affine)
    image.header.set_sform(affine, code=sform_code)
    image.header.set_qform(affine if qform is None else qform, code=qform_code)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)
    return path


def _patch_header(path: Path, offset: int, values: bytes) -> Path:
    """Overwrite raw header bytes of an uncompressed .nii (dims, magic...)."""
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(values)] = values
    path.write_bytes(bytes(raw))
    return path


def _card(directory: Path, name: str, **kwargs: object) -> Path:
    from tests.factories import make_card

    return make_card(directory, name=name, **kwargs)


def _copy_card(card: Path, directory: Path) -> Path:
    """Copy a card and its weights into ``directory``."""
    data = yaml.safe_load(card.read_text())
    shutil.copy(card.parent / data["weights"], directory / data["weights"])
    return Path(shutil.copy(card, directory / card.name))


def _raster(path: Path, data: np.ndarray, *, crs: str = "EPSG:32616", tiled: bool = True,
            compress: str | None = "deflate", origin: tuple[float, float] = (500000.0, 4000000.0)) -> Path:
    import rasterio
    from rasterio.transform import Affine

    profile = {"driver": "GTiff", "width": data.shape[-1], "height": data.shape[-2], "count": data.shape[0],
               "dtype": data.dtype.name, "crs": crs, "transform": Affine(0.5, 0.0, origin[0], 0.0, -0.5, origin[1])}
    if tiled:
        profile.update(tiled=True, blockxsize=64, blockysize=64)
    if compress:
        profile["compress"] = compress
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _scene(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=(1, 192, 192)).astype("uint8")


def _corrupt_tile(path: Path, row: int, col: int) -> Path:
    """Overwrite the middle of one compressed tile with garbage (the file stays a valid TIFF)."""
    import rasterio

    with rasterio.open(path) as src:
        offset = int(src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
        size = int(src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1))
    raw = bytearray(path.read_bytes())
    raw[offset + 2 : offset + size - 2] = bytes(range(256)) * ((size - 4) // 256) + bytes((size - 4) % 256)
    path.write_bytes(bytes(raw))
    return path


def _tiff_tag(path: Path, tag: int, value: int) -> Path:
    """Set a SHORT tag of the first IFD of a little-endian classic TIFF (e.g. SamplesPerPixel=0)."""
    raw = bytearray(path.read_bytes())
    assert raw[:4] == b"II*\x00", "classic little-endian TIFF expected"
    ifd = struct.unpack_from("<I", raw, 4)[0]
    for i in range(struct.unpack_from("<H", raw, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", raw, entry)[0] == tag:
            struct.pack_into("<H", raw, entry + 8, value)
            path.write_bytes(bytes(raw))
            return path
    raise AssertionError(f"tag {tag} not in {path}")


class _Payload:
    """Pickles as a call that creates the marker file: what a malicious 'weights' file carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return open, (str(self.marker), "w")


def _catalog(directory: Path, **overrides: object) -> Path:
    """A catalog over ``directory/scans`` (one small scan) writing to ``directory/out``."""
    scans = directory / "scans"
    scans.mkdir(exist_ok=True)
    _nifti(scans / "scan.nii.gz", _volume())
    source = {"name": "ct", "kind": "medical", "directory": "scans", "glob": "**/*.nii.gz", "model": "ct-organs"}
    source.update(overrides.pop("source", {}))  # type: ignore[arg-type]
    data = {"output_root": "out", "sources": [source], **overrides}
    (directory / "out").mkdir(exist_ok=True)
    path = directory / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------- the corpus

def make_corpus(dest: Path) -> list[Case]:
    """Write every case into ``dest/<case name>/`` and return the cases (argv with absolute paths)."""
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    models = dest / "_models"
    models.mkdir(exist_ok=True)
    card3d = _card(models, "tiny", roi_size=(16, 16, 16))
    card2d = _card(models, "tiny2d", spatial_dims=2, roi_size=(32, 32), n_labels=2,
                   preprocess={"kind": "window", "a_min": 0, "a_max": 255})
    cases: list[Case] = []

    def case(name: str) -> Path:
        directory = dest / name
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir()
        return directory

    def volume(name: str, wrong: str, scan: Path, message: str, *extra: str) -> None:
        cases.append(Case(name, "nifti", wrong, ("segment-volume", str(scan), "-m", str(card3d), "--workers", "1",
                                                 *extra), message, str(scan)))

    def raster(name: str, wrong: str, scene: Path, message: str, *extra: str, names: Path | None = None) -> None:
        cases.append(Case(name, "geotiff", wrong, ("segment-raster", str(scene), "-m", str(card2d), "--workers", "1",
                                                   *extra), message, str(names or scene)))

    def weights_case(name: str, wrong: str, scan: Path, card: Path, message: str, weights: Path, **extra: bool) -> None:
        cases.append(Case(name, "weights", wrong, ("segment-volume", str(scan), "-m", str(card), "--workers", "1"),
                          message, str(weights), **extra))

    # --- NIfTI
    d = case("nifti-truncated-gzip")
    raw = gzip.compress(_nifti(d / "full.nii", _volume((64, 64, 48))).read_bytes(), compresslevel=1)
    (d / "full.nii").unlink()
    (d / "cut.nii.gz").write_bytes(raw[: len(raw) * 6 // 10])
    volume(d.name, ".nii.gz cut at 60%: the header reads, the voxels end mid-stream", d / "cut.nii.gz",
           "truncated or corrupt")

    d = case("nifti-wrong-magic")
    scan = _patch_header(_nifti(d / "scan.nii", _volume()), 344, b"xyz\x00")
    volume(d.name, "NIfTI magic `n+1` replaced by `xyz`", scan, "not a readable NIfTI")

    d = case("nifti-not-gzip")
    (d / "scan.nii.gz").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    volume(d.name, "`.nii.gz` holding PNG bytes", d / "scan.nii.gz", "not a readable NIfTI")

    d = case("nifti-4d")
    volume(d.name, "4D image (8, 8, 8, 3)", _nifti(d / "scan.nii.gz", _volume((8, 8, 8, 3))), "image is 4D")

    d = case("nifti-2d")
    volume(d.name, "2D image (8, 8)", _nifti(d / "scan.nii.gz", _volume((8, 8))), "image is 2D")

    d = case("nifti-huge-dims")
    scan = _nifti(d / "scan.nii", _volume((2, 2, 2)), version=2)
    volume(d.name, "NIfTI-2 header claiming 10^6 voxels per axis (file: 8 voxels)",
           _patch_header(scan, 16, np.array([3, 10**6, 10**6, 10**6, 1, 1, 1, 1], "<i8").tobytes()),
           "refusing (corrupt header?)")

    d = case("nifti-dims-beyond-data")
    scan = _patch_header(_nifti(d / "scan.nii", _volume((4, 4, 4))), 40, np.array([3, 200, 200, 200], "<i2").tobytes())
    volume(d.name, "header claims 200^3 voxels, the file holds 4^3", scan, "file is truncated")

    d = case("nifti-zero-axis")
    scan = _patch_header(_nifti(d / "scan.nii", _volume((3, 3, 3))), 40, np.array([3, 3, 0, 3], "<i2").tobytes())
    volume(d.name, "one axis of size 0", scan, "empty axis")

    d = case("nifti-nan")
    data = _volume((16, 16, 16), "float32")
    data[3, 4, 5] = np.nan
    volume(d.name, "float32 scan with a NaN voxel", _nifti(d / "scan.nii.gz", data), "NaN/inf voxels")

    d = case("nifti-inf")
    data = _volume((16, 16, 16), "float32")
    data[1, 2, 15], data[0, 0, 0] = np.inf, -np.inf
    volume(d.name, "float32 scan with +inf and -inf voxels", _nifti(d / "scan.nii.gz", data), "NaN/inf voxels")

    d = case("nifti-singular-affine")
    scan = _nifti(d / "scan.nii", _volume(), qform_code=0)
    volume(d.name, "sform whose third row is zero (not invertible), no qform",
           _patch_header(scan, 312, np.zeros(4, "<f4").tobytes()), "affine is not invertible")

    d = case("nifti-nonfinite-affine")
    scan = _nifti(d / "scan.nii", _volume(), qform_code=0)
    volume(d.name, "sform with a NaN term, no qform",
           _patch_header(scan, 280, np.array([np.nan, 0, 0, 0], "<f4").tobytes()), "not invertible or not finite")

    d = case("nifti-qform-sform-disagree")
    shifted = np.diag([1.5, 1.5, 3.0, 1.0])
    shifted[:3, 3] = (40.0, 0.0, 0.0)
    labels = np.random.default_rng(1).integers(0, 3, size=(24, 24, 16)).astype(np.uint8)
    scan = _nifti(d / "pred.nii.gz", labels, qform=shifted)
    ref = _nifti(d / "ref.nii.gz", labels, qform_code=0)
    cases.append(Case(d.name, "nifti", "qform 40 mm away from the sform (both codes 1); accepted: sform wins, "
                      "warning", ("evaluate", str(scan), str(ref)), "qform and sform disagree", str(scan), exit_code=0))

    d = case("nifti-reference-grid")
    scan = _nifti(d / "pred.nii.gz", np.zeros((24, 24, 16), np.uint8))
    ref = _nifti(d / "ref.nii.gz", np.zeros((10, 10, 10), np.uint8))
    cases.append(Case(d.name, "nifti", "reference mask on another grid (10^3 vs 24x24x16)",
                      ("evaluate", str(scan), str(ref)), "differs from the scan", str(ref)))

    d = case("nifti-reference-affine")
    scan = _nifti(d / "pred.nii.gz", np.zeros((24, 24, 16), np.uint8))
    ref = _nifti(d / "ref.nii.gz", np.zeros((24, 24, 16), np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]))
    cases.append(Case(d.name, "nifti", "reference with the same shape but another affine (1 mm vs 1.5x1.5x3)",
                      ("evaluate", str(scan), str(ref)), "differs from the scan", str(ref)))

    d = case("nifti-gzip-crc")
    raw = bytearray(gzip.compress(_nifti(d / "full.nii", _volume()).read_bytes(), compresslevel=0, mtime=0))
    (d / "full.nii").unlink()
    raw[len(raw) // 2] ^= 0x01  # stored (level 0) deflate blocks: the body still inflates, to other voxels
    (d / "scan.nii.gz").write_bytes(bytes(raw))
    volume(d.name, "`.nii.gz` with one bit flipped in its compressed body (the CRC-32 in the trailer no longer "
           "matches)", d / "scan.nii.gz", "CRC check failed")

    d = case("nifti-slope-overflow")
    image = nib.Nifti1Image(_volume(), np.diag([1.5, 1.5, 3.0, 1.0]))
    image.header.set_slope_inter(1e38, 0.0)
    nib.save(image, d / "scan.nii.gz")
    volume(d.name, "int16 scan with `scl_slope` 1e38: scaled values overflow float32 to inf", d / "scan.nii.gz",
           "beyond float32 range once scaled")

    d = case("nifti-float64-overflow")
    data = _volume((16, 16, 16), "float64")
    data[2, 3, 4] = 1e300
    volume(d.name, "float64 scan with a voxel of 1e300 (inf in float32)", _nifti(d / "scan.nii.gz", data),
           "beyond float32 range")

    d = case("nifti-unknown-datatype")
    scan = _patch_header(_nifti(d / "scan.nii", _volume()), 70, np.array([999], "<i2").tobytes())
    volume(d.name, "datatype code 999 (nibabel logs it, then fails)", scan, "data code 999 not recognized")

    d = case("nifti-newline-name")
    scan = _nifti(d / "x\nerror: fake.nii.gz", _volume((8, 8, 8, 3)))
    volume(d.name, "file named `x\\nerror: fake.nii.gz` (4D): the name must not print a second `error:` line",
           scan, "image is 4D")
    cases[-1] = Case(**{**cases[-1].__dict__, "names": str(scan).replace("\n", "\\n")})

    d = case("nifti-is-directory")
    (d / "scan.nii.gz").mkdir()
    volume(d.name, "the scan path is a directory", d / "scan.nii.gz", "not a regular file (a directory)")

    d = case("nifti-fifo")
    os.mkfifo(d / "scan.nii.gz")
    volume(d.name, "the scan path is a FIFO (reading it would block)", d / "scan.nii.gz",
           "not a regular file (a FIFO)")

    d = case("nifti-label-beyond-2-32")
    labels = np.zeros((24, 24, 16), np.float32)
    labels[1, 2, 3] = 1e10
    scan = _nifti(d / "pred.nii.gz", labels)
    ref = _nifti(d / "ref.nii.gz", np.zeros((24, 24, 16), np.uint8))
    cases.append(Case(d.name, "nifti", "`evaluate` on a float mask holding label 1e10 (beyond uint32)",
                      ("evaluate", str(scan), str(ref)), "labels go up to 4294967295", str(scan)))

    # --- GeoTIFF
    d = case("geotiff-wrong-magic")
    (d / "scene.tif").write_bytes(b"MM\x00\x2b" + bytes(300))
    raster(d.name, "`.tif` with a broken TIFF header", d / "scene.tif", "not a readable raster")

    d = case("geotiff-zero-bands")
    scene = _tiff_tag(_raster(d / "scene.tif", _scene(), tiled=False, compress=None), 277, 0)
    raster(d.name, "GeoTIFF whose SamplesPerPixel is 0 (GDAL refuses to open it)", scene,
           'Bad value 0 for "SamplesPerPixel"')

    d = case("geotiff-complex-band")
    scene = _raster(d / "scene.tif", (_scene() * (1 + 1j)).astype("complex64"), tiled=False)
    raster(d.name, "complex64 band (SAR phase data)", scene, "band type complex64 is not a real number")

    d = case("geotiff-truncated")
    scene = _raster(d / "full.tif", _scene())
    (d / "scene.tif").write_bytes(scene.read_bytes()[: scene.stat().st_size * 6 // 10])
    scene.unlink()
    raster(d.name, "tiled GeoTIFF cut at 60%", d / "scene.tif", "truncated or corrupt")

    d = case("geotiff-broken-tile")
    scene = _corrupt_tile(_raster(d / "scene.tif", _scene()), 1, 1)
    raster(d.name, "tiled DEFLATE GeoTIFF, one middle tile's bytes overwritten (fails inside a Dask task)",
           scene, "cannot read rows")

    d = case("geotiff-reference-crs")
    scene = _raster(d / "scene.tif", _scene())
    ref = _raster(d / "ref.tif", np.zeros((1, 192, 192), np.uint8), crs="EPSG:32617")
    raster(d.name, "reference mask in another CRS (EPSG:32617 vs 32616)", scene, "CRS EPSG:32617 vs EPSG:32616",
           "-r", str(ref), names=ref)

    d = case("geotiff-reference-grid")
    scene = _raster(d / "scene.tif", _scene())
    ref = _raster(d / "ref.tif", np.zeros((1, 96, 192), np.uint8))
    raster(d.name, "reference mask of another size (192x96 vs 192x192)", scene, "size 192x96 vs 192x192",
           "-r", str(ref), names=ref)

    d = case("geotiff-float64-overflow")
    data = np.random.default_rng(0).uniform(0, 255, size=(1, 192, 192))
    data[0, 100, 50] = 1e300
    raster(d.name, "float64 scene with a valid pixel of 1e300 (inf in float32)", _raster(d / "scene.tif", data),
           "beyond float32 range")

    # --- weights and cards
    d = case("weights-pickle-code")
    import torch

    torch.save(_Payload(d / MARKER), d / "evil.pt")
    card = yaml.safe_load(card3d.read_text())
    card.update(weights="evil.pt", sha256=hashlib.sha256((d / "evil.pt").read_bytes()).hexdigest())
    (d / "evil.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    scan = _nifti(d / "scan.nii.gz", _volume())
    weights_case(d.name, "weights file is a pickle whose load would call `open(PWNED, 'w')` (sha256 matches the "
                 "card)", scan, d / "evil.yaml", "refused to load weights (not plain tensors", d / "evil.pt",
                 marker=True)

    d = case("weights-truncated")
    weights = d / "tiny.pt"
    weights.write_bytes((models / "tiny.pt").read_bytes()[:3000])
    card = yaml.safe_load(card3d.read_text())
    card["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (d / "tiny.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    scan = _nifti(d / "scan.nii.gz", _volume())
    weights_case(d.name, "weights file cut to 3000 bytes (sha256 matches the card)", scan, d / "tiny.yaml",
                 "refused to load weights", weights)

    d = case("weights-checksum")
    card_path = _copy_card(card3d, d)
    card = yaml.safe_load(card_path.read_text())
    card["sha256"] = "f" * 64
    card_path.write_text(yaml.safe_dump(card, sort_keys=False))
    scan = _nifti(d / "scan.nii.gz", _volume())
    weights_case(d.name, "card's sha256 does not match its weights", scan, card_path, "weights sha256 is",
                 d / "tiny.pt")

    d = case("weights-not-torch")
    weights = d / "tiny.pt"
    weights.write_bytes(b"these bytes are not a torch file\n" * 8)
    card = yaml.safe_load(card3d.read_text())
    card["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (d / "tiny.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    scan = _nifti(d / "scan.nii.gz", _volume())
    weights_case(d.name, "weights file of plain text (sha256 matches the card; torch's unpickler raised "
                 "IndexError)", scan, d / "tiny.yaml", "not a torch file", weights)

    d = case("weights-dev-zero")
    (d / "tiny.pt").symlink_to("/dev/zero")
    card = yaml.safe_load(card3d.read_text())
    (d / "tiny.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    scan = _nifti(d / "scan.nii.gz", _volume())
    weights_case(d.name, "weights file is a link to `/dev/zero` (hashing it would never end)", scan, d / "tiny.yaml",
                 "not a regular file (a character device)", d / "tiny.pt")

    d = case("card-unknown-architecture")
    card = yaml.safe_load(card3d.read_text())
    card["architecture"] = "UNett"
    (d / "card.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    cases.append(Case(d.name, "card", "card names architecture `UNett`", ("models", "show", str(d / "card.yaml")),
                      "architecture: unknown architecture 'UNett'", str(d / "card.yaml")))

    d = case("card-python-tag")
    text = card3d.read_text() + f"description: !!python/object/apply:os.system ['touch {d / MARKER}']\n"
    (d / "card.yaml").write_text(text)
    cases.append(Case(d.name, "card", "card with a `!!python/object/apply:os.system` tag",
                      ("models", "show", str(d / "card.yaml")), "not a valid YAML model card", str(d / "card.yaml"),
                      marker=True))

    d = case("card-anchor-bomb")
    bomb = ["  bomb:", "    l0: &l0 [" + ", ".join(["x"] * 10) + "]"]
    bomb += [f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 6)]
    text = card3d.read_text().replace("kwargs:\n", "kwargs:\n" + "\n".join(bomb) + "\n", 1)
    (d / "card.yaml").write_text(text)
    cases.append(Case(d.name, "card", f"{len(text)}-byte card whose `kwargs` nest YAML aliases 6 levels deep, x10 "
                      "each (10^6 nodes)", ("models", "show", str(d / "card.yaml")), "through its aliases",
                      str(d / "card.yaml")))

    d = case("card-deep-nesting")
    text = card3d.read_text().replace("kwargs:\n", "kwargs:\n  deep: " + "[" * 20000 + "]" * 20000 + "\n", 1)
    (d / "card.yaml").write_text(text)
    cases.append(Case(d.name, "card", "card whose `kwargs` nest lists 20,000 levels deep",
                      ("models", "show", str(d / "card.yaml")), "nested more than 64 levels deep",
                      str(d / "card.yaml")))

    d = case("card-huge-roi")
    card = yaml.safe_load(card3d.read_text())
    card["roi_size"] = [4096, 4096, 4096]
    (d / "card.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    cases.append(Case(d.name, "card", "roi_size [4096, 4096, 4096] (a 1 TiB window per channel)",
                      ("models", "show", str(d / "card.yaml")), "GiB per batch of windows", str(d / "card.yaml")))

    d = case("card-colour-999")
    card = yaml.safe_load(card3d.read_text())
    card["labels"][1]["color"] = [999, 0, 0]
    (d / "card.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    cases.append(Case(d.name, "card", "label colour [999, 0, 0]", ("models", "show", str(d / "card.yaml")),
                      "labels.1.color.0", str(d / "card.yaml")))

    d = case("card-unknown-name")
    cases.append(Case(d.name, "card", "model name with a typo (`ct-organz`)", ("models", "show", "ct-organz"),
                      "unknown model 'ct-organz'", "ct-organz"))

    d = case("card-colour-out-of-range")
    card_path = _copy_card(card3d, d)
    card = yaml.safe_load(card_path.read_text())
    card["labels"][1]["color"] = [999, 0, 0]
    card_path.write_text(yaml.safe_dump(card, sort_keys=False))
    scan = _nifti(d / "scan.nii.gz", _volume())
    cases.append(Case(d.name, "card", "label colour `[999, 0, 0]` (was found only when the viewer files were "
                      "written, after the mask)", ("segment-volume", str(scan), "-m", str(card_path), "--workers", "1"),
                      "labels.1.color.0", str(card_path)))

    # --- options (``segment-volume`` / ``segment-raster``): refused before anything is read or written
    def option(name: str, wrong: str, message: str, names: str, *extra: str, exit_code: int = 1) -> None:
        scan = _nifti(case(name) / "scan.nii.gz", _volume())
        cases.append(Case(name, "option", wrong, ("segment-volume", str(scan), "-m", str(card3d), "--workers", "1",
                                                  *extra), message, names or str(scan), exit_code=exit_code))

    option("option-memory-limit-nonsense", "`--memory-limit nonsense`", "is not a size like 4GiB", "'nonsense'",
           "--memory-limit", "nonsense")
    option("option-memory-limit-tiny", "`--memory-limit 1KiB` (the nanny restarted the worker forever)",
           "is below the 512.00 MiB a worker needs", "'1KiB'", "--memory-limit", "1KiB")
    option("option-dask-address", "`--dask-address 'nonsense!!'`", "is not tcp://host:port", "'nonsense!!'",
           "--dask-address", "nonsense!!")
    option("option-workers-unbounded", "`--workers 4096`", "workers must be 0..", "got 4096", "--workers", "4096")
    option("option-chunk-size-one", "`--chunk-size 1` on a 24x24x16 scan (9216 blocks for 4 windows; ran past 150 s)",
           "would be all scheduling overhead", "", "--chunk-size", "1")
    option("option-after-subcommand-unknown", "an unknown option after the subcommand (a usage error, exit 2)",
           "No such option: --frobnicate", "--frobnicate", "--frobnicate", exit_code=2)

    d = case("option-raster-too-big")
    import rasterio
    from rasterio.transform import Affine

    card4 = _card(d, "four-band", spatial_dims=2, in_channels=4, roi_size=(32, 32), n_labels=2,
                  preprocess={"kind": "window", "a_min": 0, "a_max": 255})
    scene = d / "sparse.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=200_000, height=200_000, count=4, dtype="float64",
                       crs="EPSG:32616", transform=Affine(0.5, 0, 500000.0, 0, -0.5, 4000000.0), tiled=True,
                       blockxsize=1024, blockysize=1024, compress="deflate", sparse_ok=True, bigtiff="yes"):
        pass  # nothing written: every tile is sparse (a 200,000 x 200,000 x 4 float64 scene in ~1 MB)
    cases.append(Case(d.name, "option", "sparse 200,000 x 200,000 x 4-band float64 GeoTIFF (1.3 TB of pixels): "
                      "tiling started with no size check", ("segment-raster", str(scene), "-m", str(card4),
                                                            "--workers", "1"), "work store up to", str(scene)))

    # --- data catalog (``pipeline catalog check``)
    d = case("catalog-python-tag")
    path = _catalog(d)
    path.write_text(path.read_text() + f"schedule: !!python/object/apply:os.system ['touch {d / MARKER}']\n")
    cases.append(Case(d.name, "catalog", "catalog with a `!!python/object/apply:os.system` tag",
                      ("catalog", "check", str(path)), "not a valid YAML data catalog", str(path), marker=True))

    d = case("catalog-is-directory")
    (d / "data_catalog.yaml").mkdir()
    path = d / "data_catalog.yaml"
    cases.append(Case(d.name, "catalog", "the catalog path is a directory", ("catalog", "check", str(path)),
                      "not a regular file (a directory)", str(path)))

    d = case("catalog-dotdot-output")
    path = _catalog(d, source={"output": "../escaped"})
    cases.append(Case(d.name, "catalog", "source output `../escaped` (leaves output_root)",
                      ("catalog", "check", str(path)), "sources.0.output: output must not contain '..'", str(path)))

    d = case("catalog-dotdot-glob")
    path = _catalog(d, source={"glob": "../../*.nii.gz"})
    cases.append(Case(d.name, "catalog", "source glob `../../*.nii.gz` (reads outside the source directory)",
                      ("catalog", "check", str(path)), "sources.0.glob: glob must not contain '..'", str(path)))

    d = case("catalog-symlink-output")
    path = _catalog(d)
    (d / "outside").mkdir()
    (d / "out" / "ct").symlink_to(d / "outside")
    cases.append(Case(d.name, "catalog", "`out/ct` is a symlink to a directory outside output_root",
                      ("catalog", "check", str(path)), "outside the output root", str(path)))

    d = case("catalog-symlink-subdirectory")
    path = _catalog(d)
    (d / "scans" / "sub").mkdir()
    _nifti(d / "scans" / "sub" / "other.nii.gz", _volume())
    (d / "outside").mkdir()
    (d / "out" / "ct").mkdir()
    (d / "out" / "ct" / "sub").symlink_to(d / "outside")
    cases.append(Case(d.name, "catalog", "`out/ct/sub` (where scans/sub/*.nii.gz would go) links outside output_root",
                      ("catalog", "check", str(path)), "outside the output root", str(d / "out" / "ct" / "sub")))

    # --- outputs
    d = case("output-under-file")
    scan = _nifti(d / "scan.nii.gz", _volume())
    (d / "notes.txt").write_text("a regular file, not a directory\n")
    volume(d.name, "`-o notes.txt/mask.nii.gz`: the output directory is a regular file (ENOTDIR, holds as root)",
           scan, "not a directory, cannot hold mask.nii.gz", "-o", str(d / "notes.txt" / "mask.nii.gz"))
    cases[-1] = Case(**{**cases[-1].__dict__, "area": "output", "names": str(d / "notes.txt")})

    d = case("workdir-under-file")
    scan = _nifti(d / "scan.nii.gz", _volume())
    (d / "notes.txt").write_text("a regular file, not a directory\n")
    volume(d.name, "`--work-dir notes.txt/work`: the work directory cannot be created (ENOTDIR)",
           scan, "Not a directory", "--work-dir", str(d / "notes.txt" / "work"))
    cases[-1] = Case(**{**cases[-1].__dict__, "area": "output", "names": str(d / "notes.txt")})

    d = case("output-dir-readonly")
    scan = _nifti(d / "scan.nii.gz", _volume())
    (d / "ro").mkdir()
    volume(d.name, "output directory mode 0555 (skipped as root: root writes anyway)", scan,
           "output directory is not writable", "-o", str(d / "ro" / "mask.nii.gz"))
    cases[-1] = Case(**{**cases[-1].__dict__, "area": "output", "names": str(d / "ro"), "root_ignores": True})
    (d / "ro").chmod(0o555)

    d = case("output-exists")
    scan = _nifti(d / "scan.nii.gz", _volume())
    (d / "scan_seg.nii.gz").write_bytes(b"previous result")
    volume(d.name, "the mask exists and --overwrite is not given", scan, "output exists; pass --overwrite")
    cases[-1] = Case(**{**cases[-1].__dict__, "area": "output", "names": str(d / "scan_seg.nii.gz")})

    def output(name: str, wrong: str, argv: tuple[str, ...], message: str, names: Path) -> None:
        cases.append(Case(name, "output", wrong, argv, message, str(names)))

    def segment(kind: str, source: Path, *extra: str) -> tuple[str, ...]:
        card = card3d if kind == "segment-volume" else card2d
        return (kind, str(source), "-m", str(card), "--workers", "1", *extra)

    d = case("output-report-csv-exists")
    scan = _nifti(d / "scan.nii.gz", _volume())
    (d / "scan_seg.report.csv").write_text("the user's own table\n")
    output(d.name, "`scan_seg.report.csv` (the user's file) exists beside the scan, no --overwrite",
           segment("segment-volume", scan), "output exists; pass --overwrite", d / "scan_seg.report.csv")

    d = case("output-upper-case-instances")
    scene = _raster(d / "scene.tif", _scene())
    (d / "scene_seg_instances.TIF").write_bytes(b"previous instance map")
    output(d.name, "`-o scene_seg.TIF --instances class1`: `scene_seg_instances.TIF` exists (upper-case suffix)",
           segment("segment-raster", scene, "-o", str(d / "scene_seg.TIF"), "--instances", "class1"),
           "output exists; pass --overwrite", d / "scene_seg_instances.TIF")

    d = case("output-is-directory")
    scan = _nifti(d / "scan.nii.gz", _volume())
    (d / "results" / "old").mkdir(parents=True)
    (d / "results" / "old" / "mask.nii.gz").write_bytes(b"an earlier result")
    output(d.name, "`-o results --overwrite`: `results/` is a directory holding files",
           segment("segment-volume", scan, "-o", str(d / "results"), "--overwrite"),
           "is a directory, not a file; --overwrite replaces only those", d / "results")

    d = case("output-store-not-ours")
    scan = _nifti(d / "scan.nii.gz", _volume())
    (d / "scan_seg.ome.zarr").mkdir()
    (d / "scan_seg.ome.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    output(d.name, "`--ome-zarr --overwrite`: `scan_seg.ome.zarr` is a Zarr store volseg did not write",
           segment("segment-volume", scan, "--ome-zarr", "--overwrite"),
           "is a directory, not a file or a Zarr store volseg wrote", d / "scan_seg.ome.zarr")

    d = case("output-is-reference")
    scan = _nifti(d / "scan.nii.gz", _volume())
    ref = _nifti(d / "ref.nii.gz", np.zeros((24, 24, 16), np.uint8))
    (d / "sub").mkdir()
    output(d.name, "`-o sub/../ref.nii.gz -r ref.nii.gz --overwrite`: the mask would replace the reference",
           segment("segment-volume", scan, "-r", str(ref), "-o", str(d / "sub" / ".." / "ref.nii.gz"), "--overwrite"),
           "output would overwrite an input of this run", ref)

    d = case("output-instances-is-scan")
    scan = _nifti(d / "m_instances.nii.gz", _volume())
    output(d.name, "scan `m_instances.nii.gz`, `-o m.nii.gz --instances class1 --overwrite`: the instance map "
           "would replace the scan", segment("segment-volume", scan, "-o", str(d / "m.nii.gz"), "--instances",
                                             "class1", "--overwrite"),
           "output would overwrite an input of this run", scan)

    d = case("output-symlink-to-scan")
    scan = _nifti(d / "scan.nii.gz", _volume())
    (d / "alias.nii.gz").symlink_to("scan.nii.gz")
    output(d.name, "`-o alias.nii.gz --overwrite`, `alias.nii.gz` a symlink to the scan",
           segment("segment-volume", scan, "-o", str(d / "alias.nii.gz"), "--overwrite"),
           "output would overwrite an input of this run", d / "alias.nii.gz")

    d = case("evaluate-output-is-prediction")
    pred = _nifti(d / "pred.nii.gz", np.zeros((24, 24, 16), np.uint8))
    ref = _nifti(d / "ref.nii.gz", np.zeros((24, 24, 16), np.uint8))
    output(d.name, "`pipeline evaluate pred.nii.gz ref.nii.gz -o pred.nii.gz --overwrite`: JSON would replace "
           "the prediction", ("evaluate", str(pred), str(ref), "-o", str(pred), "--overwrite"),
           "output would overwrite an input of this run", pred)

    d = case("vectors-is-reference")
    scene = _raster(d / "scene.tif", _scene())
    ref = d / "ref.geojson"
    ref.write_text('{"type": "FeatureCollection", "features": []}\n')
    output(d.name, "`segment-raster scene.tif -r ref.geojson --vectors ref.geojson --overwrite`: the polygons "
           "would replace the reference footprints",
           segment("segment-raster", scene, "-r", str(ref), "--vectors", str(ref), "--overwrite"),
           "output would overwrite an input of this run", ref)

    d = case("output-dangling-symlink")
    scan = _nifti(d / "scan.nii.gz", _volume())
    (d / "mask.nii.gz").symlink_to(d / "gone" / "mask.nii.gz")
    output(d.name, "`-o mask.nii.gz`, a dangling symlink, no --overwrite",
           segment("segment-volume", scan, "-o", str(d / "mask.nii.gz")), "is a dangling symlink", d / "mask.nii.gz")

    d = case("output-wrong-suffix")
    scan = _nifti(d / "scan.nii.gz", _volume())
    output(d.name, "`-o mask.txt`: a NIfTI mask under a `.txt` name",
           segment("segment-volume", scan, "-o", str(d / "mask.txt")), "the mask is NIfTI; name it .nii.gz or .nii",
           d / "mask.txt")

    d = case("output-new-directory-failed-run")
    data = _volume((16, 16, 16), "float32")
    data[3, 4, 5] = np.nan
    scan = _nifti(d / "scan.nii.gz", data)
    output(d.name, "`-o out/new/mask.nii.gz` (directories created) on a scan that fails (NaN voxel): the new "
           "directories are removed again", segment("segment-volume", scan, "-o", str(d / "out" / "new" / "mask.nii.gz")),
           "NaN/inf voxels", scan)
    return cases


# --------------------------------------------------------------------------------------------- running

def case_directory(case: Case, dest: Path) -> Path:
    return Path(dest).resolve() / case.name


def snapshot(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 (files) or ``-> target`` (symlinks, not followed) or ``dir``."""
    found: dict[str, str] = {}
    for here, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(here) / name
            key = str(path.relative_to(directory))
            if path.is_symlink():
                found[key] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                found[key] = "dir"
            elif not path.is_file():  # a FIFO: reading it would block
                found[key] = "special"
            else:
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def run_case(case: Case, *, debug: bool = False, timeout: float = 300) -> Outcome:
    """Run the real CLI (``python -m pipeline.cli``) in a subprocess, from the case's directory."""
    command = [sys.executable, "-m", "pipeline.cli", *(["--debug"] if debug else []), *case.argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return Outcome(done.returncode, done.stdout, done.stderr, time.perf_counter() - started, lines)


def message_line(case: Case, outcome: Outcome) -> str | None:
    """The line the case is about: ``error: ...`` for failures, the warning for accepted inputs."""
    if case.exit_code:
        wanted = [line for line in outcome.lines if line.startswith("error: ")]
    else:
        wanted = [line for line in outcome.lines if case.message in line]
    return wanted[0] if len(wanted) == 1 else None


def _cell(text: str, dest: Path) -> str:
    return text.replace(str(dest) + "/", "").replace("|", "\\|").replace("\n", "\\n")


def _shown(argv: tuple[str, ...]) -> list[str]:
    """The arguments without the ``--workers 1`` every case passes (to keep the corpus light)."""
    shown, rest = [], list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--workers" and rest[:1] == ["1"]:
            rest.pop(0)
        else:
            shown.append(arg)
    return shown


def table(cases: list[Case], outcomes: dict[str, Outcome], dest: Path) -> str:
    rows = ["| case | input | what is wrong | command | exit | message (measured) | s |",
            "|---|---|---|---|---|---|---|"]
    for case in cases:
        outcome = outcomes.get(case.name)
        if outcome is None:
            rows.append(f"| {case.name} | {case.area} | {case.wrong} | | skipped | (skipped as root: root ignores "
                        "permission bits) | |")
            continue
        line = message_line(case, outcome) or " / ".join(outcome.lines[-2:])
        command = "pipeline " + " ".join(_cell(a, dest) for a in _shown(case.argv))
        rows.append(f"| {case.name} | {case.area} | {_cell(case.wrong, dest)} | `{command}` | {outcome.exit_code} | "
                    f"`{_cell(line, dest)}` | {outcome.seconds:.1f} |")
    return "\n".join(rows)


def write_table(dest: Path) -> None:
    """Run every case and replace the table between the markers in README.md."""
    from concurrent.futures import ThreadPoolExecutor

    cases = make_corpus(dest)
    outcomes = {}
    with ThreadPoolExecutor(3) as pool:  # three at a time, as test_corpus.py runs them
        futures = {case.name: pool.submit(run_case, case) for case in cases
                   if not (case.root_ignores and os.geteuid() == 0)}
        for name, future in futures.items():
            outcomes[name] = future.result()
            print(f"{name}: exit {outcomes[name].exit_code} in {outcomes[name].seconds:.1f} s", file=sys.stderr)
    text = README.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    README.write_text(text[:start] + "\n" + table(cases, outcomes, Path(dest).resolve()) + "\n" + text[end:])
    (Path(dest) / "output-dir-readonly" / "ro").chmod(0o755)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.badinputs.make_corpus", description=__doc__.splitlines()[0])
    parser.add_argument("dest", nargs="?", type=Path, help="directory to write the corpus into")
    parser.add_argument("--table", action="store_true", help="run every case and rewrite the table in README.md")
    args = parser.parse_args(argv)
    if args.table:
        with tempfile.TemporaryDirectory(prefix="volseg-badinputs-") as tmp:
            write_table(Path(tmp) / "corpus")
        print(f"updated {README}")
    elif args.dest:
        for case in make_corpus(args.dest):
            print(f"{case.name}: pipeline {' '.join(case.argv)}  -> exit {case.exit_code}, {case.message!r}")
    else:
        parser.error("give DEST or --table")


if __name__ == "__main__":
    main()
