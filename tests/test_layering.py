"""The layering the architecture promises, read from the source: the runtime (scopeflow) never
imports the lab (scopeflow_lab), and no two packages import each other, directly or around a
loop."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _package(module: str) -> str | None:
    """The unit of layering: scopeflow.X or scopeflow_lab.X (top-level modules count too)."""
    parts = module.split(".")
    if parts[0] not in ("scopeflow", "scopeflow_lab"):
        return None
    return ".".join(parts[:2])


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for top in ("scopeflow", "scopeflow_lab"):
        for path in (ROOT / top).rglob("*.py"):
            src = _package(".".join(path.relative_to(ROOT).with_suffix("").parts))
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                for name in names:
                    dst = _package(name)
                    if dst and src and dst != src:
                        edges.setdefault(src, set()).add(dst)
    return edges


def _cycle_from(start: str, edges: dict[str, set[str]]) -> list[str] | None:
    """A path start → … → start, if there is one (depth-first)."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        for nxt in edges.get(node, ()):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_the_runtime_never_imports_the_lab():
    edges = _edges()
    crossing = sorted(
        (src, dst)
        for src, dsts in edges.items()
        for dst in dsts
        if src.startswith("scopeflow.") and dst.startswith("scopeflow_lab")
    )
    assert crossing == []
    assert any(d.startswith("scopeflow.") for d in edges.get("scopeflow_lab.bench", ()))


def test_no_package_imports_itself_around_a_loop():
    edges = _edges()
    cycles = [c for c in (_cycle_from(p, edges) for p in sorted(edges)) if c]
    assert cycles == []
