"""The layer rules of DESIGN.md, enforced on the import graph.

One layer order for every package of src/nefos (``LAYERS`` in
scripts/import_graph.py, drawn in docs/architecture.md): a module imports only its
own package and the packages below it, and no modules import each other in a cycle,
counting every import (inside functions and under ``TYPE_CHECKING`` too). On top of
the order: drivers/ never import db/, services/ or api/ (nor each other); services/
never import FastAPI or the API; the scheduler is pure; the SDK imports only the
wire schemas; the CLI talks only through the SDK.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "nefos"


def _load_graph_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts/import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_graph", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


graph = _load_graph_script()


def _modules(package: str) -> list[Path]:
    root = SRC / package
    if root.is_file():
        return [root]
    return sorted(root.rglob("*.py")) if root.exists() else []


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _violations(package: str, allowed: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in _modules(package):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden) and not any(
                name == a or name.startswith(a + ".") for a in allowed
            ):
                bad.append(f"{path.relative_to(SRC)} imports {name}")
    return bad


# Pure layers: no I/O framework, no storage, no other layer of Nefos.
PURE = (
    "nefos.db",
    "nefos.services",
    "nefos.api",
    "nefos.gateway",
    "nefos.drivers",
    "nefos.sdk",
    "nefos.cli",
    "sqlalchemy",
    "fastapi",
    "starlette",
    "httpx",
)

RULES = {
    # package: (allowed exceptions, forbidden prefixes)
    "domain": (
        (),
        PURE,
    ),
    "security": (
        (),
        (
            "nefos.db",
            "nefos.services",
            "nefos.api",
            "nefos.sdk",
            "nefos.cli",
            "fastapi",
            "starlette",
        ),
    ),
    "schemas": (
        (),
        (
            "nefos.db",
            "nefos.services",
            "nefos.api",
            "nefos.gateway",
            "nefos.sdk",
            "nefos.cli",
            "sqlalchemy",
            "fastapi",
            "starlette",
        ),
    ),
    "db": (
        (),
        (
            "nefos.services",
            "nefos.api",
            "nefos.gateway",
            "nefos.sdk",
            "nefos.cli",
            "fastapi",
            "starlette",
        ),
    ),
    "services": (
        (),
        ("nefos.api", "nefos.gateway", "nefos.sdk", "nefos.cli", "fastapi", "starlette"),
    ),
    "drivers": (
        (),
        ("nefos.db", "nefos.services", "nefos.api", "nefos.gateway", "nefos.sdk", "nefos.cli"),
    ),
    # Operations are the generic queue and workers: the services register handlers
    # with them, never the other way round.
    "operations": (
        (),
        (
            "nefos.services",
            "nefos.api",
            "nefos.gateway",
            "nefos.sdk",
            "nefos.cli",
            "fastapi",
            "starlette",
        ),
    ),
    # Monitoring (collector, time series, alerts) works on the database, drivers and
    # events; it never knows HTTP (nor services: the layer order says so).
    "monitoring": (
        (),
        ("nefos.api", "nefos.gateway", "nefos.sdk", "nefos.cli", "fastapi", "starlette"),
    ),
    # Billing (metering, rating, ledger, invoices) works on the database, events and
    # alerts; it never knows HTTP (nor services: what it needs of them, suspension,
    # is a function handed to the engine).
    "billing": (
        (),
        ("nefos.api", "nefos.gateway", "nefos.sdk", "nefos.cli", "fastapi", "starlette"),
    ),
    "reconciler": (
        (),
        ("nefos.api", "nefos.gateway", "nefos.sdk", "nefos.cli", "fastapi", "starlette"),
    ),
    # The scheduler is pure: host snapshots in, placements out; no database, no
    # driver, no web framework (STYLE.md example 8).
    "scheduler": (
        (),
        PURE,
    ),
    "sdk": (("nefos.schemas", "nefos.domain.access", "nefos.sdk"), ("nefos",)),
    "cli": (
        (
            "nefos.sdk",
            "nefos.cli",
            "nefos.config",
            "nefos.schemas",
            "nefos.domain.access",
            # `nefos serve` starts the server in-process: it is the one command that is
            # not an API client.
            "nefos.api.app",
            # ... checks its role against the database before it listens.
            "nefos.bootstrap",
            # ... and puts the credential-redacting filter on its log handlers.
            "nefos.security.redact",
        ),
        ("nefos",),
    ),
}


@pytest.mark.parametrize("package", sorted(RULES))
def test_layer_imports_point_downwards(package: str) -> None:
    allowed, forbidden = RULES[package]
    assert _violations(package, allowed, forbidden) == []


def test_the_rule_checker_catches_a_violation(tmp_path: Path) -> None:
    # Guard against a checker that passes vacuously.
    assert _violations("services", (), ("nefos.api",)) == []
    assert _violations("api", (), ("nefos.services",)) != []


def _driver_packages() -> list[str]:
    root = SRC / "drivers"
    return sorted(
        p.stem if p.is_file() else p.name
        for p in root.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.stem not in {"__init__", "base", "registry"})
    )


def test_a_driver_never_imports_another_driver() -> None:
    # Each driver sees only the contract (drivers.base), never a sibling: a shared
    # helper belongs in base or a neutral module, not in another driver.
    bad = []
    drivers = _driver_packages()
    assert "docker" in drivers  # guard against a checker that finds no drivers
    for name in drivers:
        others = tuple(f"nefos.drivers.{o}" for o in drivers if o != name)
        bad += _violations(f"drivers/{name}", (), others) + _violations(
            f"drivers/{name}.py", (), others
        )
    assert bad == []


# --- one layer order, no cycle ----------------------------------------------------------
IMPORTS = graph.imports()

#: Imports inside a function that are meant, and why. Any other is a cycle dodged or
#: a dependency hidden: hand the lower layer the function it needs instead.
IN_FUNCTION: dict[tuple[str, str], str] = {
    # `nefos serve` starts the server; the CLI's other commands do not load it.
    ("nefos.cli.serve", "nefos.api.app"): "startup cost of the CLI",
    ("nefos.cli.serve", "nefos.bootstrap"): "startup cost of the CLI",
}

#: The process's loops: the composition root builds them and hands them what they
#: call; a service never reaches for them.
LOOPS = ("nefos.billing.engine", "nefos.monitoring.collector")


def _packages() -> set[str]:
    return {graph.package_of(m) for m in graph.modules()}


def test_every_package_has_one_layer() -> None:
    named = [p for names in graph.LAYERS for p in names]
    assert len(named) == len(set(named)), "a package in two layers"
    assert _packages() == set(named)


def _upward(found: list[Any]) -> list[str]:
    """The imports of a package of the same layer or above (``found``: the script's
    ``Import`` records)."""
    bad = []
    for i in found:
        a, b = graph.package_of(i.importer), graph.package_of(i.target)
        if a != b and graph.level_of(b) <= graph.level_of(a):
            bad.append(f"{i.importer}:{i.line} ({a}) imports {i.target} ({b})")
    return bad


def test_every_import_points_down_the_layers() -> None:
    assert _upward(IMPORTS) == []


def test_no_modules_import_each_other_in_a_cycle() -> None:
    assert graph.cycles(graph.module_graph(IMPORTS)) == []


def test_imports_inside_functions_are_only_the_listed_ones() -> None:
    inside = {(i.importer, i.target) for i in IMPORTS if i.in_function}
    assert inside <= set(IN_FUNCTION), sorted(inside - set(IN_FUNCTION))


def test_no_service_imports_a_loop() -> None:
    bad = {
        (i.importer, i.target)
        for i in IMPORTS
        if i.importer.startswith("nefos.services.") and i.target in LOOPS
    }
    assert bad == set(), sorted(bad)


def test_the_architecture_doc_draws_the_real_graph() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert graph.markdown(IMPORTS) in doc, (
        "docs/architecture.md is out of date: paste what scripts/import_graph.py prints"
    )


def test_the_graph_checker_catches_a_cycle_an_upward_import_and_a_hidden_one(
    tmp_path: Path,
) -> None:
    # Guard against checks that pass vacuously: a small tree with each fault.
    pkg = tmp_path / "nefos"
    for sub in ("billing", "services"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "services" / "a.py").write_text("from nefos.billing import b\n")
    (pkg / "billing" / "b.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from nefos.services.a import X\n"
        "def f():\n"
        "    from nefos.services import a\n"
    )
    found = graph.imports(tmp_path)
    assert graph.cycles(graph.module_graph(found)) == [["nefos.billing.b", "nefos.services.a"]]
    assert len(_upward(found)) == 2  # billing under TYPE_CHECKING and in a function
    assert [(i.importer, i.in_function) for i in found if i.in_function] == [
        ("nefos.billing.b", True)
    ]
