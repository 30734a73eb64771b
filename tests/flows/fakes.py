"""A stand-in segment function for flow and manifest tests: fast, deterministic, misbehaves on request.

Its behaviour follows the scan's file name: ``broken*`` raises an :class:`InputError` (a bad input),
``crash*`` a ``RuntimeError`` (a pipeline bug), ``flaky*`` an ``OSError`` on its first call only
(a transient failure), ``full*`` a :class:`StorageError` (ENOSPC) while :data:`DISK_FULL` is set,
``slow*`` takes half a second. It records each call in :data:`CALLS`.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.errors import InputError, StorageError
from pipeline.io.hashing import sha256_file
from pipeline.segment import SegmentationResult

CALLS: Counter[str] = Counter()
MANIFEST_SEEN: dict[str, bool] = {}  #: scan name -> whether its manifest existed while segmenting
DISK_FULL = {"full": True}  #: whether ``full*`` scans meet a full disk
_lock = threading.Lock()


def fake_segment(scan: str | Path, *, model: str, output: Path, reference: Path | None = None, overwrite: bool = False,
                 work_dir: Path | None = None, client: Any = None, **options: Any) -> SegmentationResult:
    scan = Path(scan)
    with _lock:
        CALLS[scan.name] += 1
        attempt = CALLS[scan.name]
    stem = output.name.split(".")[0]
    MANIFEST_SEEN[scan.name] = output.with_name(stem + ".manifest.json").exists()
    if scan.name.startswith("broken"):
        raise InputError(f"{scan}: not a readable NIfTI file (fake)")
    if scan.name.startswith("crash"):
        raise RuntimeError("fake bug\nsecond line")
    if scan.name.startswith("full") and DISK_FULL["full"]:
        raise StorageError(f"{output}: No space left on device (fake)", errno.ENOSPC)
    if scan.name.startswith("flaky") and attempt == 1:
        raise ConnectionResetError("fake: scheduler connection lost")
    if scan.name.startswith("slow"):
        time.sleep(0.5)
    if output.exists() and not overwrite:
        raise AssertionError("flows must pass overwrite=True under the lock")
    output.write_bytes(b"mask of " + scan.read_bytes()[:16])
    report = {"model": Path(model).stem, "model_sha256": None,
              "input": {"path": str(scan), "sha256": sha256_file(scan)},
              "reference": str(reference) if reference else None,
              "labels": [{"label": i, "name": f"class{i}", "dice": 0.5 + i / 10 if reference else None,
                          "iou": 0.25 + i / 10 if reference else None, "volume_ml": 1.5 * i} for i in range(2)],
              "run": {"seconds_total": 0.01}}
    report_json = output.with_name(stem + ".report.json")
    report_json.write_text(json.dumps(report))
    report_csv = output.with_name(stem + ".report.csv")
    report_csv.write_text("label,name\n")
    return SegmentationResult(mask=output, report_json=report_json, report_csv=report_csv, probabilities=None,
                              report=report)
