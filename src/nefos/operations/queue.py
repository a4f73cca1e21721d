"""Operations: long actions recorded as rows and run by workers.

Life of an operation::

    pending --claim--> running --handler returns--> succeeded
       |                  |----handler raises-----> failed
       |                  |----host unreachable---> pending (run_after = later),
       |                  |                         failed after the retry deadline
       |                  '----heartbeat lost-----> pending (the reconciler requeues it)
       '--DELETE /operations/{id}--> cancelled

The row is written in the same transaction as the resource change it stands for
(``enqueue``), so a crash right after the API's commit leaves a pending operation
that a worker picks up on restart. ``lock`` holds the resource id while the
operation is active, and its unique constraint refuses a second active operation
on the same resource (409), on SQLite and PostgreSQL alike.

Claiming is one guarded ``UPDATE ... WHERE id = (SELECT ... LIMIT 1 FOR UPDATE SKIP
LOCKED) AND status = 'pending' RETURNING id``: on PostgreSQL the sub-select skips
rows other workers hold; on SQLite the write lock serialises claimers and the
``status`` guard stops a row from being claimed twice.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import Operation
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.errors import Conflict
from nefos.events import record
from nefos.events.capture import operation_event


class OpStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (OpStatus.PENDING, OpStatus.RUNNING)


@dataclass(frozen=True, slots=True)
class OpView:
    """What a handler gets: a detached snapshot of the claimed row."""

    id: str
    kind: str
    resource_type: str
    resource_id: str
    project_id: str | None
    user_id: str | None
    params: dict[str, Any]
    attempts: int
    created_at: datetime

    @classmethod
    def of(cls, op: Operation) -> OpView:
        return cls(
            id=op.id,
            kind=op.kind,
            resource_type=op.resource_type,
            resource_id=op.resource_id,
            project_id=op.project_id,
            user_id=op.user_id,
            params=dict(op.params or {}),
            attempts=op.attempts,
            created_at=op.created_at,
        )


async def enqueue(
    session: AsyncSession,
    *,
    kind: str,
    resource_type: str,
    resource_id: str,
    project_id: str | None,
    user_id: str | None,
    params: dict[str, Any] | None = None,
    lock: str | None = None,
) -> Operation:
    """Add a pending operation in the caller's transaction (the caller commits).

    ``lock`` is what the operation holds while active, the resource itself by
    default; an operation on a part of a resource (a VM's snapshot) locks the whole
    (the VM), so it never runs beside another change of it.

    Raises ``Conflict`` if the resource already has an active operation. The check
    is the ``lock`` unique constraint, so it holds under concurrency; the flush that
    trips it happens here, so the caller's transaction is rolled back for it.
    """
    lock = lock or resource_id
    active = await session.scalar(select(Operation).where(Operation.lock == lock))
    if active is not None:
        raise _busy(active)
    op = Operation(
        kind=kind,
        resource_type=resource_type,
        resource_id=resource_id,
        project_id=project_id,
        user_id=user_id,
        status=OpStatus.PENDING,
        lock=lock,
        params=params or {},
    )
    session.add(op)
    try:
        await session.flush()
    except IntegrityError as exc:
        await session.rollback()
        raise Conflict(
            "Another operation on this resource is in progress", resource_id=resource_id
        ) from exc
    return op


def _busy(active: Operation) -> Conflict:
    return Conflict(
        f"Operation {active.kind} ({active.status}) is in progress on this resource",
        operation_id=active.id,
        resource_id=active.resource_id,
    )


async def claim(session: AsyncSession, worker: str) -> OpView | None:
    """Claim the oldest runnable pending operation for ``worker``, or None."""
    now = utcnow()
    runnable = (Operation.status == OpStatus.PENDING) & (
        (Operation.run_after.is_(None)) | (Operation.run_after <= now)
    )
    # Idle workers look before they lock: on SQLite a write transaction takes the
    # database's one write lock, which polling must not hold for nothing.
    if await session.scalar(select(Operation.id).where(runnable).limit(1)) is None:
        await session.rollback()
        return None
    await begin_write(session)
    pick = (
        select(Operation.id)
        .where(
            Operation.status == OpStatus.PENDING,
            (Operation.run_after.is_(None)) | (Operation.run_after <= now),
        )
        .order_by(Operation.created_at)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    op_id = await session.scalar(
        update(Operation)
        .where(Operation.id == pick, Operation.status == OpStatus.PENDING)
        .values(
            status=OpStatus.RUNNING,
            worker=worker,
            attempts=Operation.attempts + 1,
            started_at=now,
            heartbeat_at=now,
            updated_at=now,
        )
        .returning(Operation.id)
        .execution_options(synchronize_session=False)
    )
    if op_id is None:
        await session.commit()
        return None
    op = await session.get(Operation, op_id, populate_existing=True)
    assert op is not None
    _told(
        session, op.id, op.kind, op.resource_type, op.resource_id, op.project_id, OpStatus.RUNNING
    )
    await session.commit()
    return OpView.of(op)


# What an operation_update event names, as the guarded UPDATEs return it.
_TOLD = (
    Operation.id,
    Operation.kind,
    Operation.resource_type,
    Operation.resource_id,
    Operation.project_id,
)


def _told(
    session: AsyncSession,
    op_id: str,
    kind: str,
    resource_type: str,
    resource_id: str,
    project_id: str | None,
    status: str,
    *,
    progress: int | None = None,
    error: dict[str, Any] | None = None,
) -> None:
    record(
        session,
        operation_event(
            op_id=op_id,
            kind=kind,
            status=str(status),
            resource_type=resource_type,
            resource_id=resource_id,
            project_id=project_id,
            progress=progress,
            error=error,
        ),
    )


async def heartbeat(session: AsyncSession, op_id: str, worker: str, progress: int | None) -> bool:
    """Renew the lease; False if the operation is no longer this worker's."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = progress
    await begin_write(session)
    result = await session.execute(
        update(Operation)
        .where(
            Operation.id == op_id,
            Operation.worker == worker,
            Operation.status == OpStatus.RUNNING,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    await session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def finish(
    session: AsyncSession,
    op_id: str,
    worker: str,
    *,
    status: OpStatus,
    result: dict[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    engine_message: str | None = None,
) -> bool:
    """End a running operation (this worker's); False if it was not ours any more.
    ``engine_message`` (an engine's raw text) is kept for platform admins only."""
    now = utcnow()
    await begin_write(session)
    res = await session.execute(
        update(Operation)
        .where(
            Operation.id == op_id,
            Operation.worker == worker,
            Operation.status == OpStatus.RUNNING,
        )
        .values(
            **await _engine_params(session, op_id, engine_message),
            status=status,
            lock=None,
            result=result,
            error_code=error_code,
            error_message=error_message,
            progress=100 if status == OpStatus.SUCCEEDED else Operation.progress,
            finished_at=now,
            updated_at=now,
        )
        .returning(*_TOLD)
        .execution_options(synchronize_session=False)
    )
    row = res.one_or_none()
    if row is not None:
        error = None if error_code is None else {"code": error_code, "message": error_message}
        progress = 100 if status == OpStatus.SUCCEEDED else None
        _told(session, *row, status, progress=progress, error=error)
    await session.commit()
    return row is not None


#: The key of ``Operation.params`` that keeps the engine's raw text of the last
#: failure: ``operation_public`` shows it to platform admins only.
ENGINE_MESSAGE = "engine_message"
MAX_ENGINE_MESSAGE = 2000


async def _engine_params(
    session: AsyncSession, op_id: str, engine_message: str | None
) -> dict[str, Any]:
    """The ``params`` value that records ``engine_message`` (nothing to set if None)."""
    if engine_message is None:
        return {}
    params = await session.scalar(select(Operation.params).where(Operation.id == op_id))
    return {"params": {**(params or {}), ENGINE_MESSAGE: engine_message[:MAX_ENGINE_MESSAGE]}}


async def retry_later(
    session: AsyncSession,
    op_id: str,
    worker: str,
    *,
    delay: float,
    reason: str,
    engine_message: str | None = None,
) -> bool:
    """Put a running operation back to pending, to be claimed after ``delay`` seconds."""
    now = utcnow()
    await begin_write(session)
    res = await session.execute(
        update(Operation)
        .where(
            Operation.id == op_id,
            Operation.worker == worker,
            Operation.status == OpStatus.RUNNING,
        )
        .values(
            **await _engine_params(session, op_id, engine_message),
            status=OpStatus.PENDING,
            worker=None,
            run_after=now + timedelta(seconds=delay),
            error_message=reason,
            updated_at=now,
        )
        .returning(*_TOLD)
        .execution_options(synchronize_session=False)
    )
    row = res.one_or_none()
    if row is not None:
        _told(session, *row, OpStatus.PENDING, error={"code": "RETRYING", "message": reason})
    await session.commit()
    return row is not None


async def requeue_stale(session: AsyncSession, lease: float) -> list[str]:
    """Running operations whose worker stopped heartbeating go back to pending."""
    now = utcnow()
    await begin_write(session)
    rows = (
        await session.execute(
            update(Operation)
            .where(
                Operation.status == OpStatus.RUNNING,
                Operation.heartbeat_at < now - timedelta(seconds=lease),
            )
            .values(status=OpStatus.PENDING, worker=None, run_after=None, updated_at=now)
            .returning(*_TOLD)
            .execution_options(synchronize_session=False)
        )
    ).all()
    for row in rows:
        _told(session, *row, OpStatus.PENDING)
    await session.commit()
    return [row[0] for row in rows]


async def cancel_pending(session: AsyncSession, op: Operation) -> bool:
    """Mark a pending operation cancelled (caller's transaction); False if it started."""
    now = utcnow()
    res = await session.execute(
        update(Operation)
        .where(Operation.id == op.id, Operation.status == OpStatus.PENDING)
        .values(status=OpStatus.CANCELLED, lock=None, finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if not res.rowcount:  # type: ignore[attr-defined]
        return False
    _told(session, op.id, op.kind, op.resource_type, op.resource_id, op.project_id, "cancelled")
    return True


class Wakeup:
    """In-process signal that new work was committed (cross-process: polling)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), seconds)
        except TimeoutError:
            pass
        self._event.clear()
