"""Singleton leases on SQLite and PostgreSQL: one holder at a time under a race,
takeover only after expiry with a higher fencing token, renewal and release only by
the holder, and a Singleton that runs its passes only while it holds the lease."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from nefos.config import async_database_url
from nefos.db.models import Lease
from nefos.db.session import Database, begin_write
from nefos.db.types import utcnow
from nefos.operations import leases
from nefos.operations.leases import Pass, Singleton
from tests.conftest import DatabaseFactory


@pytest.fixture(scope="module")
async def db(databases: DatabaseFactory) -> AsyncIterator[Database]:
    url = await asyncio.to_thread(databases.new_url)
    database = Database(async_database_url(url))
    await database.migrate()
    yield database
    await database.dispose()


def name() -> str:
    return f"loop-{uuid.uuid4().hex[:8]}"


async def until(check: object, what: str, within: float = 20.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.05)


async def test_takeover_only_after_expiry_and_the_token_grows(db: Database) -> None:
    lease, now = name(), utcnow()
    assert await leases.acquire(db, lease, "a", 10, now=now) == 1
    # Held: another holder cannot take it, nor can the holder "acquire" it twice.
    assert await leases.acquire(db, lease, "b", 10, now=now + timedelta(seconds=9)) is None
    assert await leases.acquire(db, lease, "a", 10, now=now + timedelta(seconds=9)) is None
    assert await leases.holds(db, lease, "a", 1, now=now + timedelta(seconds=9))
    # Expired: the next taker gets it with the next token; the old holder is fenced.
    later = now + timedelta(seconds=11)
    assert not await leases.holds(db, lease, "a", 1, now=later)
    assert await leases.acquire(db, lease, "b", 10, now=later) == 2
    assert not await leases.renew(db, lease, "a", 1, 10, now=later)
    assert await leases.holds(db, lease, "b", 2, now=later)
    view = await leases.get(db, lease)
    assert view is not None and view.holder == "b" and view.token == 2
    assert view.expires_at == later + timedelta(seconds=10)


async def test_renewal_by_the_holder_only_and_it_keeps_the_token(db: Database) -> None:
    lease, now = name(), utcnow()
    assert await leases.acquire(db, lease, "a", 10, now=now) == 1
    assert not await leases.renew(db, lease, "b", 1, 10, now=now)  # not the holder
    assert not await leases.renew(db, lease, "a", 2, 10, now=now)  # not its token
    renewed = now + timedelta(seconds=8)
    assert await leases.renew(db, lease, "a", 1, 10, now=renewed)
    # The renewal moved the expiry: still held past the first expiry, same token.
    assert await leases.acquire(db, lease, "b", 10, now=now + timedelta(seconds=12)) is None
    view = await leases.get(db, lease)
    assert view is not None and view.token == 1 and view.renewed_at == renewed


async def test_release_frees_it_at_once_only_for_its_holder(db: Database) -> None:
    lease, now = name(), utcnow()
    assert await leases.acquire(db, lease, "a", 60, now=now) == 1
    assert not await leases.release(db, lease, "b", 1)
    assert not await leases.release(db, lease, "a", 7)
    assert await leases.release(db, lease, "a", 1)
    view = await leases.get(db, lease)
    assert view is not None and view.holder is None and not view.live()
    assert not await leases.renew(db, lease, "a", 1, 60)  # released: gone for good
    assert await leases.acquire(db, lease, "b", 60) == 2


async def test_racing_takers_one_wins(db: Database) -> None:
    lease = name()
    first = await asyncio.gather(*(leases.acquire(db, lease, f"h{i}", 30) for i in range(8)))
    assert sorted(t for t in first if t is not None) == [1]
    # Expire it; a second race over the existing row also has one winner.
    async with db.sessionmaker() as session:
        await begin_write(session)
        await session.execute(update(Lease).where(Lease.name == lease).values(expires_at=utcnow()))
        await session.commit()
    again = await asyncio.gather(*(leases.acquire(db, lease, f"g{i}", 30) for i in range(8)))
    assert sorted(t for t in again if t is not None) == [2]


async def test_a_singleton_runs_its_passes_only_while_it_holds_the_lease(db: Database) -> None:
    lease = name()
    runs: list[tuple[str, int | None]] = []

    def singleton(holder: str) -> Singleton:
        async def job() -> None:
            runs.append((holder, s.token))

        s = Singleton(db, lease, holder, 1.5, passes=[Pass("job", 0.05, job)])
        return s

    a, b = singleton("a"), singleton("b")
    await a.start()
    await b.start()
    try:
        assert a.held and not b.held
        await until(lambda: len(runs) >= 3, "a's passes")
        assert {h for h, _ in runs} == {"a"} and {t for _, t in runs} == {1}
        # Another takes it over behind a's back (as after a's expiry): a sees the
        # token moved before its next pass and stops acting.
        async with db.sessionmaker() as session:
            await begin_write(session)
            await session.execute(
                update(Lease)
                .where(Lease.name == lease)
                .values(
                    holder="c", token=Lease.token + 1, expires_at=utcnow() + timedelta(seconds=1)
                )
            )
            await session.commit()
        await until(lambda: not a.held, "a noticed it lost the lease")
        count = len(runs)
        # c never renews: once it expires, one of a and b takes it, with token 3.
        await until(lambda: a.held or b.held, "a or b took the lease over")
        winner, other = (a, b) if a.held else (b, a)
        assert winner.token == 3 and not other.held
        await until(lambda: len(runs) > count + 2, "the new holder's passes")
        after = runs[count:]
        assert {h for h, _ in after} == {winner.holder} and {t for _, t in after} == {3}
        # A clean stop releases at once: the other takes it over on its next look.
        await winner.stop()
        async with db.sessionmaker() as session:
            row = await session.scalar(select(Lease).where(Lease.name == lease))
            assert row is not None and row.holder is None
        await until(lambda: other.held, "the other took the released lease")
        assert other.token == 4
    finally:
        await a.stop()
        await b.stop()
