"""A writer cancelled in the middle of a statement leaves nothing locked behind.

A lease renewal that times out, or a pass stopped with its lease, is cancelled
wherever it is, also half-way through a query of a write transaction. SQLAlchemy
then invalidates the connection and closes it without a rollback. On SQLite that
close used to leave a "zombie" connection that kept the write lock for as long as
the cancelled cursor was referenced (a log record's traceback keeps it), and every
other writer of the installation failed with "database is locked"."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.util import await_

from nefos.config import async_database_url
from nefos.db.session import Database, begin_write, is_open
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


# --- closing the database under cancelled work -------------------------------------------
@pytest.fixture(scope="module")
def url(databases: DatabaseFactory) -> str:
    return async_database_url(databases.new_url())


async def test_closing_waits_for_a_cancelled_session_to_give_its_connection_back(
    url: str,
) -> None:
    """A task cancelled and not awaited (a loop's helper task, stopped on the way
    out) finishes closing its session after the cancellation: SQLAlchemy runs that
    close to its end. The close of the database waits for the connection to come
    back, rather than leaving it to a pool no one holds (and the garbage collector)."""
    db = Database(url)
    resetting = asyncio.Event()

    def slow_reset(_conn: Any, _record: Any, _state: Any) -> None:
        resetting.set()
        await_(asyncio.sleep(0.5))  # the give-back takes a while (a rollback, say)

    event.listen(db.engine.sync_engine.pool, "reset", slow_reset)
    reader = asyncio.create_task(_read(db, "SELECT 1"))
    await asyncio.wait_for(resetting.wait(), 10)
    reader.cancel()  # while its session gives the connection back; not awaited
    pool = db.engine.pool
    await db.dispose()
    assert pool.checkedout() == 0
    assert reader.done()


async def test_closing_ends_a_connection_still_in_use_after_the_grace(
    url: str, backend: str
) -> None:
    """A session still running when the grace ends loses its connection: closed by the
    close of the database, not dropped for the garbage collector (nor left open on
    the server)."""
    db = Database(url)
    opened: list[Any] = []
    event.listen(
        db.engine.sync_engine, "connect", lambda conn, _: opened.append(conn.driver_connection)
    )
    slow = {"postgresql": "SELECT pg_sleep(30)", "sqlite": SLOW["sqlite"]}[backend]
    reader = asyncio.create_task(_read(db, slow))
    for _ in range(500):
        if opened:
            break
        await asyncio.sleep(0.01)
    assert opened, "the reader was to connect"
    assert is_open(opened[0])
    await db.dispose(grace=0.2)
    assert not is_open(opened[0])
    with contextlib.suppress(Exception):
        await asyncio.wait_for(reader, 10)  # its statement fails: the connection is gone
    assert reader.done()


async def _read(db: Database, sql: str) -> None:
    async with db.session() as session:
        await session.execute(text(sql))
