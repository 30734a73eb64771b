"""Read values out of a MONAI bundle config as MONAI's ``ConfigParser`` would, without running its code.

``@id`` references (``a::b`` or ``a#b``) are followed, and ``$`` expressions are evaluated when they are
harmless: literals, arithmetic, comparisons, ``x if c else y``, indexing and a few pure builtins
(``len``, ``min``, ``max``, ...) of referenced values, such as ``"$len(@spatial_size)"`` or
``"$[1.5, 1.5, 1.5] if @highres else [3.0, 3.0, 3.0]"``. Anything else (attribute access such as
``torch.device``, imports, other calls) is code: evaluated by MONAI only when the bundle is trusted.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from pipeline.errors import CardError

#: Builtins an expression may call: pure functions of their arguments.
SAFE_CALLS = {"len": len, "min": min, "max": max, "abs": abs, "round": round, "int": int, "float": float,
              "bool": bool, "str": str, "list": list, "tuple": tuple, "sum": sum}
_NODES = (ast.Expression, ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.Load, ast.UnaryOp, ast.UAdd,
          ast.USub, ast.Not, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.BoolOp,
          ast.And, ast.Or, ast.Compare, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn,
          ast.IfExp, ast.Subscript, ast.Slice, ast.Name, ast.Call)
_REF = re.compile(r"@([\w:#]+)")


class NeedsTrust(CardError):
    """A value the bundle computes with code: only a trusted bundle may run it."""


def _expression(text: str) -> tuple[ast.Expression, dict[str, str]]:
    """Parse ``$...`` with each ``@ref`` replaced by a name; returns the tree and name -> reference id."""
    names: dict[str, str] = {}

    def name(match: re.Match[str]) -> str:
        key = f"_ref{len(names)}"
        names[key] = match.group(1).replace("#", "::")
        return key

    source = _REF.sub(name, text[1:])
    try:
        return ast.parse(source.strip(), mode="eval"), names
    except SyntaxError as e:
        raise NeedsTrust(f"expression {text[:60]!r} is not a Python expression ({e.msg})") from e


def harmless(text: str) -> bool:
    """Whether the ``$`` expression ``text`` only computes with literals, references and :data:`SAFE_CALLS`."""
    try:
        tree, names = _expression(text)
    except NeedsTrust:
        return False
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            return False
        if isinstance(node, ast.Name) and node.id not in names and node.id not in SAFE_CALLS:
            return False
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in SAFE_CALLS):
            return False
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            return False
    return True


class BundleValues:
    """Resolved values of one bundle config (a MONAI ``ConfigParser`` after ``read_config``)."""

    def __init__(self, parser: Any, *, trust: bool = False) -> None:
        self.parser = parser
        self.trust = trust

    def get(self, ident: str, default: Any = None) -> Any:
        """The value at ``ident`` (``a::b::0``) with references and harmless expressions resolved."""
        ident = ident.replace("#", "::")
        try:
            raw = self.parser.get(ident, default)
        except (KeyError, IndexError, TypeError, ValueError):
            return default
        return self._resolve(raw, ident, depth=0)

    def _resolve(self, node: Any, ident: str, depth: int) -> Any:
        if depth > 32:
            raise CardError(f"bundle config: references loop at {ident!r}")
        if isinstance(node, dict):
            return {k: self._resolve(v, f"{ident}::{k}", depth) for k, v in node.items()}
        if isinstance(node, list):
            return [self._resolve(v, f"{ident}::{i}", depth) for i, v in enumerate(node)]
        if not isinstance(node, str):
            return node
        if node.startswith("@") and _REF.fullmatch(node):
            target = node[1:].replace("#", "::")
            return self._resolve(self.parser.get(target), target, depth + 1)
        if node.startswith("$"):
            return self._evaluate(node, ident, depth)
        return node

    def _evaluate(self, text: str, ident: str, depth: int) -> Any:
        if not harmless(text):
            if not self.trust:
                raise NeedsTrust(f"{ident}: expression {text[:60]!r} runs code; trust the bundle to evaluate it")
            return self.parser.get_parsed_content(ident, instantiate=False)
        tree, names = _expression(text)
        scope = {key: self._resolve(self.parser.get(ref), ref, depth + 1) for key, ref in names.items()}
        try:
            return eval(compile(tree, "<bundle expression>", "eval"), {"__builtins__": {}}, {**SAFE_CALLS, **scope})
        except Exception as e:  # a harmless expression can still fail (a bad index): the bundle's fault
            raise CardError(f"{ident}: cannot evaluate {text[:60]!r} ({type(e).__name__}: {e})") from e
