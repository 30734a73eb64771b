"""The splitter reproduces MONAI's window grid and shares each window out exactly once."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from pipeline.engine.windows import parse_overlap, parse_roi_size, plan_blocks, window_grid
from pipeline.errors import SettingsError

RNG = np.random.default_rng(7)
CASES = [  # (shape, roi, overlap)
    ((50, 41, 23), (16, 16, 16), 0.25),
    ((7, 300), (64, 64), 0.5),
    ((1, 1, 1), (8, 8, 8), 0.0),
    ((96, 96, 96), (96, 96, 96), 0.25),
    ((33, 65, 17), (32, 64, 16), (0.1, 0.6, 0.9)),
] + [
    (tuple(int(s) for s in RNG.integers(1, 90, size=d)), tuple(int(r) for r in RNG.integers(1, 40, size=d)),
     float(RNG.choice([0.0, 0.25, 0.5, 0.75, 0.9])))
    for d in (2, 3, 3, 2, 3, 3) for _ in range(3)
]


def monai_starts(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float | tuple[float, ...]) -> set[tuple[int, ...]]:
    padded = tuple(max(s, r) for s, r in zip(shape, roi, strict=True))
    interval = _get_scan_interval(padded, roi, len(shape), parse_overlap(overlap, len(shape)))
    return {tuple(sl.start for sl in sls) for sls in dense_patch_slices(padded, roi, interval)}


@pytest.mark.parametrize(("shape", "roi", "overlap"), CASES)
def test_grid_equals_monai(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> None:
    grid = window_grid(shape, roi, parse_overlap(overlap, len(shape)))
    ours = set(itertools.product(*(a.starts for a in grid.axes)))
    assert ours == monai_starts(shape, roi, overlap)


@pytest.mark.parametrize(("shape", "roi", "overlap"), CASES)
@pytest.mark.parametrize("chunk", [1, 5, 24, 128])
def test_plan_assigns_every_window_once(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float, chunk: int) -> None:
    grid = window_grid(shape, roi, parse_overlap(overlap, len(shape)))
    plan = plan_blocks(grid, (chunk,) * len(shape))
    assigned = [w for key in plan.group_keys()
                for w in itertools.product(*(a.groups[i].starts for a, i in zip(plan.axes, key, strict=True)))]
    assert len(assigned) == len(set(assigned)) == grid.n_windows == plan.n_windows
    # every output block has contributors and blocks tile the image exactly
    for axis in plan.axes:
        assert axis.blocks[0][0] == 0 and axis.blocks[-1][1] == axis.grid.size
        assert all(a[1] == b[0] for a, b in itertools.pairwise(axis.blocks))
        assert all(axis.contributors(i) for i in range(len(axis.blocks)))


def test_roi_fallback_and_validation() -> None:
    assert parse_roi_size((0, 16, -1), (10, 20, 30)) == (10, 16, 30)
    assert parse_roi_size(8, (10, 20)) == (8, 8)
    with pytest.raises(SettingsError, match="roi_size must have 3 sides"):
        parse_roi_size((8, 8), (10, 20, 30))
    with pytest.raises(SettingsError, match="overlap must be >= 0 and < 1"):
        parse_overlap(1.0, 3)
    with pytest.raises(SettingsError, match="empty axis"):
        window_grid((0, 5), (4, 4), (0.25, 0.25))


@pytest.mark.parametrize(("shape", "roi", "min_tasks"), [
    ((122, 101, 30), (64, 64, 32), 4), ((900, 900), (128, 128), 4), ((10, 10, 10), (16, 16, 16), 4),
    ((300, 40, 40), (32, 32, 32), 16)])
def test_balanced_chunks_keep_workers_busy(shape: tuple[int, ...], roi: tuple[int, ...], min_tasks: int) -> None:
    from pipeline.engine.windows import balanced_chunks

    grid = window_grid(shape, roi, (0.25,) * len(shape))
    start = (1024,) * len(shape)
    chunks = balanced_chunks(grid, start, min_tasks)
    plan = plan_blocks(grid, chunks)
    tasks = len(list(plan.group_keys()))
    assert tasks >= min(min_tasks, grid.n_windows) or all(
        c <= a.step for c, a in zip(chunks, grid.axes, strict=True) if len(a.starts) > 1)
    assert plan.n_windows == grid.n_windows


@pytest.mark.parametrize(("shape", "roi"), [((51, 64, 54), (48, 48, 32)), ((122, 101, 30), (64, 64, 32)),
                                            ((49, 200), (48, 48)), ((300, 300, 300), (64, 64, 32))])
def test_balanced_blocks_are_never_smaller_than_a_window_step(shape: tuple[int, ...], roi: tuple[int, ...]) -> None:
    """An axis of two windows (the second pulled back to the border) must not cut blocks of a few voxels:
    the shipped MNI sample (51x64x54, roi 48x48x32) got 68 blocks of 3x16x128 for 8 windows and was refused."""
    from pipeline.engine.windows import balanced_chunks

    grid = window_grid(shape, roi, parse_overlap(0.25, len(shape)))
    chunks = balanced_chunks(grid, tuple(max(128, 2 * r) for r in roi), min_tasks=4)
    for side, axis in zip(chunks, grid.axes, strict=True):
        assert side >= min(axis.step, axis.padded_size)
    blocks = math.prod(-(-s // c) for s, c in zip(shape, chunks, strict=True))
    assert blocks <= 2 * max(4, grid.n_windows)  # was 68 blocks for the MNI sample's 8 windows


@pytest.mark.slow
def test_the_mni_sample_segments_with_the_default_command(tmp_path: Path) -> None:
    """The README's mr-brain example, default settings: planned and run, not refused."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "mni_seg.nii.gz"
    command = [sys.executable, "-m", "pipeline.cli", "segment-volume", str(root / "data/medical/mni152_t1.nii.gz"),
               "-m", "mr-brain", "-o", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert out.is_file()
