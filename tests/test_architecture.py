"""The layer rules of DESIGN.md, enforced on the import graph.

Import direction is downward only: drivers/ never import db/, services/ or api/
(nor each other); services/ never import FastAPI or the API; the scheduler is pure;
the SDK imports only the wire schemas; the CLI talks only through the SDK.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "nefos"


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
    # Monitoring (collector, time series, alerts) works on the database, drivers,
    # events and services; it never knows HTTP.
    "monitoring": (
        (),
        ("nefos.api", "nefos.gateway", "nefos.sdk", "nefos.cli", "fastapi", "starlette"),
    ),
    # Billing (metering, rating, ledger, invoices) works on the database, events and
    # services; it never knows HTTP.
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
