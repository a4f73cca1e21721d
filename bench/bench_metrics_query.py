"""Metric query: 24 h of one VM at 1-minute resolution, with 1,000 VMs of history
stored, through MetricStore.series against the driver's own SELECT of the same rows.

    python bench/bench_metrics_query.py [--database sqlite] [--database postgresql]
                                        [--vms 1000] [--metrics 2] [--queries 200]
                                        [--json out.json]

For each backend it makes a fresh database (as bench_metrics_ingest.py), stores a
day of 1-minute rollups for ``--vms`` VMs and ``--metrics`` metrics each (1,440
buckets a series: 2.9 million rows by default) plus the last two minutes of raw
samples (the tail no rollup has taken yet), then runs ``--queries`` queries of a
random VM's last 24 h each way, alternating which goes first:

- **Nefos**: ``MetricStore.series(vm, metrics, now - 24h, now)``, which picks the
  1-minute resolution, reads the rollups and adds the tail from the raw samples
  (two indexed range scans, through SQLAlchemy's async engine);
- **baseline**: the driver alone (``sqlite3`` or asyncpg) running the rollup
  SELECT of the same series (one range scan, no tail).

It prints p50 and p95 latency of each, and the ratio of the p50s; the aim is a
Nefos p50 under 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api import machine
from bench_metrics_ingest import fresh_database, postgres_admin_url

from nefos.db.session import Database
from nefos.monitoring.store import MetricStore, Resolution, Retention
from nefos.monitoring.types import Metric

AIM_MS = 20.0
ROLLUP_COLUMNS = ("resource_id", "metric", "bucket", "kind", "project_id", "avg", "min", "max")
BATCH = 100_000


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]


async def populate(backend: str, target: str, vms: int, metrics: list[str], now: int) -> int:
    """A day of minutes for every VM and metric, and two minutes of raw samples."""
    first = now - now % 60 - 1440 * 60

    def minute_rows() -> Any:
        for v in range(vms):
            vm = f"vm-{v:06d}"
            for m in metrics:
                for i in range(1440 - 2):  # the last two minutes are raw only
                    value = float((v + i) % 100)
                    yield (vm, m, first + 60 * i, "vm", "bench", value, value, value, 4)

    def raw_rows() -> Any:
        for v in range(vms):
            vm = f"vm-{v:06d}"
            for m in metrics:
                for i in range(8):
                    ts = (first + 60 * (1440 - 2)) * 1000 + 15_000 * i
                    yield (vm, m, ts, "vm", "bench", float(i))

    columns = (*ROLLUP_COLUMNS, "count")
    count = 0
    if backend == "sqlite":
        conn = sqlite3.connect(target, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        rows = minute_rows()
        insert = (
            f"INSERT INTO metric_rollups_1m ({', '.join(columns)}) VALUES ({', '.join('?' * 9)})"
        )
        while chunk := [r for _, r in zip(range(BATCH), rows, strict=False)]:
            conn.executemany(insert, chunk)
            count += len(chunk)
        conn.executemany(
            "INSERT INTO metric_samples (resource_id, metric, ts, kind, project_id, value) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            list(raw_rows()),
        )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.close()
        return count
    import asyncpg

    pg = await asyncpg.connect(target)
    try:
        rows = minute_rows()
        while chunk := [r for _, r in zip(range(BATCH), rows, strict=False)]:
            await pg.copy_records_to_table("metric_rollups_1m", records=chunk, columns=columns)
            count += len(chunk)
        await pg.copy_records_to_table(
            "metric_samples",
            records=list(raw_rows()),
            columns=("resource_id", "metric", "ts", "kind", "project_id", "value"),
        )
        await pg.execute("ANALYZE")
    finally:
        await pg.close()
    return count


async def run(backend: str, vms: int, n_metrics: int, queries: int) -> dict[str, Any]:
    metrics = [m.value for m in list(Metric)[:n_metrics]]
    async with fresh_database(backend) as (url, target):
        now_dt = datetime.now(UTC)
        now = int(now_dt.timestamp())
        began = time.perf_counter()
        rows = await populate(backend, target, vms, metrics, now)
        filled = time.perf_counter() - began
        print(f"{backend}: {rows:,} minute rows stored in {filled:.0f} s", flush=True)
        db = Database(url)
        day = timedelta(days=1)
        store = MetricStore(db, retention=Retention(day, timedelta(days=8), day), interval=15)
        select = (
            "SELECT metric, bucket, avg FROM metric_rollups_1m WHERE resource_id = {0} "
            "AND metric IN ({1}) AND bucket >= {2} AND bucket < {3} ORDER BY metric, bucket"
        )
        if backend == "sqlite":
            raw: Any = sqlite3.connect(target, isolation_level=None)
            sql = select.format("?", ", ".join("?" * len(metrics)), "?", "?")

            async def baseline(vm: str, start: int, end: int) -> int:
                return len(raw.execute(sql, (vm, *metrics, start, end)).fetchall())
        else:
            import asyncpg

            raw = await asyncpg.connect(target)
            sql = select.format(
                "$1", ", ".join(f"${i + 2}" for i in range(len(metrics))),
                f"${len(metrics) + 2}", f"${len(metrics) + 3}",
            )  # fmt: skip
            statement = await raw.prepare(sql)

            async def baseline(vm: str, start: int, end: int) -> int:
                return len(await statement.fetch(vm, *metrics, start, end))

        rng = random.Random(1)
        nefos_ms: list[float] = []
        base_ms: list[float] = []
        points = 0
        try:
            for q in range(queries + 10):  # ten warm-up rounds first
                vm = f"vm-{rng.randrange(vms):06d}"
                end = datetime.now(UTC)
                start = end - timedelta(hours=24)

                async def nefos(vm: str = vm, start: datetime = start, end: datetime = end) -> int:
                    series = await store.series(vm, metrics, start, end, now=end)
                    assert series.resolution is Resolution.MINUTE
                    return sum(len(p) for p in series.points.values())

                async def base(vm: str = vm, start: datetime = start, end: datetime = end) -> int:
                    return await baseline(vm, int(start.timestamp()), int(end.timestamp()))

                ways = [(nefos, nefos_ms), (base, base_ms)]
                for job, times in ways if q % 2 == 0 else reversed(ways):
                    t = time.perf_counter()
                    got = await job()
                    elapsed = (time.perf_counter() - t) * 1000
                    if q >= 10:
                        times.append(elapsed)
                        if job is nefos:
                            points = got
        finally:
            if backend == "sqlite":
                raw.close()
            else:
                await raw.close()
            await db.dispose()
    p50, base_p50 = statistics.median(nefos_ms), statistics.median(base_ms)
    return {
        "backend": backend,
        "vms": vms,
        "metrics": len(metrics),
        "minute_rows": rows,
        "points_per_query": points,
        "queries": queries,
        "nefos_p50_ms": round(p50, 2),
        "nefos_p95_ms": round(percentile(nefos_ms, 95), 2),
        "baseline_p50_ms": round(base_p50, 2),
        "baseline_p95_ms": round(percentile(base_ms, 95), 2),
        "ratio_p50": round(p50 / base_p50, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--database", action="append", choices=["sqlite", "postgresql"],
        help="Backend (repeatable; default sqlite).",
    )  # fmt: skip
    parser.add_argument("--vms", type=int, default=1000, help="VMs with a day of history.")
    parser.add_argument("--metrics", type=int, default=2, help="Metrics a VM (at most 7).")
    parser.add_argument("--queries", type=int, default=200, help="Queries measured each way.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args, _ignored = parser.parse_known_args(argv)
    backends = args.database or ["sqlite"]
    print(f"bench_metrics_query on {machine()}")
    results = []
    for backend in backends:
        if backend == "postgresql" and not postgres_admin_url():
            print("postgresql: NEFOS_TEST_POSTGRES_URL not set, skipped")
            continue
        r = asyncio.run(run(backend, args.vms, min(max(args.metrics, 1), 7), args.queries))
        results.append(r)
        print(
            f"{backend:<10} 24 h of 1 VM x {r['metrics']} metrics ({r['points_per_query']} "
            f"points) among {r['vms']} VMs: Nefos p50 {r['nefos_p50_ms']} ms "
            f"(p95 {r['nefos_p95_ms']}), driver SELECT p50 {r['baseline_p50_ms']} ms "
            f"(p95 {r['baseline_p95_ms']}), ratio {r['ratio_p50']} (aim: p50 < {AIM_MS:.0f} ms)"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
