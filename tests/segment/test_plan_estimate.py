"""The plan estimate: chunks clipped to the image, costs from the plan alone, refusals with the estimate."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import pytest

from pipeline.errors import SettingsError
from pipeline.segment.domain import PlanInputs
from pipeline.segment.plan_estimate import MAX_TASKS, Tiling, check_plan, clip_chunks, estimate_plan

GiB = 2**30


def plan(shape: tuple[int, ...], chunks: tuple[int, ...] | None, *, roi: tuple[int, ...] = (16, 16, 16),
         workers: int = 1, classes: int = 3, valid_mask: bool = False, **extra: object):  # noqa: ANN201
    tiling = Tiling(roi=roi, overlap=(0.25,) * len(shape), chunks=clip_chunks(chunks, shape),
                    default=(128,) * len(shape) if len(shape) == 3 else (768, 768))
    return estimate_plan(shape, tiling, PlanInputs(in_channels=1, itemsize=2, valid_mask=valid_mask), classes=classes,
                         workers=workers, **extra)  # type: ignore[arg-type]


def test_chunks_are_clipped_to_the_image() -> None:
    assert clip_chunks((700, 700, 700), (24, 24, 16)) == (24, 24, 16)
    assert clip_chunks((10**20,) * 3, (24, 24, 16)) == (24, 24, 16)
    assert clip_chunks((8, 30, 4), (24, 24, 16)) == (8, 24, 4)
    assert clip_chunks(None, (24, 24, 16)) is None
    with pytest.raises(SettingsError):
        clip_chunks((0, 8, 8), (24, 24, 16))


def test_a_700_block_on_a_small_scan_costs_what_the_scan_does(data_dir: Path) -> None:
    """Was 3.8 GB peak: the block, not the image, sized the merge arrays."""
    shape = nib.load(data_dir / "medical" / "example_ct_sm.nii.gz").shape
    huge, whole = plan(shape, (700, 700, 700)), plan(shape, shape)
    assert huge == whole
    assert huge.blocks == 1 and huge.chunks == tuple(shape)
    assert huge.worker_bytes < 1 * GiB


def test_estimate_grows_with_the_image_and_the_workers() -> None:
    small, big = plan((64, 64, 32), (32, 32, 32)), plan((256, 256, 128), (32, 32, 32))
    assert big.blocks == 64 * small.blocks and big.tasks > small.tasks
    # the image and labels (int16 + uint8/16), plus about one layer of blocks' spills (on disk, not in memory)
    assert 64 * 64 * 32 * (2 + 2) <= small.store_bytes and big.store_bytes >= 64 * small.store_bytes // 2
    assert plan((64, 64, 32), None, workers=2).peak_bytes > plan((64, 64, 32), None, workers=1).peak_bytes
    assert plan((64, 64, 32), (64, 64, 32), probabilities=True).store_bytes > small.store_bytes


def test_tiny_chunks_are_refused_with_the_estimate(tmp_path: Path) -> None:
    """``--chunk-size 1`` on a 24x24x16 scan: 9216 blocks for 4 windows ran past 150 s."""
    estimate = plan((24, 24, 16), (1, 1, 1))
    assert estimate.blocks == 24 * 24 * 16 and estimate.windows == 4
    with pytest.raises(SettingsError, match="9216 blocks for 4 windows"):
        check_plan(estimate, source=Path("scan.nii.gz"), work_root=tmp_path, memory_limit=None, ram=None)
    check_plan(plan((24, 24, 16), None), source=Path("scan.nii.gz"), work_root=tmp_path, memory_limit=None, ram=None)
    check_plan(plan((24, 24, 16), (8, 8, 8)), source=Path("scan.nii.gz"), work_root=tmp_path, memory_limit=None,
               ram=None)


def test_over_the_memory_limit_the_ram_or_the_disk_is_refused(tmp_path: Path) -> None:
    estimate = plan((512, 512, 256), (512, 512, 256), roi=(96, 96, 96), classes=20)
    assert estimate.worker_bytes > 4 * GiB
    with pytest.raises(SettingsError, match="more than its memory limit of 4.00 GiB") as refused:
        check_plan(estimate, source=Path("ct.nii.gz"), work_root=tmp_path, memory_limit=4 * GiB, ram=None)
    assert str(refused.value).startswith("ct.nii.gz: 1 blocks of 512x512x256")
    with pytest.raises(SettingsError, match="of RAM"):
        check_plan(estimate, source=Path("ct.nii.gz"), work_root=tmp_path, memory_limit=None, ram=2 * GiB)
    huge = plan((200_000, 200_000), None, roi=(128, 128), valid_mask=True)
    assert huge.store_bytes >= 200_000**2 * (2 + 2 + 1)
    with pytest.raises(SettingsError, match="free under"):
        check_plan(huge, source=Path("scene.tif"), work_root=tmp_path / "not" / "yet", memory_limit=None, ram=None)


def test_more_tasks_than_the_ceiling_are_refused(tmp_path: Path) -> None:
    estimate = plan((100_000, 100_000), (128, 128), roi=(128, 128))
    assert estimate.tasks > MAX_TASKS
    with pytest.raises(SettingsError, match=f"more than {MAX_TASKS} tasks"):
        check_plan(estimate, source=Path("scene.tif"), work_root=tmp_path, memory_limit=None, ram=None)


def test_the_default_runtime_counts_its_second_task_on_large_plans_only() -> None:
    """It runs two block tasks at once from ADAPTIVE_FROM_BLOCKS blocks on: the estimate holds both."""
    from pipeline.engine.infer import ADAPTIVE_FROM_BLOCKS

    small, large = (64, 64, 32), (32 * 8, 32 * 4, 32)  # 4 and 32 blocks of 32^3
    assert plan(small, (32, 32, 32)).blocks < ADAPTIVE_FROM_BLOCKS <= plan(large, (32, 32, 32)).blocks
    assert plan(small, (32, 32, 32), adaptive=2) == plan(small, (32, 32, 32))
    one, two = plan(large, (32, 32, 32)), plan(large, (32, 32, 32), adaptive=2)
    task = two.peak_bytes - one.peak_bytes
    assert task > 0 and two.worker_bytes - one.worker_bytes == task
    assert two.peak_bytes == plan(large, (32, 32, 32), workers=2).peak_bytes  # as two slots would
    assert two.chunks == one.chunks and two.blocks == one.blocks  # blocks still balanced for one task
