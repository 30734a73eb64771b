"""The torch device training runs on, and mixed precision on CUDA."""

from __future__ import annotations

import contextlib
from typing import Any

from pipeline.errors import PipelineError


def autocast(device: Any) -> Any:
    import torch

    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()


def resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise PipelineError(f"--device {name!r}: {e}") from e
