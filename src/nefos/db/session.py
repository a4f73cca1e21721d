"""The async engine, session factory and schema migration on start."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import AdaptedConnection, Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from nefos.config import is_sqlite

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


WRITE_OPTION = "nefos_write"


class _SQLiteConnection(sqlite3.Connection):
    """A connection that rolls its transaction back when it is closed.

    sqlite3's ``close`` is ``sqlite3_close_v2``: while a statement of the connection
    is not finalized (a cursor still referenced, say from the traceback of a task
    cancelled in the middle of a query, which a log record keeps), the connection
    only becomes a "zombie", and its transaction, with SQLite's write lock, stays
    open until that statement is gone. SQLAlchemy closes a connection it
    invalidated (a query cancelled) without a rollback; every other writer then
    waits on the lock until it gives up ("database is locked")."""

    def close(self) -> None:
        if self.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.rollback()
        super().close()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin
    # (see _sqlite_begin); the module's own guessing commits around DDL.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the one writer; busy_timeout makes a writer wait
    # for the lock instead of failing at once; foreign keys are off by default.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # A deferred transaction that reads and then writes fails with SQLITE_BUSY
    # (no waiting) when another writer committed in between. Writes therefore take
    # the write lock up front; reads stay deferred so they never queue.
    sql = "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN"
    adapted = conn.connection.dbapi_connection
    if isinstance(adapted, AdaptedConnection):
        # One call in aiosqlite's thread; exec_driver_sql would make three (open a
        # cursor, execute, close it), each waking the event loop, on every transaction.
        adapted.run_async(lambda aio: aio.execute(sql))
    else:
        conn.exec_driver_sql(sql)


async def begin_write(session: AsyncSession) -> None:
    """Start ``session``'s transaction as a write transaction.

    Call it before the first statement of a read-modify-write unit of work. On
    PostgreSQL it is a no-op (row locks do the work there).
    """
    if session.in_transaction():
        await session.commit()
    await session.connection(execution_options={WRITE_OPTION: True})


class Database:
    """Owns one engine; created in the app's lifespan, so it lives on the app's loop."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = is_sqlite(url)
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"factory": _SQLiteConnection}
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        # A Session class of this database's own, so that listeners (the events'
        # capture) attach to its sessions only, not to every engine in the process.
        self.sync_session_class: type[Session] = type("NefosSession", (Session,), {})
        self.sessionmaker = async_sessionmaker(
            self.engine, expire_on_commit=False, sync_session_class=self.sync_session_class
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as session:
            yield session

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


def alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), "head")
