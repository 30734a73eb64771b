"""Benchmark (2D): this engine vs MONAI in-memory sliding window on a GeoTIFF scene, same model, one run.

- ``monai``: rasterio read of the model's bands (whole scene) -> preprocess -> ``sliding_window_inference``
  -> argmax -> a plain tiled GeoTIFF.
- ``ours``: ``segment_raster`` (windowed read into Zarr, Dask + MONAI, COG with overviews, report) on a
  LocalCluster started (model loaded in its workers) before timing; peak RSS = driver + workers.
Scenes: the shipped SpaceNet tile (900 x 900) and the same tile repeated 4 x 4 (16x the pixels).

    python bench/bench_raster.py [--model buildings] [--workers 2] [--repeats 2]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, main, monai_in_memory, peak_rss_mb  # noqa: E402

SAMPLE = ROOT / "data" / "geo" / "sample_geotiff.tif"


def make_scenes(directory: Path) -> dict[str, Path]:
    """The sample tile and a 16x scene (tile repeated 4 x 4, same pixel size and CRS)."""
    import rasterio

    with rasterio.open(SAMPLE) as src:
        data, profile = src.read(), src.profile
    big = np.tile(data, (1, 4, 4))
    profile.update(height=big.shape[1], width=big.shape[2], tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate")
    path = directory / "scene_16x.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(big)
    return {"sample (900 x 900)": SAMPLE, "16x (3600 x 3600)": path}


def run_monai(scene: Path, model_name: str, out: Path) -> dict[str, Any]:
    import rasterio

    from pipeline import load_model

    model = load_model(model_name)
    start = time.perf_counter()
    with rasterio.open(scene) as src:
        profile = src.profile
        x = model.preprocess(src.read(list(model.card.bands or range(1, src.count + 1))))
    labels, windows = monai_in_memory(model, x)
    profile.update(count=1, dtype="uint8", nodata=255, tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(labels[None])
    return {"seconds": time.perf_counter() - start, "windows": windows, "peak_rss_mb": peak_rss_mb()}


def size_of(scene: Path) -> int:
    import rasterio

    with rasterio.open(scene) as src:
        return src.width * src.height


if __name__ == "__main__":
    main(__doc__, script=Path(__file__), default_model="buildings", section="raster-cpu", unit="px", suffix=".tif",
         heading="2D rasters", make_inputs=lambda tmp, args: make_scenes(tmp), size_of=size_of,
         run_monai=run_monai, segment="pipeline.segment.raster:segment_raster")
