"""One way to read a page of rows and the total they are a page of.

Every list reads through :func:`fetch_page`, in an order that ends with a unique
column (``created_at, id``), so that the order is total and two pages never overlap.

**Keyset pages.** A ``cursor`` names the sort key of the last row the previous page
showed; the next page is the rows *after* it (``WHERE (created_at, id) > (:t, :id)``),
which an index on the list's filter and order reads from that point on: the cost of
page 1,000 is that of page 1, and rows inserted or deleted meanwhile neither repeat
nor skip an item. Every page, offset ones too, notes where it ended
(``PageParams.end``) so that the answer carries the ``next_cursor``.

**Offset pages and the total** (``page``/``skip``). The count is not always a query:

- a page that is not full (no row after it; one extra row is read to know) is the
  end of the list, so ``total = offset + len(rows)``: most lists, which fit on one
  page, cost one query;
- otherwise the list is counted. A count of at least ``CACHE_FROM`` rows is kept,
  per engine and per statement (its structure and every bound value, so per caller's
  visible organisations and filters: nothing is shared between callers who could
  list different rows), for at most ``CACHE_TTL`` seconds and only until a write to
  any table the statement reads (or one that a foreign key cascades from) goes
  through this process: within a process, ``total`` is exact; a write made by
  another process shows in it within ``CACHE_TTL``;
- a deep offset page (``offset >= CACHE_FROM``) remembers the sort key at which it
  began and at which the next one begins, on the same terms, so the next read of
  that page (or of the one after it) seeks to it instead of walking the index from
  the start; an uncached deep page selects only the ids of the rows it skips and
  loads the objects of the rows it keeps.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Column, Table, and_, bindparam, event, func, inspect, or_, select, tuple_
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import operators
from sqlalchemy.sql.dml import Delete, UpdateBase
from sqlalchemy.sql.elements import ColumnElement, TextClause, UnaryExpression
from sqlalchemy.sql.util import find_tables

from nefos.domain.paging import InvalidCursor, PageParams, SortKey

M = TypeVar("M")

#: Lists at least this long keep their count (and deep offset pages their start).
CACHE_FROM = 1_000
#: How long a kept count may serve, at most (what another process's write may lag).
CACHE_TTL = 2.0
_MAX_ENTRIES = 512
_MAX_MARKS = 64
_WRITE_WORDS = ("insert", "update", "delete", "replace", "merge", "truncate", "alter", "drop")


# --- what changed: write generations per engine and table ---------------------------
@dataclass
class _Entry:
    generation: tuple[int, ...]
    expires: float
    total: int | None = None
    #: offset -> sort key of the row just before it
    marks: OrderedDict[int, SortKey] = field(default_factory=OrderedDict)


@dataclass
class _EngineState:
    epoch: int = 0  # bumped by a write whose tables are not known (text SQL, DDL)
    tables: dict[str, int] = field(default_factory=dict)
    entries: OrderedDict[Hashable, _Entry] = field(default_factory=OrderedDict)
    reads: dict[Hashable, tuple[str, ...]] = field(default_factory=dict)

    def generation(self, tables: tuple[str, ...]) -> tuple[int, ...]:
        return (self.epoch, *(self.tables.get(t, 0) for t in tables))

    def bump(self, names: set[str] | None) -> None:
        if names is None:
            self.epoch += 1
            return
        for name in names:
            self.tables[name] = self.tables.get(name, 0) + 1


_states: weakref.WeakKeyDictionary[Engine, _EngineState] = weakref.WeakKeyDictionary()
_cascades: dict[tuple[int, str], frozenset[str]] = {}
_WRITTEN = "nefos.paging.written"


def _state(engine: Engine) -> _EngineState:
    state = _states.get(engine)
    if state is None:
        state = _states[engine] = _EngineState()
    return state


def _cascade_names(table: Table) -> frozenset[str]:
    """``table`` and every table whose rows a delete from it may change through a
    foreign key (ON DELETE CASCADE / SET NULL), transitively."""
    key = (id(table.metadata), table.name)
    found = _cascades.get(key)
    if found is None:
        names = {table.name}
        frontier = [table.name]
        while frontier:
            parent = frontier.pop()
            for other in table.metadata.tables.values():
                if other.name not in names and any(
                    fk.column.table.name == parent and (fk.ondelete or "").upper() != "RESTRICT"
                    for fk in other.foreign_keys
                ):
                    names.add(other.name)
                    frontier.append(other.name)
        found = _cascades[key] = frozenset(names)
    return found


def _written(statement: Any) -> set[str] | bool | None:
    """The tables ``statement`` writes; None when it may write to any; False when it
    writes nothing."""
    if isinstance(statement, UpdateBase):
        table = statement.table
        if not isinstance(table, Table):
            return None
        if isinstance(statement, Delete):  # ON DELETE CASCADE / SET NULL reach further
            return set(_cascade_names(table))
        return {table.name}
    if isinstance(statement, TextClause):
        statement = statement.text
    if isinstance(statement, str):
        head = statement.lstrip().split(None, 1)[:1]
        return None if head and head[0].lower() in _WRITE_WORDS else False
    if getattr(statement, "is_ddl", False):
        return None
    return False


@event.listens_for(Engine, "after_execute")
def _after_execute(conn: Connection, statement: Any, *_: Any) -> None:
    names = _written(statement)
    if names is False:
        return
    state = _state(conn.engine)
    state.bump(names if isinstance(names, set) else None)
    # Bumped again at commit: a count read by another connection between this write
    # and its commit saw the rows as they were, and must not outlive the commit.
    pending = conn.info.setdefault(_WRITTEN, [])
    pending.append(names)


@event.listens_for(Engine, "commit")
def _after_commit(conn: Connection) -> None:
    pending = conn.info.pop(_WRITTEN, None)
    if pending:
        state = _state(conn.engine)
        for names in pending:
            state.bump(names if isinstance(names, set) else None)


@event.listens_for(Engine, "rollback")
def _after_rollback(conn: Connection) -> None:
    # An invalidated connection (a query cancelled) has no info to read: asking for
    # it raises, and the rollback would stop half-way.
    if not (conn.invalidated or conn.closed):
        conn.info.pop(_WRITTEN, None)


# --- the sort key --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _SortColumn:
    column: Column[Any]
    descending: bool


def _sort_columns(order_by: Sequence[Any]) -> list[_SortColumn]:
    spec = []
    for item in order_by:
        descending = False
        expr = item
        if isinstance(item, UnaryExpression) and item.modifier in (
            operators.desc_op,
            operators.asc_op,
        ):
            descending = item.modifier is operators.desc_op
            expr = item.element
        column = getattr(expr, "expression", expr)
        if not isinstance(column, Column):
            raise TypeError(f"a page is ordered by columns, not by {item!r}")
        spec.append(_SortColumn(column, descending))
    return spec


def _key_of(row: Any, spec: Sequence[_SortColumn]) -> SortKey:
    return tuple(getattr(row, s.column.key) for s in spec)


def _checked(after: SortKey, spec: Sequence[_SortColumn]) -> SortKey:
    """A cursor's key, checked against this list's order (a signed cursor of this list
    always fits; this guards against a change of order between versions)."""
    if len(after) != len(spec):
        raise InvalidCursor()
    for value, s in zip(after, spec, strict=True):
        expected = s.column.type.python_type
        if not isinstance(value, expected) or (type(value) is bool and expected is not bool):
            raise InvalidCursor()
    return after


def _after(spec: Sequence[_SortColumn], key: SortKey) -> ColumnElement[bool]:
    """Rows strictly after ``key`` in the ``spec`` order."""
    values = [bindparam(None, v, type_=s.column.type) for s, v in zip(spec, key, strict=True)]
    columns = [s.column for s in spec]
    if all(s.descending == spec[0].descending for s in spec):
        # One row-value comparison: both databases read it as an index range.
        if spec[0].descending:
            return tuple_(*columns) < tuple_(*values)
        return tuple_(*columns) > tuple_(*values)
    # Mixed directions: (a > x) or (a = x and b < y) or ..., with a bound on the
    # first column that an index can range over.
    terms = []
    for i, s in enumerate(spec):
        step = columns[i] < values[i] if s.descending else columns[i] > values[i]
        terms.append(and_(*(columns[j] == values[j] for j in range(i)), step))
    first = columns[0] <= values[0] if spec[0].descending else columns[0] >= values[0]
    return and_(first, or_(*terms))


# --- the page ------------------------------------------------------------------------
def _hashable(value: Any) -> Hashable:
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value  # type: ignore[no-any-return]


class _Cache:
    """The cached count and marks of one statement, valid while no table it reads
    was written to in this process and its time is not up."""

    def __init__(self, session: AsyncSession, statement: Any) -> None:
        self.state: _EngineState | None = None
        self.key: Hashable | None = None
        self.entry: _Entry | None = None
        bind = session.get_bind()
        engine = bind if isinstance(bind, Engine) else getattr(bind, "engine", None)
        cache_key = statement._generate_cache_key()
        if cache_key is None or not isinstance(engine, Engine):
            return
        try:
            values = tuple(_hashable(p.effective_value) for p in cache_key.bindparams)
            self.key = (cache_key.key, values)
            hash(self.key)
        except TypeError:
            self.key = None
            return
        self.state = _state(engine)
        tables = self.state.reads.get(cache_key.key)
        if tables is None:
            found = find_tables(
                statement, check_columns=True, include_aliases=True, include_joins=True
            )
            tables = tuple(sorted({t.name for t in found if isinstance(t, Table)}))
            self.state.reads[cache_key.key] = tables
        self.generation = self.state.generation(tables)
        entry = self.state.entries.get(self.key)
        if entry is not None:
            if entry.generation == self.generation and entry.expires > time.monotonic():
                self.state.entries.move_to_end(self.key)
                self.entry = entry
            else:
                del self.state.entries[self.key]

    def _open(self) -> _Entry | None:
        if self.state is None or self.key is None:
            return None
        if self.entry is None:
            # The generation read before the query: a write since then outdates it.
            self.entry = _Entry(self.generation, time.monotonic() + CACHE_TTL)
            self.state.entries[self.key] = self.entry
            while len(self.state.entries) > _MAX_ENTRIES:
                self.state.entries.popitem(last=False)
        return self.entry

    @property
    def total(self) -> int | None:
        return self.entry.total if self.entry is not None else None

    def keep_total(self, total: int) -> None:
        if total >= CACHE_FROM and (entry := self._open()) is not None:
            entry.total = total

    def mark(self, offset: int) -> SortKey | None:
        return self.entry.marks.get(offset) if self.entry is not None else None

    def keep_mark(self, offset: int, key: SortKey) -> None:
        if offset >= CACHE_FROM and (entry := self._open()) is not None:
            entry.marks[offset] = key
            while len(entry.marks) > _MAX_MARKS:
                entry.marks.popitem(last=False)


async def fetch_page(
    session: AsyncSession,
    model: type[M],
    *where: Any,
    order_by: Sequence[Any],
    page: PageParams,
) -> tuple[Sequence[M], int]:
    """Rows of ``model`` matching ``where``, in ``order_by`` order (plain or ``.desc()``
    columns ending with a unique one), from ``page.offset`` or after ``page.after``
    (a cursor's key), and the count of all that match. Notes in ``page.end`` where
    the page ended (the sort key of its last row when more follow)."""
    spec = _sort_columns(order_by)
    ordered = select(model).where(*where).order_by(*order_by)
    cache = _Cache(session, ordered)
    limit = page.limit
    page.end.keyset = True

    if page.after is not None:
        key = _checked(page.after, spec)
        rows = list(
            (await session.scalars(ordered.where(_after(spec, key)).limit(limit + 1))).all()
        )
        start = None
    else:
        start = page.offset
        seek = cache.mark(start) if start >= CACHE_FROM else None
        if seek is not None:
            query = ordered.where(_after(spec, seek)).limit(limit + 1)
            rows = list((await session.scalars(query)).all())
        else:
            # A deep page also reads the row before it: its key marks this page's start.
            learn = start >= CACHE_FROM
            first = start - 1 if learn else start
            rows = list(
                await _offset_rows(session, model, where, order_by, first, limit + 1 + learn)
            )
            if learn and rows:
                cache.keep_mark(start, _key_of(rows[0], spec))
                rows = rows[1:]

    more = len(rows) > limit
    del rows[limit:]
    page.end.after = _key_of(rows[-1], spec) if more else None
    if start is not None and more:
        cache.keep_mark(start + limit, page.end.after)  # type: ignore[arg-type]

    if start is not None and not more and (rows or start == 0):
        return rows, start + len(rows)
    total = cache.total
    if total is None:
        total = await session.scalar(select(func.count()).select_from(model).where(*where)) or 0
        cache.keep_total(total)
    return rows, total


async def _offset_rows(
    session: AsyncSession,
    model: type[M],
    where: Sequence[Any],
    order_by: Sequence[Any],
    offset: int,
    limit: int,
) -> Sequence[M]:
    """``limit`` rows from ``offset``. Past the start, the skipped rows are walked as
    ids only (an index covers them) and just the kept ones loaded as objects."""
    keys = inspect(model).primary_key
    if offset == 0 or len(keys) != 1:
        query = select(model).where(*where).order_by(*order_by).offset(offset).limit(limit)
        return (await session.scalars(query)).all()
    pk = keys[0]
    ids = select(pk).where(*where).order_by(*order_by).offset(offset).limit(limit).subquery()
    query = select(model).join(ids, ids.c[pk.key] == pk).order_by(*order_by)
    return (await session.scalars(query)).all()
