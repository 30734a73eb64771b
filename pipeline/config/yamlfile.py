"""Reading the project's YAML files (model cards, the data catalog): ``yaml.safe_load`` only.

One reader, so every YAML file fails the same way: one line naming the file and what is wrong,
with the line and column of a syntax error, and ``!!python/...`` tags refused, never constructed.
What a document may expand to is bounded: anchors and aliases let a 1 KB file stand for gigabytes
(each level of ``&a [*b, *b, ...]`` multiplies), and deep nesting overflows Python's stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationInfo

from pipeline.errors import PipelineError, first_line
from pipeline.files import require_regular_file

#: Most nodes (scalars, lists, mappings) a document may hold with every alias expanded. The shipped
#: cards have 57-420 and the shipped catalog 137 (``count_nodes`` on each); a card's training section
#: grows with its epochs, so this leaves room for a few thousand of them.
MAX_NODES = 100_000
#: Deepest nesting of lists and mappings (the shipped files reach 6).
MAX_DEPTH = 64


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses documents nested deeper than :data:`MAX_DEPTH` while composing,
    before Python's recursion limit is met, and counts the nodes it composes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._composed = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._composed += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                                  self.peek_event().start_mark)
            if self._composed > MAX_NODES:
                raise yaml.composer.ComposerError(None, None, f"more than {MAX_NODES} nodes",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def count_nodes(root: yaml.Node) -> tuple[int, int]:
    """(nodes, depth) of the document under ``root`` with every alias expanded.

    The composed document is a graph in which an alias is the anchored node itself, so this is
    computed once per distinct node (iteratively: the expanded depth may exceed the stack).

    Raises
    ------
    yaml.YAMLError
        An alias refers to a node that contains it (the expansion is infinite).
    """
    sizes: dict[int, tuple[int, int]] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            active.discard(key)
            parts = [sizes[id(c)] for c in _children(node)]
            sizes[key] = (1 + sum(n for n, _ in parts), 1 + max((d for _, d in parts), default=0))
            continue
        if key in sizes:
            continue
        if key in active:
            raise yaml.composer.ComposerError(None, None, "an alias refers to a node that contains it",
                                              node.start_mark)
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def bounded_load(text: str) -> Any:
    """``yaml.safe_load(text)``, refusing documents that expand past :data:`MAX_NODES` nodes or nest
    deeper than :data:`MAX_DEPTH` (``yaml.YAMLError``) before anything is constructed."""
    loader = _BoundedLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        nodes, depth = count_nodes(root)
        if nodes > MAX_NODES or depth > MAX_DEPTH:
            what = f"{nodes} nodes" if nodes > MAX_NODES else f"{depth} levels of nesting"
            limit = f"{MAX_NODES} nodes" if nodes > MAX_NODES else f"{MAX_DEPTH} levels"
            raise yaml.composer.ComposerError(None, None, f"expands to {what} through its aliases (at most {limit})",
                                              root.start_mark)
        return loader.construct_document(root)
    finally:
        loader.dispose()


def read_mapping(path: Path, what: str, error: type[PipelineError]) -> dict[Any, Any]:
    """The mapping in the YAML file ``path`` (a ``what``: "model card", "data catalog").

    Raises
    ------
    error
        Missing, unreadable or not a regular file, invalid YAML or unsafe tags, a document that
        expands too far (:func:`bounded_load`), or one that is not a mapping.
    """
    require_regular_file(path, what, error)
    try:
        data = bounded_load(path.read_text(encoding="utf-8"))
    except OSError as e:  # no permission
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
    return first_line(error)


def resolve_relative(value: Path, info: ValidationInfo) -> Path:
    """A relative path taken from the YAML file at the file's directory (passed as validation context)."""
    base = (info.context or {}).get("base")
    return value if value.is_absolute() or base is None else Path(base) / value
