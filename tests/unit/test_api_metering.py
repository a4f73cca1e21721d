"""Charging marketplace calls by closed windows (``billing/apicalls.py``), on SQLite
and PostgreSQL: the settling delay and a call in flight hold a consumer's watermark
back, a row written late into a charged window is charged (or credited) by the
window's one recount, and a 5xx call retried under its request id is charged once."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select, update

from nefos.billing import apicalls, ledger
from nefos.config import Settings, async_database_url
from nefos.db.models import (
    ApiCall,
    ApiCallWatermark,
    ApiCallWindow,
    LedgerEntry,
    Listing,
    ListingPlan,
    Subscription,
    Wallet,
)
from nefos.db.session import Database, begin_write
from nefos.db.types import utcnow
from nefos.domain.plans import CALL_IN_FLIGHT
from nefos.gateway.apigw import ApiGateway, Caller
from tests.conftest import DatabaseFactory

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_api_metering as bench  # noqa: E402

D = Decimal


@pytest.fixture
async def db(databases: DatabaseFactory) -> AsyncIterator[Database]:
    url = await asyncio.to_thread(databases.new_url)
    database = Database(async_database_url(url))
    await database.migrate()
    yield database
    await database.dispose()


def settings_of(db: Database, **values: Any) -> Settings:
    return Settings(_env_file=None, database_url=db.url, **values)  # type: ignore[call-arg]


async def world(db: Database) -> tuple[str, str, str, Decimal, str]:
    """One consumer subscribed to an API: (consumer org, subscription, api, price,
    creator org)."""
    made = await bench.make_world(db, 1, 3)
    sub_id, org_id, a = made.subs[0]
    api_id, _, price = made.apis[a]
    return org_id, sub_id, api_id, price, made.creators[a % bench.CREATORS]


async def add_call(
    db: Database,
    sub_id: str,
    at: datetime,
    *,
    status: int = 200,
    price: Decimal,
    name: str | None = None,
) -> str:
    async with db.sessionmaker() as session:
        await begin_write(session)
        sub = await session.get(Subscription, sub_id)
        assert sub is not None
        plan = await session.get(ListingPlan, sub.plan_id)
        assert plan is not None
        listing = await session.get(Listing, plan.listing_id)
        assert listing is not None
        call = ApiCall(
            request_id=f"{sub_id}:{name or at.isoformat()}",
            api_id=listing.api_id,
            subscription_id=sub_id,
            plan_id=plan.id,
            organisation_id=sub.organisation_id,
            method="GET",
            path="/",
            status=status,
            latency_ms=1.0,
            price=price,
            created_at=at,
        )
        session.add(call)
        await session.commit()
        return call.id


async def charged(db: Database, org_id: str) -> Decimal:
    """What the organisation's wallet was charged for calls, net of refunds."""
    async with db.sessionmaker() as session:
        total = await session.scalar(
            select(func.coalesce(func.sum(LedgerEntry.amount), 0))
            .join(Wallet, Wallet.id == LedgerEntry.wallet_id)
            .where(Wallet.organisation_id == org_id, LedgerEntry.kind.in_(["charge", "refund"]))
        )
    return -D(total)


async def earned(db: Database, org_id: str) -> Decimal:
    async with db.sessionmaker() as session:
        total = await session.scalar(
            select(func.coalesce(func.sum(LedgerEntry.amount), 0))
            .join(Wallet, Wallet.id == LedgerEntry.wallet_id)
            .where(
                Wallet.organisation_id == org_id,
                LedgerEntry.kind.in_(["revenue", "adjustment"]),
            )
        )
    return D(total)


async def watermark(db: Database, org_id: str) -> datetime | None:
    async with db.sessionmaker() as session:
        return await session.scalar(
            select(ApiCallWatermark.charged_until).where(ApiCallWatermark.organisation_id == org_id)
        )


async def test_the_settling_delay_and_a_call_in_flight_hold_the_watermark_back(
    db: Database,
) -> None:
    settings = settings_of(db, marketplace_settle_seconds=60)
    org, sub, _, price, _ = await world(db)
    now = utcnow()
    await add_call(db, sub, now - timedelta(minutes=30), price=price)
    # In flight for 20 minutes: its process died; forwarded, so charged as it stands.
    await add_call(db, sub, now - timedelta(minutes=20), status=CALL_IN_FLIGHT, price=price)
    flying = await add_call(db, sub, now - timedelta(minutes=5), status=CALL_IN_FLIGHT, price=price)
    await add_call(db, sub, now - timedelta(minutes=2), price=price)
    recent = now - timedelta(seconds=30)  # within the settling delay
    await add_call(db, sub, recent, price=price)

    assert await apicalls.charge_calls(db, settings, now) == (1, 2 * price)
    # Just before the call in flight: it may still be answered 5xx and cost nothing.
    assert await watermark(db, org) == now - timedelta(minutes=5) - apicalls.TICK
    assert await charged(db, org) == 2 * price
    # Still in flight: nothing more to charge.
    assert await apicalls.charge_calls(db, settings, now) == (0, D(0))

    async with db.sessionmaker() as session:
        await session.execute(update(ApiCall).where(ApiCall.id == flying).values(status=200))
        await session.commit()
    # Answered: charged with the call after it, up to the settling delay.
    assert await apicalls.charge_calls(db, settings, now) == (1, 2 * price)
    assert await watermark(db, org) == now - timedelta(seconds=60)
    assert await apicalls.charge_calls(db, settings, now + timedelta(minutes=1)) == (1, price)
    assert await charged(db, org) == 5 * price
    assert await apicalls.charge_calls(db, settings, now + timedelta(minutes=2)) == (0, D(0))


async def test_a_row_written_late_is_charged_by_the_windows_recount_once(db: Database) -> None:
    settings = settings_of(db, marketplace_settle_seconds=60, marketplace_recount_seconds=3600)
    org, sub, _, price, creator = await world(db)
    now = utcnow()
    await add_call(db, sub, now - timedelta(minutes=10), price=price)
    stale = await add_call(db, sub, now - timedelta(minutes=15), status=CALL_IN_FLIGHT, price=price)
    assert await apicalls.charge_calls(db, settings, now) == (1, 2 * price)
    assert await charged(db, org) == 2 * price

    # A writer that stamped a row in the charged window commits it only now; and the
    # call charged in flight is answered 502 after all (not billed).
    await add_call(db, sub, now - timedelta(minutes=8), price=price, name="late-1")
    await add_call(db, sub, now - timedelta(minutes=7), price=price, name="late-2")
    async with db.sessionmaker() as session:
        await session.execute(
            update(ApiCall).where(ApiCall.id == stale).values(status=502, price=D(0))
        )
        await session.commit()
    # Not yet: the window is recounted an hour after it closed.
    assert await apicalls.charge_calls(db, settings, now + timedelta(minutes=30)) == (0, D(0))
    assert await charged(db, org) == 2 * price

    # Recounted: one more call to charge (two late, one credited).
    later = now + timedelta(hours=2)
    assert await apicalls.charge_calls(db, settings, later) == (1, price)
    assert await charged(db, org) == 3 * price
    fee = settings.marketplace_fee_percent
    assert await earned(db, creator) == apicalls.creator_share(3 * price, fee)
    async with db.sessionmaker() as session:
        [window] = (await session.scalars(select(ApiCallWindow))).all()
    assert (window.calls, window.amount, window.recounted_at) == (3, 3 * price, later)
    assert {k: (n, D(g)) for k, (n, g) in window.parts.items()} == {creator: (3, 3 * price)}
    # Once: a later row in it is no longer seen, and no pass recounts it again.
    await add_call(db, sub, now - timedelta(minutes=6), price=price, name="too-late")
    assert await apicalls.charge_calls(db, settings, later + timedelta(hours=1)) == (0, D(0))
    assert await charged(db, org) == 3 * price


async def test_a_5xx_call_retried_under_its_request_id_is_charged_once(db: Database) -> None:
    settings = settings_of(db, marketplace_settle_seconds=0)
    org, sub, api_id, price, _ = await world(db)
    async with db.sessionmaker() as session:
        row = await session.get(Subscription, sub)
        assert row is not None
        plan = await session.get(ListingPlan, row.plan_id)
        assert plan is not None
    gateway = ApiGateway(SimpleNamespace(db=db, settings=settings))  # type: ignore[arg-type]
    caller = Caller(
        key_id="k",
        subscription_id=sub,
        organisation_id=org,
        period_start=utcnow(),
        past_due=False,
        plan=plan,
        currency="USD",
        api_id=api_id,
        slug="s",
        container_id=None,
        base_path="/",
    )
    scope = {"method": "GET"}
    first, _ = await gateway._claim(caller, "retry-me", scope, "/", 1, price)
    assert first is not None
    await gateway._settle(first, {"status": 502, "bytes": 0, "bytes_in": 0}, 1.0, 1, price)
    # The pass closes a window past the call answered 502: nothing to charge.
    assert await apicalls.charge_calls(db, settings) == (0, D(0))
    await add_call(db, sub, utcnow(), price=price, name="another")
    assert await apicalls.charge_calls(db, settings) == (1, price)
    mark = await watermark(db, org)
    assert mark is not None

    # The retry takes the row back in flight, stamped anew: after the watermark.
    again, _ = await gateway._claim(caller, "retry-me", scope, "/", 1, price)
    assert again == first
    async with db.sessionmaker() as session:
        stamped = await session.scalar(select(ApiCall.created_at).where(ApiCall.id == first))
    assert stamped is not None and stamped > mark
    assert await apicalls.charge_calls(db, settings) == (0, D(0))  # in flight
    await gateway._settle(first, {"status": 200, "bytes": 0, "bytes_in": 0}, 1.0, 1, price)
    assert await apicalls.charge_calls(db, settings) == (1, price)
    assert await apicalls.charge_calls(db, settings) == (0, D(0))
    assert await charged(db, org) == 2 * price


async def move(db: Database, org_id: str, kind: str, amount: Decimal) -> None:
    async with db.sessionmaker() as session:
        await begin_write(session)
        wallet = await session.scalar(select(Wallet).where(Wallet.organisation_id == org_id))
        assert wallet is not None
        await ledger.post(session, wallet, kind, amount)
        await session.commit()


async def test_a_wallet_that_cannot_pay_keeps_its_window_until_it_can(db: Database) -> None:
    settings = settings_of(db, marketplace_settle_seconds=0)
    org, sub, _, price, _ = await world(db)
    now = utcnow()
    await add_call(db, sub, now - timedelta(minutes=3), price=price)
    await add_call(db, sub, now - timedelta(minutes=2), price=price)
    await move(db, org, "adjustment", -(bench.FUNDS - price))  # one call's worth left
    assert await apicalls.charge_calls(db, settings, now) == (0, D(0))
    assert await watermark(db, org) in (None, apicalls.NEVER)
    await move(db, org, "top_up", price)
    assert await apicalls.charge_calls(db, settings, now) == (1, 2 * price)
    assert await watermark(db, org) == now
    assert await charged(db, org) == 2 * price
