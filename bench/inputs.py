"""Benchmark inputs built from the shipped samples by mirroring (flip-tiling), cached under bench/.cache/.

Mirroring keeps anatomy and scenery continuous across tile borders (copy, flipped copy, copy, ...), so a
network sees plausible input everywhere, unlike plain repetition's hard seams. Every output is streamed
slab by slab (volumes) or window by window (rasters): building 1 Gvox needs only the sample and one slab
in memory. Geometry is the sample's: the same affine / CRS + transform (origin and voxel/pixel size), the
grid simply extends along +index.

    python bench/inputs.py volume 11M [--format nii]     # prints the cached path
    python bench/inputs.py volume 1G --format ome.zarr   # the same voxels as OME-Zarr, stored z, y, x (SAR)
    python bench/inputs.py raster 16x
"""

from __future__ import annotations

import argparse
import gzip
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
SAMPLE_CT = ROOT / "data" / "medical" / "example_ct_sm.nii.gz"
SAMPLE_TILE = ROOT / "data" / "geo" / "sample_geotiff.tif"

#: name -> shape (i, j, k) of the mirrored CT; ``sample`` is the shipped file itself (122 x 101 x 30)
VOLUMES: dict[str, tuple[int, int, int] | None] = {
    "sample": None,
    "1.4M": (122, 101, 120),     # 1 x 1 x 4
    "11M": (244, 202, 240),      # 2 x 2 x 8
    "138M": (488, 505, 560),     # mirrored, then cropped
    "1G": (1024, 1024, 1024),
}
#: name -> (height, width) of the mirrored scene; ``sample`` is the shipped tile (900 x 900)
RASTERS: dict[str, tuple[int, int] | None] = {
    "sample": None,
    "16x": (3600, 3600),
    "30k": (30000, 30000),
}
SLAB_BYTES = 64 * 2**20  #: about this much of the output in memory at a time
NIFTI1_DATA_OFFSET = 352  #: 348-byte header + 4-byte extension flag (no extensions)


def mirror_index(length: int, period: int) -> np.ndarray:
    """Source index for each of ``length`` output positions when an axis of ``period`` is flip-tiled:
    0..p-1, p-1..0, 0..p-1, ... (each border repeats its edge voxel, so neighbours stay neighbours)."""
    i = np.arange(length)
    tile, offset = np.divmod(i, period)
    return np.where(tile % 2 == 0, offset, period - 1 - offset)


def mirrored(source: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``source`` flip-tiled (and cropped) to ``shape``, in memory: the reference for small sizes and tests."""
    return source[np.ix_(*(mirror_index(n, p) for n, p in zip(shape, source.shape)))]


def volume(name: str, fmt: str = "nii.gz", cache: Path = CACHE) -> Path:
    """The CT of size ``name`` (a key of :data:`VOLUMES`) as ``.nii.gz`` or ``.nii``, built once and cached."""
    if name not in VOLUMES:
        raise KeyError(f"unknown volume size {name!r}; choose from {', '.join(VOLUMES)}")
    if fmt not in {"nii.gz", "nii", "ome.zarr"}:
        raise ValueError(f"format must be nii.gz, nii or ome.zarr, not {fmt!r}")
    if name == "sample" and fmt == "nii.gz":
        return SAMPLE_CT
    path = cache / f"ct_{name}.{fmt}"
    if not path.exists():
        import nibabel as nib

        image = nib.load(SAMPLE_CT)
        if fmt == "ome.zarr":
            write_mirrored_ome_zarr(np.asanyarray(image.dataobj).astype(np.int16), image.affine,
                                    VOLUMES[name] or image.shape, path)
            return path
        write_mirrored_nifti(np.asanyarray(image.dataobj.get_unscaled()), image.header,
                             VOLUMES[name] or image.shape, path)
    return path


def write_mirrored_nifti(source: np.ndarray, header: object, shape: tuple[int, int, int], path: Path) -> None:
    """Write ``source`` (stored values) flip-tiled to ``shape`` with ``header``'s geometry, k-slab by k-slab.

    NIfTI stores voxels i-fastest, so consecutive k-slabs are consecutive bytes: header, then each slab's
    Fortran-order bytes, through gzip or not. Scaling, affine, codes and units are the sample's.
    """
    out = header.copy()  # type: ignore[attr-defined]
    out.set_data_shape(shape)
    out.set_data_dtype(source.dtype)
    out.set_data_offset(NIFTI1_DATA_OFFSET)
    index = [mirror_index(n, p) for n, p in zip(shape, source.shape)]
    plane = source[np.ix_(index[0], index[1], np.arange(source.shape[2]))]  # (I, J, K_source)
    step = max(1, SLAB_BYTES // (shape[0] * shape[1] * source.dtype.itemsize))
    with _atomic(path) as tmp:
        raw = open(tmp, "wb")
        fh = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) \
            if path.name.endswith(".gz") else raw
        with raw, fh:
            fh.write(out.binaryblock)
            fh.write(b"\0" * (NIFTI1_DATA_OFFSET - len(out.binaryblock)))
            for k0 in range(0, shape[2], step):
                fh.write(plane[:, :, index[2][k0:k0 + step]].tobytes(order="F"))


def raster(name: str, cache: Path = CACHE) -> Path:
    """The scene of size ``name`` (a key of :data:`RASTERS`) as a tiled GeoTIFF, built once and cached."""
    if name not in RASTERS:
        raise KeyError(f"unknown raster size {name!r}; choose from {', '.join(RASTERS)}")
    if RASTERS[name] is None:
        return SAMPLE_TILE
    path = cache / f"scene_{name}.tif"
    if not path.exists():
        write_mirrored_geotiff(SAMPLE_TILE, RASTERS[name], path)  # type: ignore[arg-type]
    return path


def write_mirrored_geotiff(source: Path, shape: tuple[int, int], path: Path) -> None:
    """Write ``source`` flip-tiled to ``shape`` (rows, cols): 512-pixel tiles, deflate, same CRS, transform,
    nodata and band count; written one strip of tile rows at a time."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(source) as src:
        data, profile = src.read(), src.profile
    height, width = shape
    profile.update(height=height, width=width, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                   BIGTIFF="IF_SAFER")
    rows, cols = mirror_index(height, data.shape[1]), mirror_index(width, data.shape[2])
    wide = data[:, :, cols]  # (bands, source rows, width)
    step = max(512, SLAB_BYTES // (width * data.dtype.itemsize * data.shape[0]) // 512 * 512)
    with _atomic(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, height, step):
            strip = wide[:, rows[r0:r0 + step], :]
            dst.write(strip, window=Window(0, r0, width, strip.shape[1]))


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Write to a temporary beside ``path`` and rename on success: an interrupted build is never cached."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_mirrored_ome_zarr(source: np.ndarray, affine: np.ndarray, shape: tuple[int, int, int], path: Path,
                            chunks: tuple[int, int, int] = (64, 128, 128)) -> None:
    """``source`` (i, j, k, RAS 3 mm) flip-tiled to ``shape`` as a one-level OME-Zarr (NGFF 0.5) stored z, y, x
    = (k, j, i), so its axis codes are ``SAR``; written one chunk-thick z slab at a time. Segment it with
    ``pipeline segment-volume <store> --orientation SAR``; its labels then equal the ``.nii`` run's, transposed."""
    import zarr

    index = [mirror_index(n, p) for n, p in zip(shape, source.shape)]
    plane = source[np.ix_(index[0], index[1], np.arange(source.shape[2]))]
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    axes = [{"name": n, "type": "space", "unit": "millimeter"} for n in "zyx"]
    transforms = [{"type": "scale", "scale": [float(z) for z in zooms[::-1]]},
                  {"type": "translation", "translation": [float(t) for t in affine[:3, 3][::-1]]}]
    with _atomic(path) as tmp:
        root = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w", zarr_format=3)
        array = root.create_array("0", shape=shape[::-1], chunks=chunks, dtype=source.dtype,
                                  dimension_names=("z", "y", "x"))
        for z0 in range(0, shape[2], chunks[0]):
            array[z0:z0 + chunks[0]] = plane[:, :, index[2][z0:z0 + chunks[0]]].transpose(2, 1, 0)
        root.attrs["ome"] = {"version": "0.5", "multiscales": [{"name": path.name, "axes": axes, "datasets": [
            {"path": "0", "coordinateTransformations": transforms}]}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["volume", "raster"])
    parser.add_argument("name")
    parser.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "ome.zarr"],
                        help="volumes only")
    args = parser.parse_args()
    print(volume(args.name, args.format) if args.kind == "volume" else raster(args.name))


if __name__ == "__main__":
    main()
