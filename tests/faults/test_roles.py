"""Process roles on one database: API processes and workers apart, singleton loops
under leases, and SQLite's refusal of more than one process.

The PostgreSQL test runs two ``nefos serve --role api`` and two ``--role worker`` (one
holds the loops' leases, one stands by) on one database and one Redis, as real
processes: containers made through either API run once (the workers woken through
Redis, not by polling), every metric sample is
stored once, a key revoked through one API is refused by the other, and after
``kill -9`` of the lease holder the other worker takes every loop over within a
lease period (with a deadline), with no duplicate charge or alert.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from nefos.config import async_database_url
from nefos.db.models import Alert, LedgerEntry, MetricSample, UsageRecord
from tests.conftest import ADMIN_PASSWORD, PASSWORD, TEST_IMAGE, DatabaseFactory
from tests.faults.conftest import V1, Podman, eventually
from tests.processes import Server, serve_env, server

LEASE = 3.0
METRICS_INTERVAL = 2.0
LOOPS = (
    "billing",
    "collector",
    "host-checks",
    "reconciler",
    "retention",
    "service-checks",
    "webhooks",
)


def _nefos(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = Server(env, cwd, cwd / "unused.log", *args).command()
    return subprocess.run(  # noqa: S603 - our own CLI
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


# --- SQLite: one process ---------------------------------------------------------------
def test_sqlite_refuses_roles_processes_and_a_second_process(
    backend: str, databases: DatabaseFactory, tmp_path: Path
) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite's refusal")
    url = databases.new_url()
    env = serve_env(url, tmp_path / "data")
    for args in (("--role", "api"), ("--role", "worker"), ("--processes", "2")):
        done = _nefos(*args, env=env, cwd=tmp_path)
        out = done.stdout + done.stderr
        assert done.returncode == 1, out
        assert "needs PostgreSQL" in out and "Traceback" not in out, out
    with server(env, tmp_path, tmp_path / "first.log"):
        second = serve_env(url, tmp_path / "data")  # another port, the same database
        done = _nefos(env=second, cwd=tmp_path)
        out = done.stdout + done.stderr
        assert done.returncode == 1, out
        assert "another Nefos process" in out and "Traceback" not in out, out


# --- PostgreSQL: API processes and workers -------------------------------------------------
async def _login(c: httpx.AsyncClient) -> dict[str, str]:
    r = await c.post(f"{V1}/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['data']['access_token']}"}


async def _leases(url: str) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.get(f"{url}/health")
    assert r.status_code == 200, r.text
    return {v["name"]: v for v in r.json()["data"]["leases"]}


async def _count(db: AsyncEngine, query: Any) -> Any:
    async with db.connect() as conn:
        return (await conn.execute(query)).all()


@pytest.fixture
async def database(backend: str, databases: DatabaseFactory) -> AsyncIterator[tuple[str, Any]]:
    if backend != "postgresql":
        pytest.skip("API and worker processes apart need PostgreSQL")
    url = await asyncio.to_thread(databases.new_url)
    engine = create_async_engine(async_database_url(url))
    yield url, engine
    await engine.dispose()


async def test_api_and_worker_processes_share_the_work_once(
    database: tuple[str, AsyncEngine], podman: Podman, tmp_path: Path
) -> None:
    redis = os.environ.get("NEFOS_TEST_REDIS_URL")
    assert redis, "make services starts Redis (NEFOS_TEST_REDIS_URL)"
    url, db = database
    common = {
        "NEFOS_REDIS_URL": redis,
        "NEFOS_REDIS_PREFIX": f"roles{os.getpid()}",
        "NEFOS_INSTALLATION_ID": f"roles-{os.getpid()}-{time.monotonic_ns()}",
        "NEFOS_LEASE_SECONDS": str(LEASE),
        "NEFOS_METRICS_INTERVAL": str(METRICS_INTERVAL),
        "NEFOS_BILLING_INTERVAL": "1",
        "NEFOS_RECONCILE_INTERVAL": "2",
        "NEFOS_WORKERS": "2",
        # Workers poll for operations only every 5 minutes: what an API process
        # enqueues reaches them by the bus's wake-up, or this test times out.
        "NEFOS_OPERATION_POLL_INTERVAL": "300",
    }

    def start(name: str, role: str) -> Server:
        env = serve_env(url, tmp_path / f"data-{name}", **common)
        s = Server(env, tmp_path, tmp_path / f"{name}.log", role=role)
        s.start()
        return s

    procs: list[Server] = []
    try:
        # The first API process migrates and makes the admin; the others find both.
        for name, role in (("api1", "api"), ("api2", "api"), ("w1", "worker"), ("w2", "worker")):
            procs.append(start(name, role))
        api1, api2, w1, w2 = procs
        # A worker serves /health only.
        r = await asyncio.to_thread(httpx.get, f"{w1.url}{V1}/auth/me", timeout=10)
        assert r.status_code == 404, r.text
        async with (
            httpx.AsyncClient(base_url=api1.url, timeout=30) as c1,
            httpx.AsyncClient(base_url=api2.url, timeout=30) as c2,
        ):
            admin = await _login(c1)
            r = await c1.post(
                f"{V1}/resources/hosts",
                json={"hostname": "podman", "driver": "docker", "uri": podman.uri},
                headers=admin,
            )
            assert r.status_code == 201, r.text
            r = await c2.post(
                f"{V1}/auth/register", json={"email": "roles@example.com", "password": PASSWORD}
            )
            assert r.status_code == 201, r.text
            user = r.json()["data"]
            headers = {"Authorization": f"Bearer {user['access_token']}"}
            project = user["user"]["default_project_id"]

            # Containers through either API: each runs once, on a worker.
            made = {}
            for c, name in ((c1, "via-one"), (c2, "via-two")):
                r = await c.post(
                    f"{V1}/containers",
                    json={"name": name, "image": TEST_IMAGE, "replicas": 2},
                    headers=headers,
                )
                assert r.status_code == 202, r.text
                made[name] = r.json()["data"]["container"]["id"]

            async def running() -> bool:
                r = await c1.get(f"{V1}/containers", headers=headers)
                items = r.json()["data"]["items"]
                return len(items) == 2 and {i["status"] for i in items} == {"running"}

            await eventually(running, "both containers running", within=180)
            engine = podman.containers(project)
            assert len(engine) == 4, engine  # 2 containers x 2 replicas, no more

            # An alert rule that fires at once for every container.
            r = await c2.post(
                f"{V1}/monitoring/alert-rules",
                json={
                    "name": "any-memory",
                    "metric": "memory_bytes",
                    "comparison": "gte",
                    "threshold": 0,
                    "project_id": project,
                },
                headers=headers,
            )
            assert r.status_code == 201, r.text

            # A key made through one API, revoked there: the other refuses it next.
            r = await c1.post(
                f"{V1}/api-keys", json={"name": "roles", "scopes": ["*"]}, headers=headers
            )
            assert r.status_code == 201, r.text
            key = r.json()["data"]
            by_key = {"X-API-Key": key["key"]}
            assert (await c2.get(f"{V1}/containers", headers=by_key)).status_code == 200
            r = await c1.delete(f"{V1}/api-keys/{key['id']}", headers=headers)
            assert r.status_code == 200, r.text
            r = await c2.get(f"{V1}/containers", headers=by_key)
            assert r.status_code == 401, r.text

            # The loops: every lease held by one worker, the same one.
            held = await eventually(
                lambda: _held_by_one(api1.url), "every loop's lease held", within=30
            )
            holder, standby = (w1, w2) if held[0] == w1.pid else (w2, w1)
            assert held[0] in (w1.pid, w2.pid)
            before = await _leases(api2.url)
            await eventually(
                lambda: _samples(db, made["via-one"], 3), "the collector's samples", within=60
            )
            # Some usage to charge: one container stops (its usage record closes).
            r = await c1.put(f"{V1}/containers/{made['via-two']}/stop", headers=headers)
            assert r.status_code == 202, r.text

            dead = holder.pid
            holder.kill(signal.SIGKILL)
            killed = time.monotonic()
            moved = await eventually(
                lambda: _held_by_one(api1.url, not_pid=dead),
                "the standby worker took every loop over",
                within=4 * LEASE + 20,
            )
            took = time.monotonic() - killed
            assert moved[0] == standby.pid
            after = await _leases(api1.url)
            assert all(after[n]["token"] > before[n]["token"] for n in LOOPS), (before, after)
            count = len(await _samples(db, made["via-one"], 0))
            await eventually(
                lambda: _samples(db, made["via-one"], count + 2),
                "samples after the takeover",
                within=60,
            )

            async def charged() -> bool:
                rows = await _count(
                    db, select(UsageRecord.id).where(UsageRecord.charge_id.is_not(None))
                )
                return bool(rows)

            await eventually(charged, "a charge of the stopped container", within=60)
        # No duplicates: samples, charges, alerts, containers.
        for cid in made.values():
            ts = sorted(r[0] for r in await _samples(db, cid, 0))
            gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
            # One collector: a pass every interval; two would interleave their passes.
            assert all(g >= METRICS_INTERVAL * 1000 / 2 for g in gaps), gaps
        dup = await _count(
            db,
            select(LedgerEntry.key, func.count())
            .where(LedgerEntry.kind == "charge")
            .group_by(LedgerEntry.key)
            .having(func.count() > 1),
        )
        assert dup == []
        charges = await _count(db, select(LedgerEntry.id).where(LedgerEntry.kind == "charge"))
        assert charges
        alerts = await _count(
            db,
            select(Alert.rule_id, Alert.resource_id, func.count())
            .where(Alert.kind == "rule")
            .group_by(Alert.rule_id, Alert.resource_id),
        )
        assert alerts and all(n == 1 for *_, n in alerts), alerts
        assert len(podman.containers(project)) == 4
        print(f"takeover after kill -9: {took:.1f}s (lease {LEASE}s)")
    finally:
        for s in procs:
            s.kill(signal.SIGTERM)


async def _held_by_one(url: str, not_pid: int | None = None) -> tuple[int, ...] | None:
    """(pid,) when one live process holds every loop's lease (not ``not_pid``)."""
    try:
        leases = await _leases(url)
    except (httpx.HTTPError, AssertionError):
        return None
    pids = set()
    for name in LOOPS:
        holder = leases.get(name, {}).get("holder")
        if holder is None:
            return None
        pids.add(int(holder.split(":")[1]))
    if len(pids) != 1 or not_pid in pids:
        return None
    return (pids.pop(),)


async def _samples(db: AsyncEngine, resource: str, at_least: int) -> list[Any]:
    rows = await _count(
        db,
        select(MetricSample.ts)
        .where(MetricSample.resource_id == resource, MetricSample.metric == "memory_bytes")
        .order_by(MetricSample.ts),
    )
    return rows if len(rows) >= at_least else []
