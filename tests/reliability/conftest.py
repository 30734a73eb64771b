"""One scan, one model and one uninterrupted run per module: the masks every fault test must reproduce."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.factories import make_card
from tests.reliability.helpers import many_block_scan, segment_args


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The scan, the card and the bytes of an uninterrupted run's mask (the same CLI arguments)."""
    root = tmp_path_factory.mktemp("reliability")
    card = make_card(root, name="tiny", roi_size=(32, 32, 16))
    scan = many_block_scan(root / "scan.nii.gz", shape=(96, 96, 32))
    expected = root / "expected" / "mask.nii.gz"
    expected.parent.mkdir()
    subprocess.run(segment_args(scan, card, expected), check=True, capture_output=True, timeout=300)
    return {"root": root, "card": card, "scan": scan, "expected": expected}
