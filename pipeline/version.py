"""The code version stamped into fingerprints, reports, manifests and trained cards: one definition.

Why one home: a work store made by other code must not be resumed, and a manifest or report names
the code that produced it; all of them must agree on what "the code" is.
"""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout."""
    try:
        version = metadata.version("volseg")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{commit}" if commit else version
