"""Where converted networks live on disk, and the index that finds one from a card alone.

The engine's OpenVINO backend (:mod:`pipeline.engine.backends`) converts a network once per machine and
records the conversion under the card's identity (:func:`pipeline.model.models.card_identity`). Loading a
model asks :func:`has_card_entry` whether its network need be built at all: a CPU run of a recorded card
never imports torch. This module is only paths; it imports neither the engine nor OpenVINO.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: Bumped when the cache layout or the conversion settings change, so old entries are not reused.
CACHE_FORMAT = 1


def cache_dir() -> Path:
    """Where converted networks are kept: ``$VOLSEG_CACHE_DIR/openvino``, else ``~/.cache/volseg/openvino``."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "volseg"
    root = os.environ.get("VOLSEG_CACHE_DIR") or default
    return Path(root) / "openvino"


def card_index(identity: str, in_channels: int, window: tuple[int, ...]) -> Path:
    """The file naming the conversion of this card identity for ``in_channels`` x ``window`` inputs."""
    shape = "x".join(map(str, (int(in_channels), *window)))
    return cache_dir() / "cards" / f"{_identity_digest(identity)}-{shape}"


def has_card_entry(identity: str) -> bool:
    """Whether some window of this card identity has a recorded conversion."""
    directory = cache_dir() / "cards"
    return directory.is_dir() and any(directory.glob(f"{_identity_digest(identity)}-*"))


def _identity_digest(identity: str) -> str:
    return hashlib.sha256(f"{identity}\n{CACHE_FORMAT}".encode()).hexdigest()[:24]
