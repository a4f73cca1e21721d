"""A writer cancelled in the middle of a statement leaves nothing locked behind.

A lease renewal that times out, or a pass stopped with its lease, is cancelled
wherever it is, also half-way through a query of a write transaction. SQLAlchemy
then invalidates the connection and closes it without a rollback. On SQLite that
close used to leave a "zombie" connection that kept the write lock for as long as
the cancelled cursor was referenced (a log record's traceback keeps it), and every
other writer of the installation failed with "database is locked"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from nefos.config import async_database_url
from nefos.db.session import Database, begin_write
from tests.conftest import DatabaseFactory

# A statement that runs for about a second: long enough to be cancelled inside it.
SLOW = {
    "sqlite": (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000000)"
        " SELECT count(*) FROM c"
    ),
    "postgresql": "SELECT pg_sleep(1)",
}


@pytest.fixture(scope="module")
async def db(databases: DatabaseFactory) -> AsyncIterator[Database]:
    url = await asyncio.to_thread(databases.new_url)
    database = Database(async_database_url(url))
    async with database.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER)"))
        await conn.execute(text("INSERT INTO counter VALUES (1, 0)"))
    yield database
    await database.dispose()


async def bump(db: Database, slow: str | None = None) -> None:
    async with db.session() as session:
        await begin_write(session)
        await session.execute(text("UPDATE counter SET n = n + 1 WHERE id = 1"))
        if slow:
            await session.execute(text(slow))
        await session.commit()


async def test_a_writer_cancelled_mid_statement_releases_its_lock(db: Database) -> None:
    kept: list[BaseException] = []  # as a captured log record keeps a traceback
    for _ in range(2):
        writer = asyncio.create_task(bump(db, SLOW[db.dialect]))
        await asyncio.sleep(0.3)  # inside the slow statement, the row written
        writer.cancel()
        try:
            await writer
        except BaseException as exc:  # noqa: BLE001 - whatever the cancellation became
            kept.append(exc)
        assert kept, "the writer was to be cancelled, not to finish"
        # Another writer gets the lock once the cancelled statement has ended, not
        # after SQLite's 30 s busy timeout, nor never.
        await asyncio.wait_for(bump(db), 20)
    async with db.session() as session:
        n = (await session.execute(text("SELECT n FROM counter WHERE id = 1"))).scalar_one()
    assert n == 2  # the cancelled writes were rolled back, the others committed
