"""The service health checker at scale: 1,000 instances checked every 10 s.

    python bench/bench_health.py [--database sqlite] [--database postgresql]
                                 [--instances 1000] [--interval 10] [--duration 40]

Set-up (not measured): a fresh, migrated database with ``--instances`` containers
of one replica each on one host, every replica "publishing" the port of one HTTP
server on loopback, each service with an HTTP check every ``--interval`` seconds.
The HTTP server runs in a child process (``http.server``), so its CPU is not the
checker's.

Measured: ``HealthChecker.run_once`` every second (as the ``service-checks`` lease
runs it) for ``--duration`` seconds: the checker's CPU share (process CPU time over
wall time), the checks made, and the lag of the slowest check (how late, after its
schedule, the latest check of a pass starts).

The **baseline**, in the same run: the same HTTP requests on the same schedule, by
a bare loop (httpx, at most 200 at once, no database, no state): the least any
checker pays. The ratio is the checker's CPU share over the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_placement import fresh_database

from nefos.config import async_database_url
from nefos.db.models import (
    Container,
    ContainerReplica,
    Host,
    Organisation,
    Project,
    ServiceSettings,
)
from nefos.db.session import Database
from nefos.monitoring.servicehealth import TICK, HealthChecker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def http_server(directory: Path) -> Any:
    port = free_port()
    (directory / "index.html").write_text("ok\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise SystemExit("the HTTP server did not start")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def set_up(url: str, instances: int, port: int, interval: float) -> None:
    db = Database(async_database_url(url))
    try:
        await db.migrate()
        now = datetime.now(UTC)
        org, project, host = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
        containers = [str(uuid.uuid4()) for _ in range(instances)]
        check = {"type": "http", "path": "/", "interval": interval, "timeout": 2.0}
        async with db.engine.begin() as conn:
            await conn.execute(insert(Organisation), [{
                "id": org, "name": "Bench", "slug": f"bench-{org[:8]}", "kind": "standard",
                "is_personal": False, "description": "", "created_at": now, "updated_at": now,
            }])  # fmt: skip
            await conn.execute(insert(Project), [{
                "id": project, "organisation_id": org, "name": "bench", "is_default": True,
                "description": "",
                "created_at": now, "updated_at": now,
            }])  # fmt: skip
            await conn.execute(insert(Host), [{
                "id": host, "hostname": "bench", "ip_address": "127.0.0.1", "driver": "sim",
                "uri": "sim://bench", "hypervisor_type": "sim", "status": "active",
                "enabled": True, "cpu_cores": 64, "memory_mb": 262144, "storage_gb": 2000,
                "used_cpu_milli": 0, "used_memory_mb": 0, "used_storage_gb": 0,
                "instance_count": 0, "created_at": now, "updated_at": now,
            }])  # fmt: skip
            await conn.execute(insert(Container), [{
                "id": cid, "project_id": project, "name": f"svc-{i:05d}", "image": "bench",
                "command": None, "ports": ["80"], "environment": {}, "resources": {},
                "cpu_milli": 100, "memory_mb": 64, "storage_gb": 0, "replicas": 1,
                "status": "running", "desired": "running", "created_at": now, "updated_at": now,
            } for i, cid in enumerate(containers)])  # fmt: skip
            await conn.execute(insert(ContainerReplica), [{
                "id": str(uuid.uuid4()), "container_id": cid, "slot": 0, "host_id": host,
                "cpu_milli": 100, "memory_mb": 64, "storage_gb": 0, "driver_id": f"d-{cid}",
                "state": "running", "created_at": now, "updated_at": now,
                "published": [{"container_port": 80, "protocol": "tcp",
                               "host_ip": "127.0.0.1", "host_port": port}],
            } for cid in containers])  # fmt: skip
            await conn.execute(insert(ServiceSettings), [{
                "id": cid, "container_id": cid, "version": "1.0.0", "tags": [], "metadata": {},
                "check": check,
                "created_at": now, "updated_at": now,
            } for cid in containers])  # fmt: skip
    finally:
        await db.dispose()


class _Parts:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.settings = None
        self.drivers = None


async def run_checker(url: str, duration: float) -> dict[str, float]:
    db = Database(async_database_url(url))
    checker = HealthChecker(_Parts(db))  # type: ignore[arg-type]
    lags: list[float] = []
    try:
        await checker.run_once()  # the first pass spreads the schedule (not measured)
        cpu, wall = time.process_time(), time.perf_counter()
        checks = checker.checks
        end = wall + duration
        while time.perf_counter() < end:
            started = time.perf_counter()
            await checker.run_once()
            lags.append(checker.lag)
            await asyncio.sleep(max(TICK - (time.perf_counter() - started), 0.0))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        return {
            "cpu_share": cpu / wall,
            "checks": checker.checks - checks,
            "lag_max": max(lags, default=0.0),
            "wall": wall,
        }
    finally:
        await checker.close()
        await db.dispose()


async def run_bare(instances: int, port: int, interval: float, duration: float) -> dict[str, float]:
    """The same requests on the same schedule, and nothing else."""
    gate = asyncio.Semaphore(200)
    offsets = [interval * i / instances for i in range(instances)]
    async with httpx.AsyncClient(
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=0), trust_env=False
    ) as http:

        async def one() -> None:
            async with gate:
                with contextlib.suppress(httpx.HTTPError):
                    await http.get(f"http://127.0.0.1:{port}/", timeout=2.0)

        cpu, wall = time.process_time(), time.perf_counter()
        due = [wall + o for o in offsets]
        checks = 0
        end = wall + duration
        while time.perf_counter() < end:
            now = time.perf_counter()
            ready = [i for i, d in enumerate(due) if d <= now]
            for i in ready:
                due[i] += interval
            await asyncio.gather(*(one() for _ in ready))
            checks += len(ready)
            await asyncio.sleep(max(TICK - (time.perf_counter() - now), 0.0))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu_share": cpu / wall, "checks": checks, "wall": wall}


async def main_async(args: argparse.Namespace) -> None:
    print(
        f"{args.instances} instances, an HTTP check every {args.interval:g} s, "
        f"{args.duration:g} s measured; python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cpus"
    )
    print(f"{'database':<11} {'checker cpu':>12} {'bare cpu':>9} {'ratio':>6} "
          f"{'checks':>7} {'bare':>6} {'lag max':>8}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, http_server(Path(tmp)) as port:
        for backend in args.database or ["sqlite"]:
            async with fresh_database(backend, Path(tmp)) as url:
                await set_up(url, args.instances, port, args.interval)
                nefos = await run_checker(url, args.duration)
            bare = await run_bare(args.instances, port, args.interval, args.duration)
            ratio = nefos["cpu_share"] / bare["cpu_share"] if bare["cpu_share"] else float("inf")
            print(
                f"{backend:<11} {nefos['cpu_share']:>11.1%} {bare['cpu_share']:>8.1%} "
                f"{ratio:>6.2f} {nefos['checks']:>7.0f} {bare['checks']:>6.0f} "
                f"{nefos['lag_max']:>7.2f}s",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=40.0)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
