"""Placement with persisted allocations: 5,000 simulated hosts, 10,000 placements.

    python bench/bench_placement.py [--database sqlite] [--database postgresql]
                                    [--hosts 5000] [--placements 10000]
                                    [--replicas 1] [--replicas 10] [--repeat 1]
                                    [--seed 1] [--json results.json]

The services layer's placement, end to end against a real database. Each container
is placed exactly as ``ContainerService.create`` places one
(``src/nefos/services/containers.py``):

    a new session; begin_write (BEGIN IMMEDIATE on SQLite)
    under Placer.lock:
        Placer.allocate(session, PlacementRequest(count=R, ...),
                        replicas=ReplicaRows(container_id))  # pool + guarded UPDATEs
                                                             # + the R replica rows
        commit

``--placements`` placements are made as containers of R replicas (``--replicas``;
default: both 1 and 10), one transaction per container: R = 1 is one placement per
transaction, the API's single-replica create; R = 10 is a ten-replica create, ten
placements per transaction. What this leaves out of ``create`` is the rest of that
request: the name and quota checks, the ``Container`` and ``Operation`` rows, the
host ping, and HTTP.

Set-up (not measured): a fresh database (a SQLite file in a temp dir, or a
PostgreSQL database made through ``NEFOS_BENCH_POSTGRES_URL`` or
``NEFOS_TEST_POSTGRES_URL`` and dropped afterwards), migrated; ``--hosts`` active
``sim`` hosts (``sim://bench-N?cpus=64&memory_mb=262144&disk_gb=2000``, with the
capacity the sim driver reads from that URI) inserted in bulk, not registered
through the API's probe; and the ``Container`` rows the replicas belong to.

The **baseline**, on an identical fresh database in the same run: the same
transactions holding the same guarded ``UPDATE hosts ... WHERE <capacity guard>``
and ``INSERT INTO container_replicas`` per placement, issued with the raw driver
(``sqlite3`` with Nefos's pragmas, ``asyncpg``) on hosts taken round-robin, with no
scheduler. The ratio is Nefos's placements/s over the baseline's.

After every run the benchmark checks that every placement has its row, that each
host's ``used_*`` columns equal the sums of its replicas, and that no host is past
its capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text

from nefos.config import Settings, async_database_url
from nefos.db.models import Container, Host, Organisation, Project
from nefos.db.session import Database, begin_write
from nefos.drivers.sim import parse_uri
from nefos.scheduler import PlacementRequest, SchedulerConfig
from nefos.services.placement import Placer, ReplicaRows, scheduler_config

HOST_URI = "sim://bench-{i}?cpus=64&memory_mb=262144&disk_gb=2000"
AIM = 1000.0  # placements/s, including persistence


# --- the workload ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Want:
    cpu_milli: int
    memory_mb: int
    disk_gb: int


def workload(n: int, seed: int) -> list[Want]:
    """Container-sized requests: 0.25-4 CPUs, 64 MiB-8 GiB, 0-40 GB of disk."""
    rng = random.Random(seed)
    return [
        Want(
            rng.choice([250, 500, 1000, 2000, 4000]),
            rng.choice([64, 256, 512, 1024, 2048, 4096, 8192]),
            rng.choice([0, 1, 10, 20, 40]),
        )
        for _ in range(n)
    ]


def settings(database_url: str) -> Settings:
    """Nefos's default placement policy (the Settings defaults, no environment)."""
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=database_url,
        secret_key="bench-secret-key-that-is-long-enough-for-hs256",
    )


# --- databases ------------------------------------------------------------------------
def postgres_admin_url() -> str | None:
    return os.environ.get("NEFOS_BENCH_POSTGRES_URL") or os.environ.get("NEFOS_TEST_POSTGRES_URL")


@asynccontextmanager
async def fresh_database(backend: str, tmp: Path) -> AsyncIterator[str]:
    """A new, empty database's plain URL (sqlite:///... or postgresql://...)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp / f'placement-{uuid.uuid4().hex[:8]}.db'}"
        return
    import asyncpg

    admin = postgres_admin_url()
    if not admin:
        raise SystemExit("set NEFOS_BENCH_POSTGRES_URL or NEFOS_TEST_POSTGRES_URL")
    name = f"nefos_bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def set_up(url: str, hosts: int, containers: int) -> tuple[list[str], list[str]]:
    """Migrate, then bulk-insert the hosts and the containers; their ids."""
    db = Database(async_database_url(url))
    try:
        await db.migrate()
        now = datetime.now(UTC)
        org_id, project_id = str(uuid.uuid4()), str(uuid.uuid4())
        host_rows: list[dict[str, Any]] = []
        for i in range(hosts):
            uri = HOST_URI.format(i=i)
            cap = parse_uri(uri)
            host_rows.append(
                {
                    "id": str(uuid.uuid4()),
                    "hostname": cap.host,
                    "driver": "sim",
                    "uri": uri,
                    "hypervisor_type": "sim",
                    "status": "active",
                    "enabled": True,
                    "cpu_cores": cap.cpus,
                    "memory_mb": cap.memory_mb,
                    "storage_gb": cap.disk_gb,
                    "max_instances": None,
                    "used_cpu_milli": 0,
                    "used_memory_mb": 0,
                    "used_storage_gb": 0,
                    "instance_count": 0,
                    "last_seen_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        container_rows = [
            {
                "id": str(uuid.uuid4()),
                "project_id": project_id,
                "name": f"bench-{i:05d}",
                "image": "bench:latest",
                "command": None,
                "ports": [],
                "environment": {},
                "resources": {},
                "cpu_milli": 0,  # the sizes live in the workload; nothing reads these
                "memory_mb": 0,
                "storage_gb": 0,
                "replicas": 1,
                "status": "creating",
                "desired": "running",
                "created_at": now,
                "updated_at": now,
            }
            for i in range(containers)
        ]
        async with db.engine.begin() as conn:
            await conn.execute(
                insert(Organisation),
                [{"id": org_id, "name": "Bench", "slug": f"bench-{org_id[:8]}", "kind": "standard",
                  "is_personal": False, "description": "", "created_at": now, "updated_at": now}],
            )  # fmt: skip
            await conn.execute(
                insert(Project),
                [{"id": project_id, "organisation_id": org_id, "name": "bench", "description": "",
                  "is_default": False, "created_at": now, "updated_at": now}],
            )  # fmt: skip
            await conn.execute(insert(Host), host_rows)
            await conn.execute(insert(Container), container_rows)
        if db.is_sqlite:
            async with db.engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return [h["id"] for h in host_rows], [c["id"] for c in container_rows]
    finally:
        await db.dispose()


# --- the measured paths ----------------------------------------------------------------
@dataclass
class Result:
    backend: str
    variant: str
    replicas: int  # placements per transaction
    placements: int
    wall_s: float
    cpu_s: float  # this process's CPU time (all threads)
    races: int = 0  # placements that lost a guarded UPDATE and re-placed (Nefos only)

    @property
    def rate(self) -> float:
        return self.placements / self.wall_s if self.wall_s else 0.0


async def nefos_placements(
    url: str, wants: Sequence[Want], containers: Sequence[str], replicas: int
) -> Result:
    """Per container: Placer.allocate (``replicas`` replicas, with their
    ContainerReplica rows) + commit, in one transaction, as ContainerService.create
    does (``_place``)."""
    db = Database(async_database_url(url))
    placer = Placer(scheduler_config(settings(url)))
    try:
        async with db.engine.connect() as conn:  # open the pool's first connection
            await conn.execute(text("SELECT 1"))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for want, container_id in zip(wants, containers, strict=True):
            async with db.sessionmaker() as session:
                await begin_write(session)
                try:
                    async with placer.lock:
                        allocations = await placer.allocate(
                            session,
                            PlacementRequest(
                                driver="sim",
                                cpus=want.cpu_milli / 1000,
                                memory_mb=want.memory_mb,
                                disk_gb=want.disk_gb,
                                count=replicas,
                                anti_affinity_group=container_id,
                            ),
                            replicas=ReplicaRows(container_id, 0),
                        )
                        assert len(allocations) == replicas
                        await session.commit()
                except BaseException:
                    await session.rollback()
                    placer.invalidate()
                    raise
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        await db.dispose()
    return Result(
        _backend(url), "Nefos", replicas, len(wants) * replicas, wall, cpu, placer.claims_lost
    )


def _backend(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def _guarded_update(config: SchedulerConfig, mark: str) -> str:
    """Placer._claim's UPDATE, written out (``mark`` is the driver's placeholder)."""
    p = [mark.format(n=n) for n in range(1, 8)]
    return (
        "UPDATE hosts SET used_cpu_milli = used_cpu_milli + {0}, "
        "used_memory_mb = used_memory_mb + {1}, used_storage_gb = used_storage_gb + {2}, "
        "instance_count = instance_count + 1, updated_at = {3} "
        "WHERE id = {4} AND status = 'active' AND enabled "
        "AND used_cpu_milli + {0} <= cpu_cores * {cpu} "
        "AND used_memory_mb + {1} <= memory_mb * {mem} - {rmem} "
        "AND used_storage_gb + {2} <= storage_gb * {disk} - {rdisk} "
        "AND (max_instances IS NULL OR instance_count < max_instances)"
    ).format(
        *p,
        cpu=float(config.cpu_allocation_ratio * 1000),
        mem=float(config.memory_allocation_ratio),
        rmem=config.reserved_host_memory_mb,
        disk=float(config.disk_allocation_ratio),
        rdisk=config.reserved_host_disk_gb,
    )


_INSERT = (
    "INSERT INTO container_replicas (id, container_id, slot, host_id, cpu_milli, memory_mb, "
    "storage_gb, driver_id, state, published, created_at, updated_at) "
    "VALUES ({0}, {1}, {2}, {3}, {4}, {5}, {6}, NULL, 'pending', '[]', {7}, {7})"
)


def raw_sqlite(
    url: str, wants: Sequence[Want], containers: Sequence[str], replicas: int, hosts: list[str]
) -> Result:
    config = scheduler_config(settings(url))
    update = _guarded_update(config, "?{n}")
    insert_sql = _INSERT.format(*(f"?{n}" for n in range(1, 9)))
    conn = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
    host_index = 0
    try:
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000",
                       "foreign_keys=ON"):  # fmt: skip
            conn.execute(f"PRAGMA {pragma}")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for want, container_id in zip(wants, containers, strict=True):
            now = datetime.now(UTC).replace(tzinfo=None).isoformat(" ")
            conn.execute("BEGIN IMMEDIATE")
            for slot in range(replicas):
                host = hosts[host_index % len(hosts)]
                host_index += 1
                cur = conn.execute(
                    update, (want.cpu_milli, want.memory_mb, want.disk_gb, now, host)
                )
                if cur.rowcount != 1:
                    raise RuntimeError(f"the raw baseline's UPDATE of {host} matched no row")
                conn.execute(
                    insert_sql,
                    (str(uuid.uuid4()), container_id, slot, host, want.cpu_milli, want.memory_mb,
                     want.disk_gb, now),
                )  # fmt: skip
            conn.execute("COMMIT")
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        conn.close()
    return Result("sqlite", "raw sqlite3", replicas, len(wants) * replicas, wall, cpu)


async def raw_postgres(
    url: str, wants: Sequence[Want], containers: Sequence[str], replicas: int, hosts: list[str]
) -> Result:
    import asyncpg

    config = scheduler_config(settings(url))
    update = _guarded_update(config, "${n}")
    insert_sql = _INSERT.format(*(f"${n}" for n in range(1, 9)))
    conn = await asyncpg.connect(url)
    host_index = 0
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for want, container_id in zip(wants, containers, strict=True):
            now = datetime.now(UTC)
            async with conn.transaction():
                for slot in range(replicas):
                    host = hosts[host_index % len(hosts)]
                    host_index += 1
                    status = await conn.execute(
                        update, want.cpu_milli, want.memory_mb, want.disk_gb, now, host
                    )
                    if status != "UPDATE 1":
                        raise RuntimeError(f"the raw baseline's UPDATE of {host} matched no row")
                    await conn.execute(
                        insert_sql, str(uuid.uuid4()), container_id, slot, host, want.cpu_milli,
                        want.memory_mb, want.disk_gb, now,
                    )  # fmt: skip
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        await conn.close()
    return Result("postgresql", "raw asyncpg", replicas, len(wants) * replicas, wall, cpu)


async def check(url: str, placements: int) -> None:
    """Every placement persisted; used_* = the sums of the replicas; nothing overbooked."""
    config = scheduler_config(settings(url))
    db = Database(async_database_url(url))
    try:
        async with db.engine.connect() as conn:
            n = (await conn.execute(text("SELECT count(*) FROM container_replicas"))).scalar_one()
            if n != placements:
                raise RuntimeError(f"{n} replica rows after {placements} placements")
            wrong = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM hosts h LEFT JOIN (SELECT host_id, "
                        "sum(cpu_milli) c, sum(memory_mb) m, sum(storage_gb) d, count(*) k "
                        "FROM container_replicas GROUP BY host_id) r ON r.host_id = h.id "
                        "WHERE h.used_cpu_milli != coalesce(r.c, 0) "
                        "OR h.used_memory_mb != coalesce(r.m, 0) "
                        "OR h.used_storage_gb != coalesce(r.d, 0) "
                        "OR h.instance_count != coalesce(r.k, 0) "
                        "OR h.used_cpu_milli > h.cpu_cores * :cpu "
                        "OR h.used_memory_mb > h.memory_mb * :mem - :rmem "
                        "OR h.used_storage_gb > h.storage_gb * :disk"
                    ),
                    {
                        "cpu": config.cpu_allocation_ratio * 1000,
                        "mem": config.memory_allocation_ratio,
                        "rmem": config.reserved_host_memory_mb,
                        "disk": config.disk_allocation_ratio,
                    },
                )
            ).scalar_one()
            if wrong:
                raise RuntimeError(f"{wrong} hosts disagree with their replicas or are overbooked")
    finally:
        await db.dispose()


# --- the benchmark ---------------------------------------------------------------------
async def bench_backend(
    backend: str, *, hosts: int, placements: int, replicas: list[int], seed: int, repeat: int
) -> list[tuple[Result, Result]]:
    pairs: list[tuple[Result, Result]] = []
    with tempfile.TemporaryDirectory(prefix=f"nefos-bench-placement-{backend}-") as tmp_name:
        tmp = Path(tmp_name)
        for per_tx in replicas:
            wants = workload(placements // per_tx, seed)
            for round_ in range(repeat):
                got: dict[str, Result] = {}
                # Alternate which variant goes first, so drift on a shared machine
                # does not always favour the same one.
                order = ("nefos", "raw") if round_ % 2 == 0 else ("raw", "nefos")
                for variant in order:
                    async with fresh_database(backend, tmp) as url:
                        t0 = time.perf_counter()
                        host_ids, container_ids = await set_up(url, hosts, len(wants))
                        print(
                            f"[{backend}] {per_tx} per transaction, round {round_ + 1}, "
                            f"{variant}: set up {len(host_ids):,} hosts and "
                            f"{len(container_ids):,} containers in "
                            f"{time.perf_counter() - t0:.1f}s",
                            flush=True,
                        )
                        if variant == "nefos":
                            result = await nefos_placements(url, wants, container_ids, per_tx)
                        elif backend == "sqlite":
                            result = await asyncio.to_thread(
                                raw_sqlite, url, wants, container_ids, per_tx, host_ids
                            )
                        else:
                            result = await raw_postgres(url, wants, container_ids, per_tx, host_ids)
                        await check(url, len(wants) * per_tx)
                        print(f"[{backend}] {format_result(result)}", flush=True)
                        got[variant] = result
                pairs.append((got["nefos"], got["raw"]))
    return pairs


def format_result(r: Result) -> str:
    races = f", {r.races} lost races" if r.races else ""
    return (
        f"{r.variant}, {r.replicas} per transaction: {r.placements:,} placements in "
        f"{r.wall_s:.2f}s "
        f"(CPU {r.cpu_s:.2f}s) = {r.rate:,.0f}/s{races}"
    )


def machine() -> str:
    mem = ""
    with suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.1f} GiB memory"
    load = ""
    with suppress(OSError):
        load = f"; load average {os.getloadavg()[0]:.2f}"
    return (
        f"{os.cpu_count()} CPUs{mem}, {platform.machine()}, "
        f"Python {platform.python_version()}{load}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument(
        "--database", action="append", choices=["sqlite", "postgresql"],
        help="Backend (repeatable). Default: sqlite, and postgresql when "
        "NEFOS_BENCH_POSTGRES_URL or NEFOS_TEST_POSTGRES_URL is set.",
    )  # fmt: skip
    parser.add_argument("--hosts", type=int, default=5000)
    parser.add_argument("--placements", type=int, default=10_000)
    parser.add_argument(
        "--replicas", type=int, action="append",
        help="Placements per transaction: containers of this many replicas (repeatable; "
        "default 1 and 10).",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="Rounds per setting.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args, ignored = parser.parse_known_args(argv)
    if ignored:
        print(f"ignoring {' '.join(ignored)}: this benchmark has no such option")
    if not (1 <= args.hosts <= 100_000 and 1 <= args.placements <= 1_000_000):
        parser.error("hosts 1-100,000, placements 1-1,000,000")
    if not 1 <= args.repeat <= 20:
        parser.error("repeat 1-20")
    replicas = list(dict.fromkeys(args.replicas or [1, 10]))
    if not all(1 <= r <= 64 and args.placements % r == 0 for r in replicas):
        parser.error("replicas 1-64 (a container's range), dividing --placements")
    backends = args.database or ["sqlite"] + (["postgresql"] if postgres_admin_url() else [])
    if "postgresql" in backends and not postgres_admin_url():
        print("NEFOS_BENCH_POSTGRES_URL / NEFOS_TEST_POSTGRES_URL not set: PostgreSQL skipped")
        backends = [b for b in backends if b != "postgresql"]

    print(f"Machine: {machine()}")
    print(
        f"{args.hosts:,} sim hosts (64 CPUs, 256 GiB, 2,000 GB each); {args.placements:,} "
        f"placements as containers of {' or '.join(map(str, replicas))} replica(s), one "
        "transaction per container"
    )
    pairs: list[tuple[Result, Result]] = []
    for backend in dict.fromkeys(backends):
        pairs += asyncio.run(
            bench_backend(
                backend, hosts=args.hosts, placements=args.placements, replicas=replicas,
                seed=args.seed, repeat=args.repeat,
            )
        )  # fmt: skip
    print()
    print(
        "| backend | per transaction | nefos placements/s | raw placements/s | ratio "
        "| nefos µs/placement | raw µs/placement | nefos CPU s | raw CPU s | lost races |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, r in pairs:
        print(
            f"| {n.backend} | {n.replicas} | {n.rate:,.0f} | {r.rate:,.0f} | {n.rate / r.rate:.2f} "
            f"| {1e6 / n.rate:,.0f} | {1e6 / r.rate:,.0f} | {n.cpu_s:.2f} | {r.cpu_s:.2f} "
            f"| {n.races} |"
        )
    print(
        f"\nratio = Nefos placements/s / raw placements/s (same run). Aim: at least "
        f"{AIM:,.0f} Nefos placements/s. CPU s = this process's CPU time; on PostgreSQL "
        "the database server's is not in it."
    )
    for n, _ in pairs:
        verdict = "met" if n.rate >= AIM else "NOT met"
        print(
            f"{n.backend}, {n.replicas} per transaction: {n.rate:,.0f} placements/s: aim {verdict}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "rows": [
                        {"nefos": asdict(n) | {"rate": n.rate}, "raw": asdict(r) | {"rate": r.rate},
                         "ratio": n.rate / r.rate}
                        for n, r in pairs
                    ],
                },
                indent=2,
            ),
            encoding="utf-8",
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
