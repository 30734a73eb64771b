"""Bundles of the MONAI model zoo (configs as published, ``tests/data/zoo/``) with random weights from their own
``network_def``, since their real weights cannot be downloaded in CI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

ZOO = Path(__file__).resolve().parents[1] / "data" / "zoo"
BUNDLES = ("spleen_ct_segmentation", "wholeBody_ct_segmentation")


def zoo_bundle(name: str, root: Path, *, edit: Any = None, seed: int = 0) -> Path:
    """A copy of zoo bundle ``name`` under ``root`` with ``models/model.pt`` built from its ``network_def``
    (by MONAI's own ``ConfigParser``); ``edit(config)`` may change the inference config first."""
    from monai.bundle import ConfigParser

    bundle = root / name
    shutil.copytree(ZOO / name, bundle)
    config = bundle / "configs" / "inference.json"
    if edit is not None:
        data = json.loads(config.read_text())
        edit(data)
        config.write_text(json.dumps(data, indent=1))
    parser = ConfigParser()
    parser.read_config(str(config))
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def")
    (bundle / "models").mkdir()
    torch.save(network.state_dict(), bundle / "models" / "model.pt")
    return bundle


def monai_parser(bundle: Path) -> Any:
    """MONAI's own parser of ``bundle`` (the reference for every value volseg reads)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    return parser
