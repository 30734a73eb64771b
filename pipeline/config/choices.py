"""The closed sets of names settings choose from, and one way to refuse an unknown choice: name it, suggest the
closest, list the options.

The names live here, below every layer that checks them (cards, the catalog, the CLI) and every layer that acts on
them (the engine's backends, the vector writers), so a card can be validated without importing the engine.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

#: CPU inference backends a card, the catalog or ``--backend`` may ask for (run by ``pipeline.engine.backends``).
#: ``auto``: OpenVINO on CPU when it is installed.
BACKENDS = ("auto", "torch", "openvino")
#: Vector output formats by file suffix (written by ``pipeline.io.vectors``).
VECTOR_SUFFIXES = (".gpkg", ".geojson")


def unknown_choice(what: str, value: str, choices: Iterable[str], *, listing: str = "choices") -> str:
    """``unknown mode 'gausian'; did you mean 'gaussian'? (choices: constant, gaussian)``."""
    options = list(choices)
    close = difflib.get_close_matches(value, options, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {value!r}{hint} ({listing}: {', '.join(options) or 'none'})"


def check_choice(what: str, value: str, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ValueError with :func:`unknown_choice`."""
    options = list(choices)
    if value not in options:
        raise ValueError(unknown_choice(what, value, options))
    return value
