"""The MONAI script a user would write instead of volseg: whole input in memory, one sliding window.

    python bench/monai_baseline.py scan.nii.gz mask.nii.gz [--model ct-organs] [--threads 2]
    python bench/monai_baseline.py scene.tif mask.tif --model buildings

Read everything -> the card's preprocessing -> ``sliding_window_inference`` (Gaussian, the card's roi,
overlap and sw_batch_size) -> argmax -> NIfTI (gzip) / GeoTIFF. The card is used only for the network and
the preprocessing function (a user's script would contain the same code). CUDA + AMP when available.
Nodata is not handled (a plain script would not): pixels stay as read.
"""

import argparse
import time

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from pipeline.model.models import load_model

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("input")
parser.add_argument("output")
parser.add_argument("--model", default=None, help="card name or path (default: ct-organs / buildings)")
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()
raster = args.input.endswith((".tif", ".tiff"))
torch.set_num_threads(args.threads)
device = "cuda" if torch.cuda.is_available() else "cpu"
model = load_model(args.model or ("buildings" if raster else "ct-organs"))

if raster:
    import rasterio

    with rasterio.open(args.input) as src:
        profile = src.profile
        image = src.read(list(model.card.bands or range(1, src.count + 1)))  # (bands, rows, cols)
else:
    import nibabel as nib

    scan = nib.load(args.input)
    image = np.asanyarray(scan.dataobj)[None]  # (1, i, j, k), scaled values
x = torch.from_numpy(model.preprocess(image))[None].to(device)
del image

network = model.network.to(device)
with torch.inference_mode(), torch.autocast(device, dtype=torch.float16, enabled=device == "cuda"):
    logits = sliding_window_inference(x, model.roi_size, model.card.sw_batch_size, network, model.overlap,
                                      mode="gaussian")
labels = logits[0].argmax(0).to(torch.uint8).cpu().numpy()
del logits, x

if raster:
    profile.update(count=1, dtype="uint8", nodata=None, tiled=True, blockxsize=512, blockysize=512,
                   compress="deflate", BIGTIFF="IF_SAFER")
    with rasterio.open(args.output, "w", **profile) as dst:
        dst.write(labels[None])
else:
    header = scan.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    nib.save(nib.Nifti1Image(labels, scan.affine, header), args.output)
print(f"{args.output}: {labels.size} voxels on {device} in {time.process_time():.1f} s CPU")
