"""One way to refuse an unknown choice: name it, suggest the closest, list the options."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
