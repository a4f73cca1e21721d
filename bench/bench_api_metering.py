"""Rating marketplace calls: Nefos charging a million recorded calls against one SQL
aggregate of the same rows, same database, same run (issue 17's metering aim).

    python bench/bench_api_metering.py [--database sqlite] [--database postgresql]
                                       [--calls 1000000] [--consumers 200]
                                       [--apis 20] [--repeat 2] [--json out.json]

For each backend it makes a fresh, migrated database (SQLite in a temp dir;
PostgreSQL via ``NEFOS_BENCH_POSTGRES_URL`` or ``NEFOS_TEST_POSTGRES_URL``, dropped
afterwards) with ``--apis`` published APIs of ten creator organisations (each a
pay-per-use plan at its own price) and ``--consumers`` consumer organisations, each
subscribed to three of them with a wallet that pays for everything. Then it
stores ``--calls`` calls as the gateway records them (one ``api_calls`` row each, in
time order, nine in ten priced, the rest free or answered 5xx), with the driver
alone (``executemany`` in one transaction on SQLite, ``COPY`` on PostgreSQL), and
times, ``--repeat`` times each, after one uncounted aggregate:

- **baseline**: the driver alone running one ``GROUP BY`` of the priced calls (none
  is charged yet) by consumer, creator and currency (count and sum of prices), all
  rows fetched: what any rating must at least read;
- **Nefos**: ``billing.apicalls.charge_calls`` until it charges nothing more, as the
  billing engine's passes do: every consumer's closed window charged (ledger
  entries, wallets debited, the window recorded, its watermark moved), every
  creator credited its share less the platform fee.

Before each Nefos run the charges of the previous one are undone (not timed). Each
run is checked against the baseline: every consumer's charges and every creator's
revenue equal the baseline's sums exactly. It prints the median times and the
ratio Nefos / baseline (aim: at most 3).
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
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api import machine
from bench_metrics_ingest import fresh_database, postgres_admin_url
from sqlalchemy import func, select, text, update

from nefos.billing import apicalls
from nefos.config import Settings
from nefos.db.models import (
    Api,
    ApiCall,
    LedgerEntry,
    Listing,
    ListingPlan,
    Organisation,
    Project,
    Subscription,
    Wallet,
)
from nefos.db.session import Database, begin_write

AIM = 3.0
CURRENCY = "USD"
START = datetime(2026, 11, 1, tzinfo=UTC)
CREATORS = 10
PER_CONSUMER = 3
BATCH = 50_000
#: Enough for every call the bench stores.
FUNDS = Decimal("100000000")
#: SQLite stores amounts as integer billionths (``nefos.db.types.Amount``).
NANO = 10**9
COLUMNS = (
    "id", "request_id", "api_id", "subscription_id", "plan_id", "organisation_id",
    "method", "path", "status", "latency_ms", "bytes_in", "bytes_out", "units", "price",
    "created_at",
)  # fmt: skip

BASELINE = """
SELECT c.organisation_id, l.organisation_id, l.currency, COUNT(*), SUM(c.price)
FROM api_calls c
JOIN marketplace_plans p ON p.id = c.plan_id
JOIN marketplace_listings l ON l.id = p.listing_id
WHERE c.price > 0
GROUP BY c.organisation_id, l.organisation_id, l.currency
"""


class World:
    """The rows the calls refer to."""

    def __init__(self) -> None:
        self.creators: list[str] = []
        self.consumers: list[str] = []
        #: (api id, plan id, price) of each API.
        self.apis: list[tuple[str, str, Decimal]] = []
        #: (subscription id, consumer org, api index) of each subscription.
        self.subs: list[tuple[str, str, int]] = []


async def make_world(db: Database, consumers: int, apis: int) -> World:
    world = World()
    async with db.sessionmaker() as session:
        await begin_write(session)
        orgs = []
        for i in range(CREATORS + consumers):
            org = Organisation(name=f"Org {i}", slug=f"bench-org-{i}")
            session.add(org)
            orgs.append(org)
        await session.flush()
        world.creators = [o.id for o in orgs[:CREATORS]]
        world.consumers = [o.id for o in orgs[CREATORS:]]
        for org_id in world.creators + world.consumers:
            session.add(Wallet(organisation_id=org_id, currency=CURRENCY, balance=FUNDS))
        projects = []
        for org_id in world.creators:
            project = Project(organisation_id=org_id, name="apis", is_default=True)
            session.add(project)
            projects.append(project)
        await session.flush()
        for a in range(apis):
            creator = a % CREATORS
            api = Api(
                project_id=projects[creator].id,
                name=f"api-{a}",
                slug=f"api-{a}-{uuid.uuid4().hex[:8]}",
                port=8080,
            )
            session.add(api)
            await session.flush()
            listing = Listing(
                api_id=api.id,
                organisation_id=world.creators[creator],
                title=f"API {a}",
                category="tools",
                currency=CURRENCY,
                published_at=START,
            )
            session.add(listing)
            await session.flush()
            price = Decimal("0.0010") * (1 + a % 7)
            plan = ListingPlan(
                listing_id=listing.id,
                key="pay",
                name="Pay per call",
                model="pay_per_use",
                price_per_call=price,
                rate_limit_per_minute=1000,
            )
            session.add(plan)
            await session.flush()
            world.apis.append((api.id, plan.id, price))
        for c, org_id in enumerate(world.consumers):
            for k in range(PER_CONSUMER):
                a = (c * PER_CONSUMER + k) % apis
                _, plan_id, _ = world.apis[a]
                plan_row = await session.get(ListingPlan, plan_id)
                assert plan_row is not None
                sub = Subscription(
                    listing_id=plan_row.listing_id,
                    plan_id=plan_id,
                    organisation_id=org_id,
                    period_start=START,
                    period_end=START + timedelta(days=30),
                )
                session.add(sub)
                await session.flush()
                world.subs.append((sub.id, org_id, a))
        await session.commit()
    return world


def call_rows(world: World, calls: int, sqlite: bool) -> Iterator[tuple[Any, ...]]:
    """The calls, in time order: nine in ten priced; the tenth free-quota or 5xx."""
    stamp = (lambda d: d.strftime("%Y-%m-%d %H:%M:%S.%f")) if sqlite else (lambda d: d)
    step = timedelta(days=25) / max(1, calls)
    for i in range(calls):
        sub_id, org_id, a = world.subs[(i * 7919) % len(world.subs)]
        api_id, plan_id, price = world.apis[a]
        status = 500 if i % 20 == 0 else 200
        priced = price if i % 10 != 0 else Decimal(0)
        if status >= 500:
            priced = Decimal(0)
        yield (
            str(uuid.uuid4()), f"{sub_id}:{i}", api_id, sub_id, plan_id, org_id, "GET",
            "/v1/forecast", status, 3.5, 0, 512, 1, int(priced * NANO) if sqlite else priced,
            stamp(START + step * i),
        )  # fmt: skip


async def populate(backend: str, target: str, world: World, calls: int) -> int:
    count = 0
    rows = call_rows(world, calls, backend == "sqlite")
    if backend == "sqlite":
        conn = sqlite3.connect(target, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        marks = ", ".join("?" * len(COLUMNS))
        insert = f"INSERT INTO api_calls ({', '.join(COLUMNS)}) VALUES ({marks})"
        while chunk := [r for _, r in zip(range(BATCH), rows, strict=False)]:
            conn.executemany(insert, chunk)
            count += len(chunk)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.close()
        return count
    import asyncpg

    pg = await asyncpg.connect(target)
    try:
        while chunk := [r for _, r in zip(range(BATCH), rows, strict=False)]:
            await pg.copy_records_to_table("api_calls", records=chunk, columns=COLUMNS)
            count += len(chunk)
        await pg.execute("VACUUM ANALYZE api_calls")
    finally:
        await pg.close()
    return count


Sums = dict[tuple[str, str, str], tuple[int, Decimal]]


async def baseline(backend: str, target: str) -> tuple[float, Sums]:
    """One aggregate through the driver alone: (seconds, sums)."""
    if backend == "sqlite":
        started = time.perf_counter()
        conn = sqlite3.connect(target)
        rows = conn.execute(BASELINE).fetchall()
        conn.close()
        seconds = time.perf_counter() - started
    else:
        import asyncpg

        pg = await asyncpg.connect(target)
        try:
            started = time.perf_counter()
            rows = await pg.fetch(BASELINE)
            seconds = time.perf_counter() - started
        finally:
            await pg.close()
    sums: Sums = {(r[0], r[1], r[2]): (int(r[3]), Decimal(str(r[4]))) for r in rows}
    return seconds, sums


async def exact_sums(db: Database) -> Sums:
    """The baseline's sums through the ORM, in ``Decimal``, for the check."""
    out: dict[tuple[str, str, str], list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    async with db.sessionmaker() as session:
        rows = await session.stream(
            select(
                ApiCall.organisation_id, Listing.organisation_id, Listing.currency, ApiCall.price
            )
            .join(ListingPlan, ListingPlan.id == ApiCall.plan_id)
            .join(Listing, Listing.id == ListingPlan.listing_id)
            .where(ApiCall.price > 0)
        )
        async for consumer, creator, currency, price in rows:
            item = out[(consumer, creator, currency)]
            item[0] += 1
            item[1] += Decimal(price)
    return {k: (v[0], v[1]) for k, v in out.items()}


async def charge_all(db: Database, settings: Settings) -> tuple[float, int]:
    """Nefos: the billing passes' charging until nothing is left: (seconds, charges)."""
    started = time.perf_counter()
    posted = 0
    while True:
        n, _ = await apicalls.charge_calls(db, settings)
        if n == 0:
            break
        posted += n
    return time.perf_counter() - started, posted


async def check(db: Database, settings: Settings, world: World, sums: Sums) -> None:
    """Every consumer's charges and every creator's revenue equal the sums."""
    charged: dict[str, Decimal] = defaultdict(Decimal)
    earned: dict[str, Decimal] = defaultdict(Decimal)
    for (consumer, creator, _), (_, total) in sums.items():
        charged[consumer] += total
        earned[creator] += total
    async with db.sessionmaker() as session:
        left = await session.scalar(
            select(func.count())
            .select_from(ApiCall)
            .join(ListingPlan, ListingPlan.id == ApiCall.plan_id)
            .join(Listing, Listing.id == ListingPlan.listing_id)
            .where(
                ApiCall.price > 0,
                ApiCall.created_at
                > apicalls.charged_until(ApiCall.organisation_id, Listing.currency),
            )
        )
        assert left == 0, f"{left} priced calls left uncharged"
        rows = await session.execute(
            select(Wallet.organisation_id, LedgerEntry.kind, func.sum(LedgerEntry.amount))
            .join(Wallet, Wallet.id == LedgerEntry.wallet_id)
            .group_by(Wallet.organisation_id, LedgerEntry.kind)
        )
        got: dict[tuple[str, str], Decimal] = {
            (org, kind): Decimal(total) for org, kind, total in rows
        }
    for consumer, total in charged.items():
        assert got.get((consumer, "charge")) == -total, (consumer, got.get((consumer, "charge")))
    for creator, total in earned.items():
        share = apicalls.creator_share(total, settings.marketplace_fee_percent)
        assert abs(got.get((creator, "revenue"), Decimal(0)) - share) < Decimal("0.01") * len(
            sums
        ), (creator, got.get((creator, "revenue")), share)


async def undo(db: Database) -> None:
    """Back to every call uncharged and every wallet full (not timed)."""
    async with db.sessionmaker() as session:
        await begin_write(session)
        await session.execute(text("DELETE FROM api_call_windows"))
        await session.execute(text("DELETE FROM api_call_watermarks"))
        await session.execute(text("DELETE FROM ledger_entries"))
        await session.execute(update(Wallet).values(balance=FUNDS))
        await session.commit()


async def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    async with fresh_database(backend) as (url, target):
        settings = Settings(database_url=url)
        db = Database(url)
        try:
            world = await make_world(db, args.consumers, args.apis)
            started = time.perf_counter()
            stored = await populate(backend, target, world, args.calls)
            print(
                f"{backend}: {stored:,} calls stored in {time.perf_counter() - started:.0f} s",
                flush=True,
            )
            sums = await exact_sums(db)
            await baseline(backend, target)  # uncounted: the cache warmed
            base_times, nefos_times, charges = [], [], 0
            for _ in range(args.repeat):
                seconds, got = await baseline(backend, target)
                base_times.append(seconds)
                assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in sums.items()}
                seconds, charges = await charge_all(db, settings)
                nefos_times.append(seconds)
                await check(db, settings, world, sums)
                await undo(db)
        finally:
            await db.dispose()
    base, nefos = statistics.median(base_times), statistics.median(nefos_times)
    ratio = nefos / base
    print(
        f"{backend}: baseline (one GROUP BY) {base:.2f} s; Nefos charge_calls {nefos:.2f} s "
        f"({charges:,} charges, {stored / nefos:,.0f} calls/s); ratio {ratio:.1f} "
        f"(aim <= {AIM:g}: {'met' if ratio <= AIM else 'not met'})",
        flush=True,
    )
    return {
        "backend": backend,
        "calls": stored,
        "baseline_s": base,
        "nefos_s": nefos,
        "charges": charges,
        "ratio": ratio,
        "aim_met": ratio <= AIM,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--database", action="append", choices=["sqlite", "postgresql"],
        help="Backend (repeatable; default sqlite).",
    )  # fmt: skip
    parser.add_argument("--calls", type=int, default=1_000_000, help="Calls recorded.")
    parser.add_argument("--consumers", type=int, default=200, help="Consumer organisations.")
    parser.add_argument("--apis", type=int, default=20, help="Published APIs.")
    parser.add_argument("--repeat", type=int, default=2, help="Timed runs of each way.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args, _ = parser.parse_known_args(argv)
    print(f"bench_api_metering on {machine()}")
    results = []
    for backend in args.database or ["sqlite"]:
        if backend == "postgresql" and not postgres_admin_url():
            print("postgresql: NEFOS_TEST_POSTGRES_URL not set, skipped")
            continue
        results.append(asyncio.run(run_backend(backend, args)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
