"""Rating a month into invoices: Nefos against one SQL ``GROUP BY`` over the same
usage records, same database, same run.

    python bench/bench_billing_rating.py [--database sqlite] [--database postgresql]
                                         [--resources 10000] [--organisations 100]
                                         [--hours 720] [--repeat 2] [--json out.json]

For each backend it makes a fresh, migrated database (SQLite in a temp dir;
PostgreSQL via ``NEFOS_BENCH_POSTGRES_URL`` or ``NEFOS_TEST_POSTGRES_URL``, dropped
afterwards), makes ``--organisations`` organisations with the default catalogue
(every tenth organisation a reseller's customer with a 15% margin), and stores a
month of hourly usage for ``--resources`` resources spread over them: one record a
resource and hour (7.2 million by default), in the order the metering writes them
(hour by hour), already charged, with the driver alone (``executemany`` in one
transaction on SQLite, ``COPY`` on PostgreSQL; the indexes made after the load).
Containers (half), VMs (three in ten) and volumes, each its own size. Then it
times, ``--repeat`` times each, after one uncounted ``GROUP BY``:

- **baseline**: the driver alone (``sqlite3`` or asyncpg) running one
  ``GROUP BY organisation_id, resource_id`` over the month, summing the same
  quantities Nefos rates (vCPU, memory, storage, instance time, network), all rows
  fetched;
- **Nefos, per organisation**: ``invoices.generate`` for every organisation, one
  write transaction each: the month rated with ``rating.rate_span`` (one
  aggregate of that organisation's records, priced in ``Decimal``) into a draft
  invoice with its lines;
- **Nefos, run_due**: what the billing engine does when the month ends:
  ``invoices.invoice_period`` finds the organisations to invoice, rates them (on
  PostgreSQL all in one aggregate; on SQLite one organisation at a time), then
  writes and finalizes each invoice (numbered, paid since all is charged) in a
  transaction of its own.

Before each Nefos run the invoices of the previous one are deleted (not timed).
Each run is checked against the baseline: every organisation's invoice total must
equal the baseline's sums priced and rounded line by line. It prints the median
times and the ratios Nefos / baseline (aim: at most 3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api import machine
from bench_metrics_ingest import fresh_database, postgres_admin_url
from sqlalchemy import delete, func, select, text

from nefos.billing import catalogue, invoices
from nefos.config import Settings
from nefos.db.models import USAGE_RATED, BillingAccount, Invoice, InvoiceLine, Organisation
from nefos.db.session import Database, begin_write

AIM = 3.0
START = datetime(2026, 1, 1, tzinfo=UTC)
CURRENCY = "USD"
MARGIN = Decimal(15)
BATCH = 50_000
COLUMNS = (
    "id", "key", "organisation_id", "project_id", "resource_kind", "resource_id",
    "resource_name", "state", "started_at", "ended_at", "seconds", "cpu_milli",
    "memory_mb", "storage_gb", "instances", "flavor", "network_bytes", "charge_id",
    "created_at",
)  # fmt: skip
# The usage table's indexes, dropped for the load and made again after it, as 0007
# makes them (the key's UNIQUE stays: on SQLite it is the table's own).
INDEX_NAMES = (
    "ix_usage_records_org_started",
    "ix_usage_records_resource_started",
    "ix_usage_records_uncharged",
)


def indexes(backend: str) -> list[str]:
    include = f" INCLUDE ({', '.join(USAGE_RATED)})" if backend == "postgresql" else ""
    return [
        "CREATE INDEX ix_usage_records_org_started "
        f"ON usage_records (organisation_id, started_at){include}",
        "CREATE INDEX ix_usage_records_resource_started "
        "ON usage_records (resource_kind, resource_id, started_at)",
        "CREATE INDEX ix_usage_records_uncharged ON usage_records (organisation_id) "
        "WHERE charge_id IS NULL",
    ]


BASELINE = """
SELECT organisation_id, resource_id,
       SUM(CASE WHEN state = 'running' THEN {s} * cpu_milli * instances ELSE 0 END),
       SUM(CASE WHEN state = 'running' THEN {s} * memory_mb * instances ELSE 0 END),
       SUM(CASE WHEN state <> 'network' THEN {s} * storage_gb * instances ELSE 0 END),
       SUM(CASE WHEN state = 'running' THEN {s} * instances ELSE 0 END),
       SUM(network_bytes)
FROM usage_records
WHERE started_at >= {lo} AND started_at < {hi}
GROUP BY organisation_id, resource_id
"""


class Shim:
    """What ``invoices.invoice_period`` uses of a ``Core``: settings and a database."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db


def resource(r: int, orgs: list[str]) -> tuple[str, str, str, int, int, int]:
    """(organisation, kind, id, milli-vCPUs, MiB, GB) of resource ``r``."""
    kind = "container" if r % 10 < 5 else "vm" if r % 10 < 8 else "volume"
    if kind == "volume":
        return orgs[r % len(orgs)], kind, f"res-{r:07d}", 0, 0, 10 + r % 500
    cpu = (250, 500, 1000, 2000, 4000)[r % 5]
    return orgs[r % len(orgs)], kind, f"res-{r:07d}", cpu, 512 * (1 + r % 16), 5 + r % 100


def usage_rows(
    resources: int, hours: int, orgs: list[str], sqlite: bool
) -> Iterator[tuple[Any, ...]]:
    """One record a resource and hour, hour by hour, as the metering writes them."""
    specs = [resource(r, orgs) for r in range(resources)]
    created = START + timedelta(days=40)
    stamp = (lambda d: d.strftime("%Y-%m-%d %H:%M:%S.%f")) if sqlite else (lambda d: d)
    made = stamp(created)
    for h in range(hours):
        lo = START + timedelta(hours=h)
        hi = lo + timedelta(hours=1)
        lo_s, hi_s, iso = stamp(lo), stamp(hi), lo.isoformat()
        for org, kind, rid, cpu, mem, gb in specs:
            state = "allocated" if kind == "volume" else "running"
            yield (
                str(uuid.uuid4()), f"{kind}:{rid}:{iso}", org, "bench-project", kind, rid, rid,
                state, lo_s, hi_s, 3600, cpu, mem, gb, 1, None, 0, f"charge-{org[:8]}", made,
            )  # fmt: skip


async def populate(backend: str, target: str, resources: int, hours: int, orgs: list[str]) -> int:
    count = 0
    rows = usage_rows(resources, hours, orgs, backend == "sqlite")
    if backend == "sqlite":
        conn = sqlite3.connect(target, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")  # the load only: 1 GB
        for name in INDEX_NAMES:
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        conn.execute("BEGIN")
        marks = ", ".join("?" * len(COLUMNS))
        insert = f"INSERT INTO usage_records ({', '.join(COLUMNS)}) VALUES ({marks})"
        while chunk := [r for _, r in zip(range(BATCH), rows, strict=False)]:
            conn.executemany(insert, chunk)
            count += len(chunk)
        conn.execute("COMMIT")
        for sql in indexes(backend):
            conn.execute(sql)
        conn.execute("ANALYZE")
        conn.close()
        return count
    import asyncpg

    pg = await asyncpg.connect(target)
    try:
        for name in INDEX_NAMES:
            await pg.execute(f"DROP INDEX IF EXISTS {name}")
        while chunk := [r for _, r in zip(range(BATCH), rows, strict=False)]:
            await pg.copy_records_to_table("usage_records", records=chunk, columns=COLUMNS)
            count += len(chunk)
        for sql in indexes(backend):
            await pg.execute(sql)
        # A month-old table: autovacuum has been through it (the visibility map is set).
        await pg.execute("VACUUM ANALYZE usage_records")
    finally:
        await pg.close()
    return count


async def make_organisations(db: Database, n: int) -> list[str]:
    """``n`` organisations with the default catalogue; every tenth a customer of a
    reseller with a margin."""
    async with db.sessionmaker() as session:
        await begin_write(session)
        await catalogue.ensure_defaults(session, CURRENCY)
        reseller = Organisation(name="Reseller", slug="bench-reseller", kind="reseller")
        session.add(reseller)
        await session.flush()
        session.add(
            BillingAccount(
                organisation_id=reseller.id,
                currency=CURRENCY,
                margin_percent=MARGIN,
                low_balance_threshold=Decimal(5),
            )
        )
        orgs = []
        for i in range(n):
            org = Organisation(
                name=f"Org {i}",
                slug=f"bench-org-{i:05d}",
                parent_id=reseller.id if i % 10 == 0 else None,
            )
            session.add(org)
            orgs.append(org)
        await session.commit()
        return [o.id for o in orgs]


async def baseline(backend: str, target: str, lo: datetime, hi: datetime) -> list[Any]:
    if backend == "sqlite":
        conn = sqlite3.connect(target)
        try:
            fmt = "%Y-%m-%d %H:%M:%S.%f"
            sql = BASELINE.format(s="seconds", lo="?", hi="?")
            return conn.execute(sql, (lo.strftime(fmt), hi.strftime(fmt))).fetchall()
        finally:
            conn.close()
    import asyncpg

    pg = await asyncpg.connect(target)
    try:
        return list(await pg.fetch(BASELINE.format(s="seconds::bigint", lo="$1", hi="$2"), lo, hi))
    finally:
        await pg.close()


def expected_totals(rows: list[Any], margins: dict[str, Decimal]) -> dict[str, Decimal]:
    """Each organisation's invoice total from the baseline's sums: priced with the
    default catalogue (and margin) and rounded half-up once per line."""
    per = {
        "vcpu_hour": Decimal(3_600_000),
        "ram_gb_hour": Decimal(1024 * 3600),
        "storage_gb_day": Decimal(86400),
        "network_gb": Decimal(10**9),
    }
    prices = {s.sku: s.default for s in catalogue.SKUS}
    totals: dict[str, Decimal] = {}
    for org, _rid, cpu, mem, storage, _inst, net in rows:
        factor = 1 + margins.get(org, Decimal(0)) / 100
        for sku, units in zip(per, (cpu, mem, storage, net), strict=True):
            if units:
                with localcontext() as ctx:
                    ctx.prec = 60
                    exact = Decimal(int(units)) * (prices[sku] * factor) / per[sku]
                amount = exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
                totals[org] = totals.get(org, Decimal(0)) + amount
    return totals


async def clear_invoices(db: Database) -> None:
    async with db.sessionmaker() as session:
        await begin_write(session)
        await session.execute(delete(Invoice))  # lines go with them
        await session.execute(text("DELETE FROM invoice_sequences"))
        await session.commit()


async def invoice_totals(db: Database) -> tuple[dict[str, Decimal], int, int]:
    async with db.sessionmaker() as session:
        rows = (await session.execute(select(Invoice.organisation_id, Invoice.total))).all()
        lines = await session.scalar(select(func.count()).select_from(InvoiceLine))
        finalized = await session.scalar(
            select(func.count()).select_from(Invoice).where(Invoice.status == "paid")
        )
    return {org: total for org, total in rows}, lines or 0, finalized or 0


async def generate_each(db: Database, orgs: list[str], lo: datetime, hi: datetime) -> None:
    async with db.sessionmaker() as session:
        rows = (await session.scalars(select(Organisation).where(Organisation.id.in_(orgs)))).all()
        found = {o.id: o for o in rows}
        margins = await invoices.reseller_margins(session, orgs)
    for org_id in orgs:
        async with db.sessionmaker() as session:
            await begin_write(session)
            org = found[org_id]
            await invoices.generate(session, org, CURRENCY, lo, hi, margins.get(org_id, Decimal(0)))
            await session.commit()


async def run(backend: str, resources: int, n_orgs: int, hours: int, repeat: int) -> dict[str, Any]:
    # The month of January: the records fill its first ``hours``.
    lo, hi = START, START + timedelta(days=31)
    async with fresh_database(backend) as (url, target):
        db = Database(url)
        try:
            orgs = await make_organisations(db, n_orgs)
            began = time.perf_counter()
            records = await populate(backend, target, resources, hours, orgs)
            loaded = time.perf_counter() - began
            print(f"{backend}: {records:,} usage records stored in {loaded:.0f} s", flush=True)
            async with db.sessionmaker() as session:
                margins = await invoices.reseller_margins(session, orgs)
            settings = Settings(_env_file=None, database_url=url)  # type: ignore[call-arg]
            shim = cast(Any, Shim(settings, db))

            await baseline(backend, target, lo, hi)  # warm-up, uncounted
            base_s: list[float] = []
            each_s: list[float] = []
            due_s: list[float] = []
            lines = groups = 0
            expected: dict[str, Decimal] = {}
            for _ in range(repeat):
                t = time.perf_counter()
                rows = await baseline(backend, target, lo, hi)
                base_s.append(time.perf_counter() - t)
                groups = len(rows)
                expected = expected_totals(rows, margins)

                await clear_invoices(db)
                t = time.perf_counter()
                await generate_each(db, orgs, lo, hi)
                each_s.append(time.perf_counter() - t)
                totals, lines, _ = await invoice_totals(db)
                check(totals, expected, "generate")

                await clear_invoices(db)
                t = time.perf_counter()
                made = await invoices.invoice_period(shim, lo, hi, now=hi)
                due_s.append(time.perf_counter() - t)
                totals, lines_due, paid = await invoice_totals(db)
                check(totals, expected, "run_due")
                assert len(made) == paid == len(orgs), (len(made), paid)
                assert lines_due == lines, (lines_due, lines)
        finally:
            await db.dispose()
    base, each, due = (statistics.median(x) for x in (base_s, each_s, due_s))
    return {
        "backend": backend,
        "records": records,
        "resources": resources,
        "organisations": n_orgs,
        "groups": groups,
        "lines": lines,
        "load_s": round(loaded, 1),
        "baseline_s": round(base, 3),
        "generate_each_s": round(each, 3),
        "run_due_s": round(due, 3),
        "ratio_generate_each": round(each / base, 2),
        "ratio_run_due": round(due / base, 2),
        "runs": repeat,
    }


def check(totals: dict[str, Decimal], expected: dict[str, Decimal], what: str) -> None:
    if totals != expected:
        wrong = [o for o in expected if totals.get(o) != expected[o]][:3]
        raise AssertionError(
            f"{what}: invoice totals differ from the baseline's for {wrong}: "
            f"{[(totals.get(o), expected[o]) for o in wrong]}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--database", action="append", choices=["sqlite", "postgresql"],
        help="Backend (repeatable; default sqlite).",
    )  # fmt: skip
    parser.add_argument("--resources", type=int, default=10_000, help="Resources billed.")
    parser.add_argument("--organisations", type=int, default=100, help="Organisations.")
    parser.add_argument("--hours", type=int, default=720, help="Hours of usage (a record each).")
    parser.add_argument("--repeat", type=int, default=2, help="Timed runs of each way.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args, _ignored = parser.parse_known_args(argv)
    backends = args.database or ["sqlite"]
    if not 1 <= args.hours <= 744 or args.resources < 1 or args.organisations < 1:
        parser.error("--hours is 1 to 744; --resources and --organisations at least 1")
    print(f"bench_billing_rating on {machine()}")
    results = []
    for backend in backends:
        if backend == "postgresql" and not postgres_admin_url():
            print("postgresql: NEFOS_TEST_POSTGRES_URL not set, skipped")
            continue
        orgs = min(args.organisations, args.resources)
        r = asyncio.run(run(backend, args.resources, orgs, args.hours, max(args.repeat, 1)))
        results.append(r)
        print(
            f"{backend:<10} {r['records']:,} records, {r['resources']:,} resources in "
            f"{r['organisations']} organisations ({r['lines']:,} invoice lines): "
            f"one SQL GROUP BY {r['baseline_s']:.2f} s; invoices.generate for each "
            f"organisation {r['generate_each_s']:.2f} s (ratio {r['ratio_generate_each']}); "
            f"run_due (rate all, write and finalize) {r['run_due_s']:.2f} s "
            f"(ratio {r['ratio_run_due']}) (aim: at most {AIM:g})",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
