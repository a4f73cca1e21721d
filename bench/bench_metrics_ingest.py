"""Metric ingest: MetricStore's write path against the database driver's own bulk
insert of the same rows, same table, same run.

    python bench/bench_metrics_ingest.py [--database sqlite] [--database postgresql]
                                         [--resources 1000] [--rounds 12] [--json out.json]

For each backend it makes a fresh database (SQLite in a temp dir; PostgreSQL via
``NEFOS_BENCH_POSTGRES_URL`` or ``NEFOS_TEST_POSTGRES_URL``, dropped afterwards),
migrates it, and then, ``--rounds`` times, writes one collector pass of samples
(``--resources`` VMs x 7 metrics) each way, alternating which goes first:

- **Nefos**: ``MetricStore.write(samples)`` from ``Sample`` objects, as the
  collector calls it (SQLAlchemy's async engine; ``executemany`` on SQLite,
  ``COPY`` on PostgreSQL);
- **baseline**: the driver alone with the rows already as tuples: the ``sqlite3``
  module's ``executemany`` in one transaction (same pragmas: WAL,
  ``synchronous=NORMAL``), or asyncpg's ``copy_records_to_table``.

Both write into ``metric_samples`` (different resource ids), so both meet the
same, growing table and index. It prints samples per second (median round) and
the ratio Nefos / baseline (aim: at least 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api import machine

from nefos.db.session import Database
from nefos.monitoring.store import COLUMNS, MetricStore, Retention, sample_row
from nefos.monitoring.types import Metric, ResourceKind, Sample

AIM = 0.5


def postgres_admin_url() -> str | None:
    return os.environ.get("NEFOS_BENCH_POSTGRES_URL") or os.environ.get("NEFOS_TEST_POSTGRES_URL")


@asynccontextmanager
async def fresh_database(backend: str) -> AsyncIterator[tuple[str, str]]:
    """(SQLAlchemy URL, driver URL or path) of a new, migrated database."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/metrics.db"
            db = Database(f"sqlite+aiosqlite:///{path}")
            await db.migrate()
            await db.dispose()
            yield f"sqlite+aiosqlite:///{path}", path
        return
    import asyncpg

    admin = postgres_admin_url()
    assert admin
    name = f"nefos_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    plain = admin.rsplit("/", 1)[0] + f"/{name}"
    url = plain.replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        db = Database(url)
        await db.migrate()
        await db.dispose()
        yield url, plain
    finally:
        conn = await asyncpg.connect(admin)
        try:
            # An autovacuum worker busy with the bench's tables holds the database and
            # is not ours to terminate: it ends (or is cancelled by PostgreSQL) soon.
            for attempt in range(60):
                try:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    break
                except (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectInUseError):
                    if attempt == 59:
                        raise
                    await asyncio.sleep(1)
        finally:
            await conn.close()


def one_pass(prefix: str, resources: int, ts: datetime) -> list[Sample]:
    return [
        Sample(ResourceKind.VM, f"{prefix}-{i:06d}", metric, float(i % 97), ts, "bench-project")
        for i in range(resources)
        for metric in Metric
    ]


async def run(backend: str, resources: int, rounds: int) -> dict[str, Any]:
    async with fresh_database(backend) as (url, raw_target):
        db = Database(url)
        day = timedelta(days=1)
        store = MetricStore(db, retention=Retention(day, day, day), interval=15)
        if backend == "sqlite":
            raw: Any = sqlite3.connect(raw_target, isolation_level=None)
            raw.execute("PRAGMA journal_mode=WAL")
            raw.execute("PRAGMA synchronous=NORMAL")
            insert = (
                f"INSERT INTO metric_samples ({', '.join(COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(COLUMNS))})"
            )

            async def baseline(rows: list[Any]) -> None:
                raw.execute("BEGIN")
                raw.executemany(insert, rows)
                raw.execute("COMMIT")
        else:
            import asyncpg

            raw = await asyncpg.connect(raw_target)

            async def baseline(rows: list[Any]) -> None:
                await raw.copy_records_to_table("metric_samples", records=rows, columns=COLUMNS)

        nefos_rates: list[float] = []
        base_rates: list[float] = []
        start = datetime(2026, 1, 1, tzinfo=UTC)
        try:
            for r in range(rounds + 1):  # round 0 warms up, uncounted
                ts = start + timedelta(seconds=15 * r)
                samples = one_pass("nefos", resources, ts)
                rows = [sample_row(s) for s in one_pass("base", resources, ts)]

                async def nefos(samples: list[Sample] = samples) -> None:
                    await store.write(samples)

                async def base(rows: list[Any] = rows) -> None:
                    await baseline(rows)

                ways = [(nefos, nefos_rates), (base, base_rates)]
                for job, rates in ways if r % 2 == 0 else reversed(ways):
                    began = time.perf_counter()
                    await job()
                    elapsed = time.perf_counter() - began
                    if r:
                        rates.append(len(samples) / elapsed)
        finally:
            if backend == "sqlite":
                raw.close()
            else:
                await raw.close()
            await db.dispose()
        nefos_rate = statistics.median(nefos_rates)
        base_rate = statistics.median(base_rates)
        return {
            "backend": backend,
            "samples_per_round": resources * len(Metric),
            "rounds": rounds,
            "nefos_samples_per_s": round(nefos_rate),
            "baseline_samples_per_s": round(base_rate),
            "baseline": "sqlite3 executemany" if backend == "sqlite" else "asyncpg COPY",
            "ratio": round(nefos_rate / base_rate, 3),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--database", action="append", choices=["sqlite", "postgresql"],
        help="Backend (repeatable; default sqlite).",
    )  # fmt: skip
    parser.add_argument("--resources", type=int, default=1000, help="VMs sampled a pass.")
    parser.add_argument("--rounds", type=int, default=12, help="Passes written each way.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args, _ignored = parser.parse_known_args(argv)
    backends = args.database or ["sqlite"]
    print(f"bench_metrics_ingest on {machine()}")
    results = []
    for backend in backends:
        if backend == "postgresql" and not postgres_admin_url():
            print("postgresql: NEFOS_TEST_POSTGRES_URL not set, skipped")
            continue
        result = asyncio.run(run(backend, args.resources, args.rounds))
        results.append(result)
        print(
            f"{backend:<10} {result['samples_per_round']} samples a pass: "
            f"Nefos {result['nefos_samples_per_s']:>9,} samples/s, "
            f"{result['baseline']} {result['baseline_samples_per_s']:>9,} samples/s, "
            f"ratio {result['ratio']:.2f} (aim >= {AIM})"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
