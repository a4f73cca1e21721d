"""The operations queue on SQLite and PostgreSQL: exclusive claims under concurrency,
one active operation per resource, stale leases requeued (and fenced), retries that
wait for ``run_after``, cancelling only while pending, and the worker's outcomes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from nefos.config import async_database_url
from nefos.db.models import Operation
from nefos.db.session import Database, begin_write
from nefos.db.types import utcnow
from nefos.domain.errors import Conflict, NefosError
from nefos.operations import OpContext, Retry, Workers, queue
from nefos.operations.queue import OpStatus
from tests.conftest import DatabaseFactory


@pytest.fixture(scope="module")
async def database(databases: DatabaseFactory) -> AsyncIterator[Database]:
    url = await asyncio.to_thread(databases.new_url)
    db = Database(async_database_url(url))
    await db.migrate()
    yield db
    await db.dispose()


@pytest.fixture
async def db(database: Database) -> Database:
    async with database.sessionmaker() as session:
        await begin_write(session)
        await session.execute(delete(Operation))
        await session.commit()
    return database


async def add(db: Database, resource_id: str | None = None, kind: str = "test.op") -> str:
    async with db.sessionmaker() as session:
        await begin_write(session)
        op = await queue.enqueue(
            session,
            kind=kind,
            resource_type="thing",
            resource_id=resource_id or str(uuid.uuid4()),
            project_id=None,
            user_id=None,
            params={"n": 1},
        )
        await session.commit()
        return op.id


async def row(db: Database, op_id: str) -> Operation:
    async with db.sessionmaker() as session:
        op = await session.get(Operation, op_id)
        assert op is not None
        return op


async def claim(db: Database, worker: str) -> queue.OpView | None:
    async with db.sessionmaker() as session:
        return await queue.claim(session, worker)


async def set_columns(db: Database, op_id: str, **values: Any) -> None:
    async with db.sessionmaker() as session:
        await begin_write(session)
        await session.execute(update(Operation).where(Operation.id == op_id).values(**values))
        await session.commit()


# --- claiming ---------------------------------------------------------------------------
async def test_claim_takes_the_oldest_runnable_and_marks_it_running(db: Database) -> None:
    ids = [await add(db) for _ in range(3)]
    view = await claim(db, "w1")
    assert view is not None and view.id == ids[0]
    assert view.attempts == 1 and view.params == {"n": 1} and view.kind == "test.op"
    op = await row(db, ids[0])
    assert (op.status, op.worker, op.attempts) == ("running", "w1", 1)
    assert op.started_at is not None and op.heartbeat_at is not None
    assert [(await claim(db, "w1")).id for _ in range(2)] == ids[1:]  # type: ignore[union-attr]
    assert await claim(db, "w1") is None


async def test_claim_is_exclusive_under_concurrency(db: Database) -> None:
    total, workers = 40, 8
    ids = {await add(db) for _ in range(total)}
    claimed: list[tuple[str, str]] = []
    deadline = time.monotonic() + 120

    async def worker(name: str) -> None:
        while len(claimed) < total:
            assert time.monotonic() < deadline, f"only {len(claimed)} of {total} claimed"
            view = await claim(db, name)
            if view is None:
                await asyncio.sleep(0.01)  # others hold the rest (SKIP LOCKED) or none left
                continue
            claimed.append((view.id, name))

    await asyncio.gather(*(worker(f"w{i}") for i in range(workers)))
    counts = Counter(op_id for op_id, _ in claimed)
    assert set(counts) == ids
    assert set(counts.values()) == {1}, [i for i, n in counts.items() if n > 1]
    by = dict(claimed)
    async with db.sessionmaker() as session:
        rows = (await session.scalars(select(Operation))).all()
    for op in rows:
        assert (op.status, op.attempts, op.worker) == ("running", 1, by[op.id])


# --- one active operation per resource --------------------------------------------------
async def test_second_operation_on_a_busy_resource_is_a_conflict(db: Database) -> None:
    resource = str(uuid.uuid4())
    first = await add(db, resource)
    with pytest.raises(Conflict) as info:
        await add(db, resource)
    assert info.value.details.get("operation_id") == first
    await add(db)  # another resource is free

    # Still held while it runs, released when it ends.
    assert (await claim(db, "w")).id == first  # type: ignore[union-attr]
    with pytest.raises(Conflict):
        await add(db, resource)
    async with db.sessionmaker() as session:
        assert await queue.finish(session, first, "w", status=OpStatus.SUCCEEDED)
    second = await add(db, resource)
    assert second != first


async def test_concurrent_enqueues_on_one_resource_admit_one(db: Database) -> None:
    resource = str(uuid.uuid4())
    results = await asyncio.gather(*(add(db, resource) for _ in range(6)), return_exceptions=True)
    ok = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, Conflict)]
    assert len(ok) == 1 and len(refused) == 5, results
    async with db.sessionmaker() as session:
        rows = (
            await session.scalars(select(Operation).where(Operation.resource_id == resource))
        ).all()
    assert [op.id for op in rows] == ok


# --- leases -------------------------------------------------------------------------------
async def test_requeue_stale_takes_back_only_lost_leases_and_fences_the_old_worker(
    db: Database,
) -> None:
    lost, alive = await add(db), await add(db)
    assert (await claim(db, "old")).id == lost  # type: ignore[union-attr]
    assert (await claim(db, "live")).id == alive  # type: ignore[union-attr]
    await set_columns(db, lost, heartbeat_at=utcnow() - timedelta(minutes=10))

    async with db.sessionmaker() as session:
        assert await queue.requeue_stale(session, lease=60) == [lost]
    op = await row(db, lost)
    assert (op.status, op.worker, op.run_after) == ("pending", None, None)
    assert op.lock == op.resource_id  # still the resource's active operation
    assert (await row(db, alive)).status == "running"

    # The worker that lost the lease can no longer touch it.
    async with db.sessionmaker() as session:
        assert not await queue.heartbeat(session, lost, "old", 50)
    async with db.sessionmaker() as session:
        assert not await queue.finish(session, lost, "old", status=OpStatus.SUCCEEDED)
    async with db.sessionmaker() as session:
        assert not await queue.retry_later(session, lost, "old", delay=0, reason="x")
    assert (await row(db, lost)).status == "pending"

    again = await claim(db, "new")
    assert again is not None and again.id == lost and again.attempts == 2
    async with db.sessionmaker() as session:
        assert await queue.heartbeat(session, lost, "new", 40)
    async with db.sessionmaker() as session:
        assert await queue.finish(session, lost, "new", status=OpStatus.SUCCEEDED, result={"a": 1})
    op = await row(db, lost)
    assert (op.status, op.lock, op.progress, op.result) == ("succeeded", None, 100, {"a": 1})
    assert op.finished_at is not None
    async with db.sessionmaker() as session:
        assert await queue.requeue_stale(session, lease=60) == []


async def test_a_fresh_heartbeat_is_not_stale(db: Database) -> None:
    op_id = await add(db)
    await claim(db, "w")
    await set_columns(db, op_id, heartbeat_at=utcnow() - timedelta(minutes=10))
    async with db.sessionmaker() as session:
        assert await queue.heartbeat(session, op_id, "w", 10)
    async with db.sessionmaker() as session:
        assert await queue.requeue_stale(session, lease=60) == []
    op = await row(db, op_id)
    assert (op.status, op.progress) == ("running", 10)


# --- retries ------------------------------------------------------------------------------
async def test_retry_later_waits_for_run_after(db: Database) -> None:
    waiting, other = await add(db), await add(db)
    assert (await claim(db, "w")).id == waiting  # type: ignore[union-attr]
    async with db.sessionmaker() as session:
        assert await queue.retry_later(session, waiting, "w", delay=3600, reason="host down")
    op = await row(db, waiting)
    assert (op.status, op.worker, op.error_message) == ("pending", None, "host down")
    assert op.run_after is not None and op.run_after > utcnow() + timedelta(minutes=50)
    with pytest.raises(Conflict):  # still the resource's active operation
        await add(db, op.resource_id)

    # Not runnable yet: the younger operation goes first, then nothing.
    assert (await claim(db, "w")).id == other  # type: ignore[union-attr]
    assert await claim(db, "w") is None

    await set_columns(db, waiting, run_after=utcnow() - timedelta(seconds=1))
    again = await claim(db, "w2")
    assert again is not None and again.id == waiting and again.attempts == 2
    assert (await row(db, waiting)).worker == "w2"


# --- cancelling ---------------------------------------------------------------------------
async def test_cancel_only_while_pending(db: Database) -> None:
    pending, running = await add(db), await add(db)
    await set_columns(db, pending, created_at=utcnow() + timedelta(seconds=5))
    assert (await claim(db, "w")).id == running  # type: ignore[union-attr]

    async with db.sessionmaker() as session:
        await begin_write(session)
        op = await session.get(Operation, running)
        assert op is not None
        assert not await queue.cancel_pending(session, op)
        await session.commit()
    assert (await row(db, running)).status == "running"

    async with db.sessionmaker() as session:
        await begin_write(session)
        op = await session.get(Operation, pending)
        assert op is not None
        assert await queue.cancel_pending(session, op)
        await session.commit()
    op = await row(db, pending)
    assert (op.status, op.lock) == ("cancelled", None)
    assert op.finished_at is not None
    assert await claim(db, "w") is None  # a cancelled operation never runs
    async with db.sessionmaker() as session:
        await begin_write(session)
        again = await session.get(Operation, pending)
        assert again is not None
        assert not await queue.cancel_pending(session, again)  # only once
        await session.commit()
    await add(db, op.resource_id)  # the resource is free again


# --- the worker ---------------------------------------------------------------------------
async def test_worker_outcomes(db: Database) -> None:
    failures: list[tuple[str, str, str]] = []

    async def ok(ctx: OpContext) -> dict[str, Any]:
        ctx.progress(50)
        return {"done": ctx.op.params["n"]}

    async def broken(ctx: OpContext) -> None:
        raise NefosError("it broke")

    async def unreachable(ctx: OpContext) -> None:
        raise Retry("host down")

    async def on_failure(ctx: OpContext, code: str, message: str) -> None:
        failures.append((ctx.op.id, code, message))

    workers = Workers(db=db, concurrency=0, retry_deadline=3600)
    workers.register("t.ok", ok, on_failure)
    workers.register("t.broken", broken, on_failure)
    workers.register("t.retry", unreachable, on_failure)
    good = await add(db, kind="t.ok")
    bad = await add(db, kind="t.broken")
    later = await add(db, kind="t.retry")
    unknown = await add(db, kind="t.unknown")
    for _ in range(4):
        assert await workers.run_one() is True
    assert await workers.run_one() is False  # the retry waits for its run_after

    op = await row(db, good)
    assert (op.status, op.result, op.progress, op.lock) == ("succeeded", {"done": 1}, 100, None)
    op = await row(db, bad)
    assert (op.status, op.error_code, op.error_message) == ("failed", "INTERNAL_ERROR", "it broke")
    assert op.lock is None
    op = await row(db, later)
    assert (op.status, op.attempts, op.error_message) == ("pending", 1, "host down")
    assert op.run_after is not None and op.run_after > utcnow()
    op = await row(db, unknown)
    assert op.status == "failed" and "t.unknown" in (op.error_message or "")
    assert failures == [(bad, "INTERNAL_ERROR", "it broke")]

    # Past the retry deadline the operation fails with the Retry's code.
    workers.retry_deadline = 0
    await set_columns(db, later, run_after=utcnow() - timedelta(seconds=1))
    assert await workers.run_one() is True
    op = await row(db, later)
    assert (op.status, op.error_code, op.attempts) == ("failed", "SERVICE_UNAVAILABLE", 2)
    assert failures[-1] == (later, "SERVICE_UNAVAILABLE", "host down")
