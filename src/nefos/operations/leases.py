"""Singleton leases: a loop that must run in one process at a time holds a lease.

A lease is one row of ``leases`` (name, holder, fencing token, expires_at). Every
change is one guarded statement, in the style of the operation queue's claims:

* ``acquire`` takes a lease that is free (no row yet, released, or expired): an
  ``INSERT ... ON CONFLICT DO NOTHING`` for the first holder ever, else an
  ``UPDATE ... WHERE expires_at <= now`` that raises the fencing token by one. Two
  processes racing for it: the database lets one statement through, the other
  matches no row (PostgreSQL re-reads the row after the winner commits; SQLite
  writes one at a time).
* ``renew`` moves the expiry on, ``WHERE holder = me AND token = mine``: it fails
  once anybody has taken the lease over (the token moved on).
* ``release`` clears the holder and expires the lease at once (a clean shutdown),
  so another process takes it over on its next look rather than a period later.
* ``holds`` is what a loop asks before each pass: is the lease still mine, with my
  token, unexpired?

Times are the processes' own clocks (UTC), as the operation queue's leases are: the
hosts of one installation keep their clocks in step (NTP).

``Singleton`` runs a set of passes (and services with a start/stop of their own)
while it holds its lease: it tries to take the lease, renews it every third of a
period, stops everything the moment it cannot (lost, or not renewed before the
lease would run out), and takes it again when it is free. A holder stops acting at
its own deadline, which always comes before the expiry the database holds, so two
processes never run one loop at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from nefos.db.models import Lease
from nefos.db.session import Database, begin_write
from nefos.db.types import utcnow

log = logging.getLogger("nefos.leases")

# A renewal (or a look at a free lease) that takes longer than this share of the
# period counts as failed: the holder's deadline is never passed waiting on it.
RENEW_SHARE = 3
RELEASE_TIMEOUT = 5.0
#: How long a stopping lease waits for its cancelled passes before it goes on
#: without them (and says which, with where each was stuck).
STOP_TIMEOUT = 10.0


async def _cancel_and_wait(tasks: Sequence[asyncio.Task[Any]], what: str) -> None:
    """Cancel ``tasks`` and wait for them, at most ``STOP_TIMEOUT``. A cancellation
    can be lost (Python 3.11's ``asyncio.wait_for`` returns the inner result when it
    finishes as the cancellation arrives): a task still running after a second is
    cancelled once more. Not more often: a task that is rolling back its transaction
    must be let finish, or its connection keeps the database's write lock."""
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=1.0)
    for task in pending:
        task.cancel()
    if pending:
        _, pending = await asyncio.wait(pending, timeout=STOP_TIMEOUT)
    for task in pending:
        frames = "".join(
            f"\n  {f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}"
            for f in task.get_stack(limit=8)
        )
        log.error(
            "%s: %s did not stop within %.0f s:%s", what, task.get_name(), STOP_TIMEOUT, frames
        )


def new_holder() -> str:
    """``host:pid:random``: who holds a lease, unique to one running process part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class LeaseView:
    name: str
    holder: str | None
    token: int
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime

    def live(self, now: datetime | None = None) -> bool:
        return self.holder is not None and self.expires_at > (now or utcnow())


def _view(row: Lease) -> LeaseView:
    return LeaseView(
        name=row.name,
        holder=row.holder,
        token=row.token,
        acquired_at=row.acquired_at,
        renewed_at=row.renewed_at,
        expires_at=row.expires_at,
    )


async def acquire(
    db: Database, name: str, holder: str, seconds: float, *, now: datetime | None = None
) -> int | None:
    """Take the lease if it is free; its new fencing token, or None (held by another,
    or still by this holder: use ``renew`` for that)."""
    now = now or utcnow()
    until = now + timedelta(seconds=seconds)
    async with db.sessionmaker() as session:
        await begin_write(session)
        insert = sqlite_insert if db.is_sqlite else pg_insert
        first = await session.execute(
            insert(Lease)
            .values(
                name=name,
                holder=holder,
                token=1,
                acquired_at=now,
                renewed_at=now,
                expires_at=until,
            )
            .on_conflict_do_nothing(index_elements=[Lease.name])
        )
        if first.rowcount == 1:  # type: ignore[attr-defined]
            await session.commit()
            return 1
        taken = await session.execute(
            update(Lease)
            .where(Lease.name == name, Lease.expires_at <= now)
            .values(
                holder=holder,
                token=Lease.token + 1,
                acquired_at=now,
                renewed_at=now,
                expires_at=until,
            )
            .execution_options(synchronize_session=False)
        )
        token = None
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            token = await session.scalar(
                select(Lease.token).where(Lease.name == name, Lease.holder == holder)
            )
        await session.commit()
        return token


async def renew(
    db: Database,
    name: str,
    holder: str,
    token: int,
    seconds: float,
    *,
    now: datetime | None = None,
) -> bool:
    """Move the expiry on; False once the lease is not ``holder``'s with ``token``."""
    now = now or utcnow()
    async with db.sessionmaker() as session:
        await begin_write(session)
        result = await session.execute(
            update(Lease)
            .where(Lease.name == name, Lease.holder == holder, Lease.token == token)
            .values(renewed_at=now, expires_at=now + timedelta(seconds=seconds))
            .execution_options(synchronize_session=False)
        )
        await session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def release(
    db: Database, name: str, holder: str, token: int, *, now: datetime | None = None
) -> bool:
    """Give the lease up now (it expires at once); False if it was not ours."""
    now = now or utcnow()
    async with db.sessionmaker() as session:
        await begin_write(session)
        result = await session.execute(
            update(Lease)
            .where(Lease.name == name, Lease.holder == holder, Lease.token == token)
            .values(holder=None, expires_at=now)
            .execution_options(synchronize_session=False)
        )
        await session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def holds(
    db: Database, name: str, holder: str, token: int, *, now: datetime | None = None
) -> bool:
    """Is the lease ``holder``'s, with ``token``, and unexpired?"""
    now = now or utcnow()
    async with db.sessionmaker() as session:
        found = await session.scalar(
            select(Lease.name).where(
                Lease.name == name,
                Lease.holder == holder,
                Lease.token == token,
                Lease.expires_at > now,
            )
        )
        return found is not None


async def listing(db: Database) -> list[LeaseView]:
    async with db.sessionmaker() as session:
        rows = (await session.scalars(select(Lease).order_by(Lease.name))).all()
        return [_view(r) for r in rows]


async def get(db: Database, name: str) -> LeaseView | None:
    async with db.sessionmaker() as session:
        row = await session.get(Lease, name)
        return None if row is None else _view(row)


class Service(Protocol):
    """What runs a loop of its own (the webhook dispatcher)."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Pass:
    """One job run every ``interval`` seconds while the lease is held."""

    name: str
    interval: float
    run: Callable[[], Awaitable[Any]]
    first_delay: float = 0.0
    runs: int = 0
    last_error: str | None = None


@dataclass
class Singleton:
    """A lease, and the passes and services that run while this process holds it."""

    db: Database
    name: str
    holder: str
    seconds: float
    passes: Sequence[Pass] = ()
    services: Sequence[Service] = ()
    token: int | None = field(default=None, init=False)
    takeovers: int = field(default=0, init=False)
    _deadline: float = field(default=0.0, init=False)
    _keeper: asyncio.Task[None] | None = field(default=None, init=False)
    _running: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    #: Bumped when the passes are to stop: a pass whose cancellation was lost ends at
    #: its next turn.
    _generation: int = field(default=0, init=False)
    _abandoning: asyncio.Task[None] | None = field(default=None, init=False)

    @property
    def held(self) -> bool:
        """Held, as far as this process knows without asking: taken, and its own
        deadline (which comes before the database's expiry) not yet passed."""
        return self.token is not None and time.monotonic() < self._deadline

    async def start(self) -> None:
        """Try once now (the one-process install runs its loops from its first
        second), then keep trying, or renewing, in the background."""
        await self._try_acquire()
        self._keeper = asyncio.create_task(self._keep(), name=f"lease-{self.name}")

    async def stop(self) -> None:
        """Stop what runs, then release the lease so that another process takes the
        loops over on its next look."""
        if self._keeper is not None:
            await _cancel_and_wait([self._keeper], f"lease {self.name}")
            self._keeper = None
        token = self.token
        await self._lose()
        if token is not None:
            try:
                await asyncio.wait_for(
                    release(self.db, self.name, self.holder, token), RELEASE_TIMEOUT
                )
            except Exception:  # it expires on its own, one period later
                log.warning("lease %s: release failed", self.name, exc_info=True)

    async def check(self) -> bool | None:
        """Before each pass: is the lease (with our fencing token) still ours? None:
        the database could not say (the pass waits; the keeper decides)."""
        token = self.token
        if token is None or not self.held:
            return False
        try:
            return await asyncio.wait_for(holds(self.db, self.name, self.holder, token), self._step)
        except Exception:
            log.warning("lease %s: cannot check it; the pass waits", self.name, exc_info=True)
            return None

    @property
    def _step(self) -> float:
        return self.seconds / RENEW_SHARE

    async def _keep(self) -> None:
        while True:
            wait = self._step
            if self.token is None:
                # A held lease expires at its expires_at: look again then (at most a
                # step away), so a dead holder's loops move within one period.
                with contextlib.suppress(Exception):
                    current = await asyncio.wait_for(get(self.db, self.name), self._step)
                    if current is not None and current.holder is not None:
                        left = (current.expires_at - utcnow()).total_seconds()
                        wait = min(max(left, 0.05), self._step)
            await asyncio.sleep(wait)
            if self.token is None:
                await self._try_acquire()
            else:
                await self._renew()

    async def _try_acquire(self) -> None:
        started = time.monotonic()
        try:
            token = await asyncio.wait_for(
                acquire(self.db, self.name, self.holder, self.seconds), self._step
            )
        except Exception:
            log.warning("lease %s: cannot take it now", self.name, exc_info=True)
            return
        if token is None:
            return
        self.token, self._deadline = token, started + self.seconds
        self.takeovers += 1
        log.info("lease %s taken by %s (token %d)", self.name, self.holder, token)
        for service in self.services:
            service.start()
        self._running = [
            asyncio.create_task(self._run(p, self._generation), name=f"{self.name}-{p.name}")
            for p in self.passes
        ]

    async def _renew(self) -> None:
        token = self.token
        assert token is not None
        started = time.monotonic()
        try:
            ok: bool | None = await asyncio.wait_for(
                renew(self.db, self.name, self.holder, token, self.seconds), self._step
            )
        except Exception:
            log.warning("lease %s: renewal failed", self.name, exc_info=True)
            ok = None
        if ok:
            self._deadline = started + self.seconds
        elif ok is False:
            log.warning("lease %s lost (token %d): its loops stop here", self.name, token)
            await self._lose()
        elif time.monotonic() >= self._deadline:
            log.warning("lease %s not renewed in time: its loops stop here", self.name)
            await self._lose()

    async def _lose(self) -> None:
        self.token = None
        self._generation += 1
        running, self._running = self._running, []
        await _cancel_and_wait(running, f"lease {self.name}")
        for service in self.services:
            try:
                await service.stop()
            except Exception:
                log.exception("lease %s: stopping a service failed", self.name)

    async def _run(self, job: Pass, generation: int) -> None:
        await asyncio.sleep(job.first_delay)
        while generation == self._generation:
            started = time.monotonic()
            mine = await self.check()
            if mine:
                try:
                    await job.run()
                    job.runs += 1
                    job.last_error = None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    job.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("%s pass failed", job.name)
            elif mine is False and self.token is not None and self._abandoning is None:
                # The database says it is not ours (our token is stale): stop every
                # pass now rather than at the next renewal; the keeper looks again.
                log.warning("lease %s lost (seen before a pass): its loops stop", self.name)
                self._abandoning = asyncio.create_task(self._abandon())
            await asyncio.sleep(max(job.interval - (time.monotonic() - started), 0.0))

    async def _abandon(self) -> None:
        try:
            await self._lose()
        finally:
            self._abandoning = None
