"""Followed answers, streamed as NDJSON (:func:`ndjson_stream`): the lines a
container's replicas write and the gateway's calls of an API.

``GET /containers/{id}/logs?follow=true`` and ``GET /apis/{id}/logs?source=container
&follow=true`` answer with :func:`output_stream` (each line an
:class:`~nefos.schemas.apis.ApiOutputLine`), ``GET /apis/{id}/logs?follow=true``
with :func:`calls_stream` (each an :class:`~nefos.schemas.apis.ApiCallLog`). A
stream holds one of its user's blocking slots while it runs
(``routes.services.blocking_slot``), so their number is bounded per user, and ends
after its ``seconds`` (at most :data:`~nefos.services.api_usage.MAX_FOLLOW`), when
the container or its host goes, or when the client leaves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import StreamingResponse

from nefos.api.deps import Access
from nefos.api.routes.services import blocking_slot
from nefos.db.types import utcnow
from nefos.schemas.apis import ApiCallLog, ApiOutputLine
from nefos.services import api_usage

#: How a followed answer is documented (OpenAPI ``responses[200]``).
OUTPUT_STREAM_DOC: dict[str, Any] = {
    "application/x-ndjson": {
        "schema": ApiOutputLine.model_json_schema(),
        "example": "One output line a line, as the replicas write them (follow=true).",
    }
}


async def ndjson_stream(
    access: Access, session: AsyncSession, items: Callable[[], AsyncIterator[BaseModel]]
) -> StreamingResponse:
    """An NDJSON answer of what ``items()`` yields, one model a line, holding one of
    the user's blocking slots while it runs (a 429 now if all are held). The
    request's ``session`` is closed first: the stream may last minutes, and must not
    hold a pooled connection meanwhile (``items`` reads on sessions of its own)."""
    user_id = access.principal.user_id
    with blocking_slot(user_id):
        pass  # a 429 now if the user holds all of its blocking slots
    await session.close()

    async def lines() -> AsyncIterator[bytes]:
        # The slot is held while the stream runs: taken when it starts, given back
        # when it ends or its client goes.
        with blocking_slot(user_id):
            async for item in items():
                yield item.model_dump_json().encode() + b"\n"

    return StreamingResponse(
        lines(), media_type="application/x-ndjson", headers={"Cache-Control": "no-store"}
    )


async def output_stream(
    core: Any,
    access: Access,
    session: AsyncSession,
    container_id: str | None,
    *,
    since: datetime | None,
    seconds: int,
    level: api_usage.Level | None = None,
    slot: int | None = None,
) -> StreamingResponse:
    """The lines the container's replicas (or replica ``slot``) write from ``since``
    (default: now) on, for ``seconds``."""
    start = since or utcnow()

    async def items() -> AsyncIterator[ApiOutputLine]:
        if container_id is None:
            return  # no replicas (deleted): nothing will come
        async for out in api_usage.follow_output(
            core, container_id, seconds=seconds, start=start, level=level, slot=slot
        ):
            yield ApiOutputLine(replica=out.replica, time=out.time, line=out.line)

    return await ndjson_stream(access, session, items)


async def calls_stream(
    core: Any, access: Access, session: AsyncSession, where: api_usage.CallFilter, seconds: int
) -> StreamingResponse:
    """The gateway's calls ``where`` matches, from ``where.since`` (default: now) on,
    for ``seconds`` (``GET /apis/{id}/logs?follow=true``)."""
    start = where.since or utcnow()

    async def items() -> AsyncIterator[ApiCallLog]:
        async for call in api_usage.follow(core.db, where, seconds=seconds, start=start):
            yield ApiCallLog.model_validate(api_usage.call_public(call))

    return await ndjson_stream(access, session, items)
