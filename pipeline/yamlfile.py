"""Reading the project's YAML files (model cards, the data catalog): ``yaml.safe_load`` only.

One reader, so every YAML file fails the same way: one line naming the file and what is wrong,
with the line and column of a syntax error, and ``!!python/...`` tags refused, never constructed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError


def read_mapping(path: Path, what: str, error: type[PipelineError]) -> dict[Any, Any]:
    """The mapping in the YAML file ``path`` (a ``what``: "model card", "data catalog").

    Raises
    ------
    error
        Missing or unreadable file, invalid YAML or unsafe tags, or a document that is not a mapping.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise error(f"{path}: {what} not found") from e
    except OSError as e:  # a directory, no permission
        raise error(f"{path}: cannot read the {what} ({e.strerror or e})") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise error(f"{path}: not a valid YAML {what} ({yaml_reason(e)})") from e
    if not isinstance(data, dict):
        raise error(f"{path}: a {what} must be a YAML mapping, got {type(data).__name__}")
    return data


def yaml_reason(error: Exception) -> str:
    """``problem at line L, column C`` for YAML errors (they span several lines otherwise)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(error).splitlines()[0]
