"""The gateway's calls, written in groups off the request path (``api_calls``).

A call the gateway answered is a usage event: it is billed and it is the creator's
call log, so none may be lost. Yet a transaction per call, committed inside the
call's ASGI cycle, was most of the gateway's cost and of its tail latency (the
connection's next request waits for it: docs/benchmarks.md, bench_api_gateway).
So the gateway hands each answered call to :class:`CallLog`, and:

* **Group commit.** A writer task wakes every ``api_call_flush_interval`` (or at once
  when :data:`GROUP` rows wait) and inserts every waiting row in one statement and
  one transaction. ``INSERT ... ON CONFLICT (request_id) DO NOTHING``: a group whose
  commit failed ambiguously (the connection lost after the commit) is written again
  without a duplicate.
* **Nothing dropped.** A group whose write fails stays first in line and is tried
  again (the writer backs off up to :data:`MAX_BACKOFF`), however long the database
  is away; the process's stop writes what waits before the database is closed.
  What a crash of the process loses is what waited: at most one interval's calls.
* **Bounded.** At ``api_call_buffer`` rows waiting (the database away, or slower than
  the calls), :attr:`full` is true and the gateway refuses new calls (503, before
  forwarding: a call never made costs nothing) until the writer catches up.
* **Money stays held.** :meth:`owed` is what the waiting priced calls of an
  organisation cost: the gateway's wallet check counts it with what the database
  says is owed, until the rows are written (then the database says it).
* **Read your calls.** :meth:`flush` returns once every row added before it is
  written (it writes them itself if the writer has not yet). Whatever reads
  ``api_calls`` in this process for a caller (the call log, figures, usage, the
  quota's alerts, reviews, the billing pass) flushes first, so a caller sees its
  calls at once; another process's calls appear within its interval.

Without a running writer (a process that serves no gateway, a tool) :meth:`add`
writes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite

from nefos.db.models import ApiCall
from nefos.db.session import Database
from nefos.db.types import utcnow

log = logging.getLogger("nefos.billing.calllog")

#: Rows that wake the writer before its interval is up.
GROUP = 500
#: Rows one statement inserts at most (a larger backlog is several statements).
STATEMENT_ROWS = 2000
#: Longest wait between two attempts while the database fails.
MAX_BACKOFF = 5.0
#: Seconds ``stop`` keeps trying to write what waits.
STOP_TIMEOUT = 15.0

Purse = tuple[str, str]  # (consumer organisation, currency)


class CallLog:
    """See the module docstring."""

    def __init__(
        self, db: Database, *, interval: float, limit: int, restamp_after: float = 30.0
    ) -> None:
        self.db = db
        self.interval = interval
        self.limit = limit
        self.restamp_after = timedelta(seconds=restamp_after)
        self._rows: deque[tuple[dict[str, Any], Purse | None, Decimal]] = deque()
        self._owed: dict[Purse, Decimal] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: Rows written, and group writes that failed (this process's, since start).
        self.written = 0
        self.failures = 0

    # --- the gateway's side --------------------------------------------------------
    @property
    def full(self) -> bool:
        return len(self._rows) >= self.limit

    @property
    def waiting(self) -> int:
        return len(self._rows)

    def owed(self, organisation_id: str, currency: str) -> Decimal:
        """What the waiting priced calls of the organisation cost in the currency."""
        return self._owed.get((organisation_id, currency), Decimal(0))

    async def add(self, row: dict[str, Any], purse: Purse | None, price: Decimal) -> None:
        """Queue one call's row (the ``api_calls`` columns; ``price`` is the row's,
        owed by ``purse`` until written)."""
        owes = purse if price > 0 else None
        self._rows.append((row, owes, price))
        if owes is not None:
            self._owed[owes] = self._owed.get(owes, Decimal(0)) + price
        if self._task is None:
            await self.flush()
        elif len(self._rows) >= GROUP:
            self._wake.set()

    # --- writing ---------------------------------------------------------------------
    async def flush(self) -> None:
        """Write every row added before this call (raises if the database fails:
        the rows stay, first in line)."""
        async with self._lock:
            while self._rows:
                n = min(len(self._rows), STATEMENT_ROWS)
                group = [self._rows[i] for i in range(n)]
                # A row that waited long (the database away) is stamped now: the
                # billing pass's windows close behind ``created_at``
                # (NEFOS_MARKETPLACE_SETTLE_SECONDS), and it must land in an open one.
                late = utcnow() - self.restamp_after
                for row, _, _ in group:
                    if row["created_at"] < late:
                        row["created_at"] = utcnow()
                await self._insert([row for row, _, _ in group])
                for _ in range(n):
                    self._rows.popleft()
                for _, purse, price in group:
                    if purse is not None:
                        left = self._owed[purse] - price
                        if left > 0:
                            self._owed[purse] = left
                        else:
                            del self._owed[purse]
                self.written += n

    async def _insert(self, rows: Sequence[dict[str, Any]]) -> None:
        dialect = postgresql if self.db.engine.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(ApiCall.__table__).on_conflict_do_nothing(
            index_elements=["request_id"]
        )
        # Core on a connection, not the ORM's session: no unit of work to build for
        # rows that are plain dicts (a third less CPU a group, on the event loop).
        async with self.db.engine.begin() as conn:
            await conn.execute(stmt, list(rows))

    # --- the writer ------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="api-call-log")

    async def stop(self) -> None:
        """Stop the writer and write what waits (trying for :data:`STOP_TIMEOUT`).
        The writer is asked to end after the group it is writing, not cancelled in
        the middle of its transaction (a connection cancelled there is not given
        back to the pool cleanly); cancelled only if it does not end in time."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            finally:
                self._stopping = False
        deadline = asyncio.get_running_loop().time() + STOP_TIMEOUT
        while self._rows:
            try:
                await self.flush()
            except Exception:
                if asyncio.get_running_loop().time() > deadline:
                    log.error("%d gateway calls could not be recorded at stop", len(self._rows))
                    return
                log.warning("gateway calls: the write at stop failed; again", exc_info=True)
                await asyncio.sleep(0.5)

    async def _loop(self) -> None:
        backoff = self.interval
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)
            self._wake.clear()
            if self._stopping:
                return  # ``stop`` writes what waits
            try:
                await self.flush()
                backoff = self.interval
            except Exception:
                self.failures += 1
                backoff = min(MAX_BACKOFF, max(backoff * 2, 0.1))
                log.warning(
                    "gateway calls: writing %d failed; again in %.1f s",
                    len(self._rows),
                    backoff,
                    exc_info=True,
                )
