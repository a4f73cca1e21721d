"""Idempotency keys: the first response to a write, kept and replayed.

Stripe's rules: a retry with the same ``Idempotency-Key`` and the same request gets
the first response again (and nothing is done twice); the same key with another
request is a client error (422); a retry while the first is still being processed
is 409. Keys belong to their owner (a user or an API key) and expire after
``idempotency_ttl`` seconds. Responses the server failed to produce (5xx) are not
kept, so the retry runs for real: nothing was done the first time.

The claim is an ``INSERT`` under the ``(owner, key)`` unique constraint, so two
racing first requests cannot both run.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import IdempotencyRecord
from nefos.db.session import begin_write
from nefos.db.types import utcnow


class Outcome(enum.Enum):
    NEW = "new"  # run the request, then complete() or abandon()
    REPLAY = "replay"  # send the stored response
    MISMATCH = "mismatch"  # same key, another request: 422
    IN_PROGRESS = "in_progress"  # the first is still running: 409


@dataclass(frozen=True)
class Claim:
    outcome: Outcome
    record: IdempotencyRecord | None = None


async def claim(session: AsyncSession, owner: str, key: str, fingerprint: str, ttl: int) -> Claim:
    now = utcnow()
    for _ in range(2):
        await begin_write(session)
        existing = await session.scalar(
            select(IdempotencyRecord).where(
                IdempotencyRecord.owner == owner, IdempotencyRecord.key == key
            )
        )
        if existing is not None and existing.expires_at <= now:
            await session.delete(existing)
            await session.flush()
            existing = None
        if existing is not None:
            await session.commit()
            if existing.fingerprint != fingerprint:
                return Claim(Outcome.MISMATCH, existing)
            if existing.status != "done":
                return Claim(Outcome.IN_PROGRESS, existing)
            return Claim(Outcome.REPLAY, existing)
        record = IdempotencyRecord(
            owner=owner,
            key=key,
            fingerprint=fingerprint,
            status="running",
            expires_at=now + timedelta(seconds=ttl),
        )
        session.add(record)
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()  # a racing first request: look again
            continue
        return Claim(Outcome.NEW, record)
    return Claim(Outcome.IN_PROGRESS)


async def complete(
    session: AsyncSession, record_id: str, status: int, headers: dict[str, str], body: str
) -> None:
    await begin_write(session)
    record = await session.get(IdempotencyRecord, record_id, populate_existing=True)
    if record is not None:
        record.status = "done"
        record.response_status = status
        record.response_headers = headers
        record.response_body = body
    await session.commit()


async def abandon(session: AsyncSession, record_id: str) -> None:
    await begin_write(session)
    await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record_id))
    await session.commit()


async def prune(session: AsyncSession) -> int:
    await begin_write(session)
    result = await session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= utcnow())
    )
    await session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]
