"""The gateway's call log (nefos.billing.calllog) on SQLite and PostgreSQL: calls are
written in groups, a group whose write fails is kept (with the money it owes) and
written later, a group written twice is one set of rows, a flush returns once every
call added before it is in the database, and stop writes what waits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from nefos.billing.calllog import CallLog
from nefos.config import async_database_url
from nefos.db.models import Api, ApiCall, Organisation, Project
from nefos.db.session import Database
from nefos.db.types import utcnow
from tests.conftest import DatabaseFactory

D = Decimal


@pytest.fixture(scope="module")
def database_url(databases: DatabaseFactory) -> str:
    """One migrated database for the module's tests."""
    url = async_database_url(databases.new_url())

    async def migrate() -> None:
        database = Database(url)
        try:
            await database.migrate()
        finally:
            await database.dispose()

    asyncio.run(migrate())
    return url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """An engine of the test's own event loop (a pool shared across the tests' loops
    would hand a connection to a loop that did not open it, and could not close it)."""
    database = Database(database_url)
    yield database
    await database.dispose()


@pytest.fixture
async def api_id(db: Database) -> str:
    async with db.sessionmaker() as session:
        org = Organisation(name="t", slug=f"t-{uuid.uuid4().hex[:12]}")
        session.add(org)
        await session.flush()
        project = Project(organisation_id=org.id, name="p")
        session.add(project)
        await session.flush()
        api = Api(project_id=project.id, name="a", slug=f"a-{uuid.uuid4().hex[:8]}", port=80)
        session.add(api)
        await session.commit()
        return api.id


def call(api_id: str, n: int, price: str = "0.5", org: str = "org-1") -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "request_id": f"sub:{api_id}:{n}",
        "api_id": api_id,
        "subscription_id": None,
        "plan_id": None,
        "organisation_id": org,
        "method": "GET",
        "path": f"/{n}",
        "status": 200,
        "latency_ms": 1.0,
        "bytes_in": 0,
        "bytes_out": 10,
        "units": 1,
        "price": D(price),
        "created_at": utcnow(),
    }


async def count(db: Database, api_id: str) -> int:
    async with db.sessionmaker() as session:
        n = await session.scalar(
            select(func.count()).select_from(ApiCall).where(ApiCall.api_id == api_id)
        )
        return int(n or 0)


async def test_calls_are_written_in_groups_and_owe_until_written(db: Database, api_id: str):
    log = CallLog(db, interval=3600, limit=100)  # the writer waits: flush decides
    log.start()
    statements: list[int] = []
    real = log._insert

    async def counted(rows: Any) -> None:
        statements.append(len(rows))
        await real(rows)

    log._insert = counted  # type: ignore[method-assign]
    try:
        for n in range(5):
            await log.add(call(api_id, n), ("org-1", "USD"), D("0.5"))
        await log.add(call(api_id, 5, "0"), ("org-1", "USD"), D(0))
        # Answered, not written: the money is owed by the waiting calls.
        assert (log.waiting, log.owed("org-1", "USD"), await count(db, api_id)) == (6, D("2.5"), 0)
        assert log.owed("org-1", "EUR") == 0
        await log.flush()
        assert (log.waiting, log.owed("org-1", "USD"), await count(db, api_id)) == (0, D(0), 6)
        assert statements == [6]  # one statement for the group
        await log.flush()  # nothing waits: nothing written
        assert statements == [6]
    finally:
        await log.stop()


async def test_a_failed_write_keeps_the_calls_and_a_second_write_adds_no_duplicate(
    db: Database, api_id: str
):
    log = CallLog(db, interval=0.01, limit=100)
    real = log._insert
    failing = {"left": 2}
    attempts: list[int] = []

    async def flaky(rows: Any) -> None:
        attempts.append(len(rows))
        if failing["left"]:
            failing["left"] -= 1
            raise OperationalError("INSERT", {}, Exception("the database is away"))
        await real(rows)

    log._insert = flaky  # type: ignore[method-assign]
    log.start()
    try:
        for n in range(3):
            await log.add(call(api_id, n), ("org-1", "USD"), D("1"))
        # The writer fails twice, keeps the calls (and what they owe), then writes them.
        deadline = asyncio.get_running_loop().time() + 30
        while log.waiting:
            assert asyncio.get_running_loop().time() < deadline, "never written"
            assert log.owed("org-1", "USD") == D(3)
            await asyncio.sleep(0.01)
        assert attempts[:3] == [3, 3, 3] and log.failures == 2
        assert (await count(db, api_id), log.owed("org-1", "USD")) == (3, D(0))
    finally:
        await log.stop()
    # The same calls written again (a commit whose answer was lost): no duplicate.
    again = CallLog(db, interval=3600, limit=100)
    for n in range(3):
        row = call(api_id, n)
        await again.add(row, ("org-1", "USD"), D("1"))  # no writer: written at once
    assert await count(db, api_id) == 3


async def test_full_and_stop_writes_what_waits(db: Database, api_id: str):
    log = CallLog(db, interval=3600, limit=3)
    log.start()
    for n in range(3):
        assert not log.full
        await log.add(call(api_id, n), ("org-1", "USD"), D("1"))
    assert log.full and await count(db, api_id) == 0
    await log.stop()
    assert (log.waiting, await count(db, api_id)) == (0, 3)


async def test_a_flush_waits_for_the_group_being_written(db: Database, api_id: str):
    log = CallLog(db, interval=3600, limit=100)
    real = log._insert
    entered, go_on = asyncio.Event(), asyncio.Event()

    async def slow(rows: Any) -> None:
        entered.set()
        await go_on.wait()
        await real(rows)

    log._insert = slow  # type: ignore[method-assign]
    log.start()
    try:
        await log.add(call(api_id, 1), ("org-1", "USD"), D("1"))
        writing = asyncio.create_task(log.flush())
        await asyncio.wait_for(entered.wait(), 30)
        await log.add(call(api_id, 2), ("org-1", "USD"), D("1"))
        reader = asyncio.create_task(log.flush())
        await asyncio.sleep(0)
        assert not reader.done()  # it waits for the group in flight, then writes its own
        go_on.set()
        await asyncio.wait_for(asyncio.gather(writing, reader), 30)
        assert await count(db, api_id) == 2
    finally:
        await log.stop()


async def test_a_call_that_waited_long_is_stamped_when_written(db: Database, api_id: str):
    """The billing's windows close behind the calls' stamps: a row that waited past
    ``restamp_after`` (the database away) takes the time it is written."""
    log = CallLog(db, interval=3600, limit=100, restamp_after=1.0)
    old, fresh = call(api_id, 0), call(api_id, 1)
    old["created_at"] = utcnow() - timedelta(seconds=30)
    stamped_at = fresh["created_at"]
    await log.add(old, ("org-1", "USD"), D("1"))
    await log.add(fresh, ("org-1", "USD"), D("1"))
    async with db.sessionmaker() as session:
        rows = {
            c.path: c.created_at
            for c in await session.scalars(select(ApiCall).where(ApiCall.api_id == api_id))
        }
    assert rows["/0"] > utcnow() - timedelta(seconds=5)  # stamped anew
    assert rows["/1"] == stamped_at  # kept
