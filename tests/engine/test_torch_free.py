"""A CPU run of a card whose OpenVINO conversion is recorded imports neither torch nor MONAI, and gives the
same mask as the run that converted it; the NumPy importance map is MONAI's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.engine.predictor import importance_map

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "medical" / "example_ct_sm.nii.gz"

RUN = """
import sys
from pipeline.cli import app
try:
    app(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("TORCH-LOADED" if "torch" in sys.modules else "TORCH-ABSENT", "MONAI-LOADED" if "monai" in sys.modules else "")
sys.exit(code)
"""


@pytest.mark.parametrize(("roi", "sigma"), [((64, 64, 32), 0.125), ((7, 10), 0.25), ((1, 5, 96), 0.125),
                                            ((33,), (0.3,))])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_importance_map_is_monais(roi: tuple[int, ...], sigma: float | tuple[float, ...], mode: str) -> None:
    from monai.data.utils import compute_importance_map

    expected = compute_importance_map(roi, mode=mode, sigma_scale=sigma).numpy()
    got = importance_map(roi, mode, sigma)
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)  # a few ulps: NumPy's exp is not torch's


def test_an_unknown_blend_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="blend mode"):
        importance_map((4, 4), "cosine", 0.125)


def _segment(out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VOLSEG_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", RUN, "segment-volume", str(SAMPLE), "-o", str(out), "--overwrite", *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_a_recorded_conversion_runs_without_torch_and_gives_the_same_mask(tmp_path: Path) -> None:
    import nibabel as nib

    cache = tmp_path / "cache"
    first = _segment(tmp_path / "first.nii.gz", cache)
    assert first.returncode == 0, first.stderr
    assert "TORCH-LOADED" in first.stdout  # converting needs the network
    second = _segment(tmp_path / "second.nii.gz", cache)
    assert second.returncode == 0, second.stderr
    assert "TORCH-ABSENT" in second.stdout
    assert "MONAI-LOADED" not in second.stdout
    a = np.asarray(nib.load(tmp_path / "first.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "second.nii.gz").dataobj)
    assert np.array_equal(a, b)
    forced = _segment(tmp_path / "torch.nii.gz", cache, "--backend", "torch")  # the network is built when asked
    assert forced.returncode == 0, forced.stderr
    assert "TORCH-LOADED" in forced.stdout
    c = np.asarray(nib.load(tmp_path / "torch.nii.gz").dataobj)
    assert np.mean(a == c) >= 0.9999


@pytest.mark.slow
def test_a_wrong_weights_file_still_fails_at_load_with_a_recorded_conversion(tmp_path: Path) -> None:
    import shutil

    cache = tmp_path / "cache"
    assert _segment(tmp_path / "first.nii.gz", cache).returncode == 0
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models)
    (models / "ct-organs.pt").write_bytes(b"not the weights")
    env_models = {"PIPELINE_MODELS_DIR": str(models)}
    os.environ.update(env_models)
    try:
        bad = _segment(tmp_path / "bad.nii.gz", cache)
    finally:
        del os.environ["PIPELINE_MODELS_DIR"]
    assert bad.returncode != 0
    assert "sha256" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / "bad.nii.gz").exists()


FREED = """
import sys
{before}
from pipeline.device import return_freed_memory
print(return_freed_memory(), return_freed_memory())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize(("before", "expected"), [("", "True True"), ("import torch", "False False")])
def test_freed_memory_goes_back_only_without_torch(before: str, expected: str) -> None:
    """The torch-free route fixes glibc's thresholds (peak no longer creeps with the block count); a process
    with torch keeps glibc's dynamic threshold, which conv3d's temporaries need to stay fast."""
    done = subprocess.run([sys.executable, "-c", FREED.format(before=before)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == expected
