"""``--select`` expressions over catalog entries, evaluated safely.

``material=="graphene" and layers==1 and area_um2>=50``: names are catalog fields, literals are
numbers and strings, and only ``and``, ``or``, ``not``, comparisons and ``in`` are allowed —
parsed with :mod:`ast` and walked, never handed to ``eval``.
"""

from __future__ import annotations

import ast
import operator
from typing import Any

from scopeflow.errors import UsageError

_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


def compile_selection(text: str, fields: set[str]) -> ast.Expression:
    """Parse ``text``; a UsageError names what is not allowed."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise UsageError(f"--select {text!r} is not an expression: {exc.msg}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in fields:
            raise UsageError(f"--select: no field {node.id!r}; fields: {', '.join(sorted(fields))}")
        allowed = (
            ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub,
            ast.Compare, ast.Name, ast.Load, ast.Constant, ast.Tuple, ast.List,
            *_COMPARE,
        )  # fmt: skip
        if not isinstance(node, allowed):
            raise UsageError(f"--select: {type(node).__name__} is not allowed in a selection")
    return tree


def matches(tree: ast.Expression, entry: dict[str, Any]) -> bool:
    """Whether ``entry`` satisfies the compiled selection."""
    return bool(_value(tree.body, entry))


def _value(node: ast.AST, entry: dict[str, Any]) -> Any:
    if isinstance(node, ast.BoolOp):
        values = (_value(v, entry) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp):
        inner = _value(node.operand, entry)
        return (not inner) if isinstance(node.op, ast.Not) else -inner
    if isinstance(node, ast.Compare):
        left = _value(node.left, entry)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _value(right_node, entry)
            try:
                if not _COMPARE[type(op)](left, right):
                    return False
            except TypeError:  # e.g. layers "thick" >= 2: not selected
                return False
            left = right
        return True
    if isinstance(node, ast.Name):
        return entry[node.id]
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return [_value(e, entry) for e in node.elts]
    raise UsageError(f"--select: {type(node).__name__} is not allowed")  # compile_selection guards
