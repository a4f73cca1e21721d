#!/usr/bin/env python3
"""Print the import graph of src/nefos: the layer order and what each package imports.

    python scripts/import_graph.py            # the Markdown docs/architecture.md holds
    python scripts/import_graph.py --modules  # every module's imports of nefos

Every import counts: at the top of a module, inside a function, under
``TYPE_CHECKING``. ``tests/test_architecture.py`` checks the graph against
:data:`LAYERS` (a package imports only itself and packages below it), that no
modules import each other in a cycle, and that docs/architecture.md shows what
this prints.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "nefos"

#: The layers of src/nefos, top first. A package may import its own modules and
#: those of the packages of the layers below its own, never a package of its own
#: layer or above. ``nefos`` is the package root (``__version__``).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("api",),
    ("bootstrap",),
    ("gateway",),
    ("reconciler",),
    ("services",),
    ("billing",),
    ("monitoring",),
    ("operations",),
    ("events",),
    ("drivers", "scheduler", "loadtest"),
    ("db", "sdk", "security"),
    ("schemas",),
    ("config",),
    ("domain",),
    ("nefos",),
)

BEGIN = "<!-- import-graph: begin (scripts/import_graph.py prints this) -->"
END = "<!-- import-graph: end -->"


@dataclass(frozen=True, slots=True)
class Import:
    """``importer`` imports ``target`` (both module names), at ``line``."""

    importer: str
    target: str
    line: int
    #: Inside a function (imported when it runs, not with its module).
    in_function: bool


def modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own)."""
    found = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def package_of(module: str) -> str:
    """``nefos.billing.engine`` → ``billing``; the package root → ``nefos``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _absolute(module: str, path: Path, level: int, name: str | None) -> str:
    base = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{name}" if name else base


def _walk(node: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
        yield child, inside
        yield from _walk(child, inside)


def imports(src: Path = SRC) -> list[Import]:
    """Every import of a nefos module by a nefos module, wherever it is written."""
    known = modules(src)
    out: list[Import] = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, in_function in _walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = (
                    _absolute(module, path, node.level, node.module)
                    if node.level
                    else node.module or ""
                )
                # ``from nefos.billing import invoices`` imports the module invoices.
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
                ]
            for target in targets:
                if target != ROOT and not target.startswith(ROOT + "."):
                    continue
                resolved = _resolve(target, known)
                if resolved is not None and resolved != module:
                    out.append(Import(module, resolved, node.lineno, in_function))
    return out


def module_graph(found: Iterable[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for i in found:
        graph.setdefault(i.importer, set()).add(i.target)
    return graph


def package_graph(found: Iterable[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for i in found:
        a, b = package_of(i.importer), package_of(i.target)
        if a != b:
            graph.setdefault(a, set()).add(b)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


def level_of(package: str) -> int:
    """The layer of a package, 0 at the top; KeyError for one no layer names."""
    for level, names in enumerate(LAYERS):
        if package in names:
            return level
    raise KeyError(package)


def markdown(found: Iterable[Import]) -> str:
    """The layer order and the package graph, as docs/architecture.md shows them."""
    graph = package_graph(found)
    order = " > ".join(", ".join(names) for names in LAYERS)
    lines = [
        BEGIN,
        "```",
        "Layers, top first (a package imports only packages below its own):",
        "",
        f"  {order}",
        "",
        "What each package imports (every import: top-level, in functions, TYPE_CHECKING):",
        "",
    ]
    width = max(len(p) for names in LAYERS for p in names)
    for names in LAYERS:
        for package in names:
            below = sorted(graph.get(package, ()), key=lambda p: (level_of(p), p))
            lines.append(f"  {package:<{width}} -> {', '.join(below) or '(nothing)'}")
    lines += ["```", END]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    found = imports()
    if "--modules" in argv:
        for module, targets in sorted(module_graph(found).items()):
            print(f"{module} -> {', '.join(sorted(targets))}")
        return 0
    print(markdown(found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
