"""Several statements of a session's transaction in one call to its connection.

Through SQLAlchemy's async layer every statement is a round of its own: on SQLite,
aiosqlite runs each step (open a cursor, execute, close it) as a call in the
connection's thread and wakes the event loop after each, which costs more CPU than
the statement itself (docs/benchmarks.md, bench_placement.py). ``run_batch`` hands
a plain function the statements' executor instead, and runs all of it in one call:

* on SQLite, in aiosqlite's thread, on the ``sqlite3`` connection itself. The Core
  statements are compiled once per statement and set of parameter names, their
  parameters converted by their types' bind processors, and the columns' Python
  defaults and ``onupdate`` values computed as SQLAlchemy would;
* elsewhere (PostgreSQL), through ``AsyncConnection.run_sync``: the same function
  on SQLAlchemy's sync ``Connection``, one network round trip per statement as
  before, without the async session's per-statement machinery.

The function runs in the session's transaction, after whatever the session had
already sent; the ORM does not see what it writes (flush pending objects first,
and do not expect the rows in the identity map). Errors are SQLAlchemy's
(``IntegrityError`` and the rest of ``DBAPIError``) on both paths.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.schema import Column, ColumnDefault

T = TypeVar("T")
Params = Mapping[str, Any]


class Statements(Protocol):
    """What a batch function may do: run DML in the caller's transaction."""

    def execute(self, statement: UpdateBase, params: Params) -> int:
        """Run ``statement`` once; the number of rows it matched."""
        ...

    def executemany(self, statement: UpdateBase, rows: Sequence[Params]) -> None:
        """Run ``statement`` once per parameter set."""
        ...


async def run_batch(session: AsyncSession, fn: Callable[[Statements], T]) -> T:
    """Run ``fn`` with an executor of ``session``'s transaction, in one call to the
    connection (see the module's docstring). ``fn`` must not await or block on
    anything but the database: on SQLite it runs in the connection's thread."""
    conn = await session.connection()
    if conn.dialect.name == "sqlite" and conn.dialect.driver == "aiosqlite":
        raw = await conn.get_raw_connection()
        aio = raw.driver_connection
        # aiosqlite queues a callable for its thread with ``_execute``: the same queue
        # SQLAlchemy's own aiosqlite adapter feeds directly (its isolation_level).
        result: T = await aio._execute(  # type: ignore[union-attr]
            _run_sqlite,
            fn,
            aio._conn,  # type: ignore[union-attr]
            conn.dialect,
        )
        return result
    return await conn.run_sync(lambda sync: fn(_ConnectionStatements(sync)))


class _ConnectionStatements:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def execute(self, statement: UpdateBase, params: Params) -> int:
        return int(self._connection.execute(statement, dict(params)).rowcount)

    def executemany(self, statement: UpdateBase, rows: Sequence[Params]) -> None:
        if len(rows) == 1:  # SQLAlchemy's executemany path costs more for one row
            self._connection.execute(statement, dict(rows[0]))
        elif rows:
            self._connection.execute(statement, [dict(r) for r in rows])


def _run_sqlite(fn: Callable[[Statements], T], raw: sqlite3.Connection, dialect: Dialect) -> T:
    return fn(_SqliteStatements(raw, dialect))


class _SqliteStatements:
    def __init__(self, raw: sqlite3.Connection, dialect: Dialect) -> None:
        self._raw = raw
        self._dialect = dialect

    def execute(self, statement: UpdateBase, params: Params) -> int:
        compiled = _compiled(statement, self._dialect, params)
        values = compiled.values(params)
        try:
            return self._raw.execute(compiled.sql, values).rowcount
        except sqlite3.Error as exc:
            raise _wrapped(compiled.sql, values, exc) from exc

    def executemany(self, statement: UpdateBase, rows: Sequence[Params]) -> None:
        if not rows:
            return
        compiled = _compiled(statement, self._dialect, rows[0])
        values = [compiled.values(r) for r in rows]
        try:
            self._raw.executemany(compiled.sql, values)
        except sqlite3.Error as exc:
            raise _wrapped(compiled.sql, values, exc) from exc


def _wrapped(sql: str, values: Any, exc: sqlite3.Error) -> StatementError:
    # What SQLAlchemy raises for the same driver error (IntegrityError, ...).
    return DBAPIError.instance(sql, values, exc, sqlite3.Error)


Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A statement as SQL for the driver, and how to make its positional parameters:
    each is the caller's value, a constant of the statement, or a column default."""

    sql: str
    # (caller's key or None, constant or ColumnDefault, bind processor) per position
    slots: tuple[tuple[str | None, Any, Processor], ...]
    statement: UpdateBase  # kept alive: the cache is keyed by its id

    def values(self, params: Params) -> tuple[Any, ...]:
        out = []
        for key, constant, process in self.slots:
            if key is not None:
                value = params[key]
            elif isinstance(constant, ColumnDefault):
                value = constant.arg(None) if constant.is_callable else constant.arg
            else:
                value = constant
            out.append(value if process is None or value is None else process(value))
        return tuple(out)


_CACHE: dict[tuple[int, frozenset[str], str], _Compiled] = {}
_CACHE_LOCK = threading.Lock()  # compiled in each connection's own thread
_CACHE_SIZE = 64


def _compiled(statement: UpdateBase, dialect: Dialect, params: Params) -> _Compiled:
    names = frozenset(params)
    key = (id(statement), names, dialect.name)
    found = _CACHE.get(key)
    if found is not None and found.statement is statement:
        return found
    made = _compile(statement, dialect, names)
    with _CACHE_LOCK:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        _CACHE[key] = made
    return made


def _compile(statement: UpdateBase, dialect: Dialect, names: frozenset[str]) -> _Compiled:
    compiled = statement.compile(dialect=dialect, column_keys=sorted(names))
    assert isinstance(compiled, SQLCompiler)
    if compiled.positiontup is None or compiled.literal_execute_params:
        raise ValueError("run_batch needs positional parameters and no expanding IN")
    if compiled.post_compile_params or compiled.returning:
        raise ValueError("run_batch runs plain DML: no expanding IN, no RETURNING")
    defaults: dict[str, ColumnDefault] = {}
    prefetch: list[Column[Any]] = list(compiled.insert_prefetch) + list(compiled.update_prefetch)
    for column in prefetch:
        default = column.onupdate if compiled.isupdate else column.default
        if not isinstance(default, ColumnDefault):
            raise ValueError(f"run_batch: column {column.key} has a default it cannot compute")
        defaults[column.key] = default
    slots: list[tuple[str | None, Any, Processor]] = []
    for name in compiled.positiontup:
        bind = compiled.binds[name]
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if name in defaults and name not in names:
            slots.append((None, defaults[name], process))
        elif bind.required or name in names:
            slots.append((name, None, process))
        else:
            value = bind.effective_value
            if isinstance(value, ColumnElement):
                raise ValueError(f"run_batch: parameter {name} is not a plain value")
            # A constant of the statement: converted once, here.
            if process is not None and value is not None:
                value = process(value)
            slots.append((None, value, None))
    return _Compiled(compiled.string, tuple(slots), statement)
