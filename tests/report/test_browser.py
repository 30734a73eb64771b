"""The HTML report opened in a real headless browser (Debian's Chromium): images, legend and table render."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.config.cards import Label
from pipeline.report.html_report import volume_report
from tests.report.conftest import CT_REF, chromium


def browser(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_report_renders_in_chromium(ct_case: dict[str, Any], ct_labels: dict[int, Label], tmp_path: Path) -> None:
    exe = chromium()
    page = volume_report(ct_case["report"], ct_case["group"], ct_labels, geometry=ct_case["scan"].geometry,
                         window=(-1000, 1000), reference=CT_REF, path=tmp_path / "ct_seg.report.html")
    shot = tmp_path / "shot.png"
    done = browser(exe, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,3200", page.as_uri())
    assert shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    r, g, b = pixels.astype(np.int64).T
    codes = (r << 16) | (g << 8) | b
    for label in ct_labels.values():
        # each label's exact colour: legend + table swatches (24 x 24 CSS px each) and its Dice bar
        red, green, blue = label.color
        assert (codes == (red << 16) | (green << 8) | blue).sum() >= 2 * 20 * 20, (label.name, label.color)
    # the CT planes rendered: mid-gray pixels (a page of broken images has ~70k, from text and frames)
    assert ((r == g) & (g == b) & (r > 30) & (r < 230)).sum() > 250_000
    # and the liver overlay: 50/50 blend of gray and (220, 120, 60) keeps r - g = 50, g - b = 30
    liver = np.array(ct_labels[1].color)
    assert ((abs(r - g - (liver[0] - liver[1]) / 2) <= 1) & (abs(g - b - (liver[1] - liver[2]) / 2) <= 1)).sum() > 5_000

    dom = browser(exe, tmp_path / "profile", "--dump-dom", page.as_uri()).stdout
    table = re.search(r'<table id="metrics">(.*?)</table>', dom, re.S)
    assert table, dom[:500]
    rows = re.findall(r"<tr>(.*?)</tr>", re.search(r"<tbody>(.*?)</tbody>", table.group(1), re.S).group(1), re.S)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in rows]
    assert len(cells) == len(ct_labels)
    for row, expected in zip(cells, ct_case["report"]["labels"], strict=True):
        assert row[0] == str(expected["label"])
        assert row[1].endswith(expected["name"])
        assert row[-2] == f"{expected['dice']:.3f}"
        assert row[-1] == f"{expected['iou']:.3f}"
    assert len(re.findall(r'<img [^>]*src="data:image/png', dom)) == 12
