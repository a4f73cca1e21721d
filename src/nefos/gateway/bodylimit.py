"""Request body limit (pure ASGI), applied before the body is read.

A ``Content-Length`` above the route's limit is refused at once: 413
``PAYLOAD_TOO_LARGE`` in the envelope, not a byte of the body read. A body without
one (chunked) is counted as it streams through ``receive``: the read that goes past
the limit raises :class:`BodyTooLarge` instead of handing the bytes on, so nothing
inside (idempotency, FastAPI's parsing) ever holds more than the limit. The limit is
``NEFOS_MAX_BODY_BYTES``; a few paths (image uploads) have a larger one.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nefos.gateway.envelope import send_error

CODE = "PAYLOAD_TOO_LARGE"


class BodyTooLarge(HTTPException):
    """The body went past its limit while being read. An HTTPException, so that
    FastAPI's body parsing lets it through to the error map as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, message(limit))
        self.limit = limit


def message(limit: int) -> str:
    return f"Request body too large: at most {limit} bytes are accepted here"


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int, larger: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.larger = dict(larger or {})  # path -> its own limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope["path"], self.limit)
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0  # the server refuses a malformed length itself
                if declared > limit:
                    await _refuse(send, limit)
                    return
                break
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            # Raised where no handler took it (e.g. a middleware reading the body).
            if started:
                raise
            await _refuse(send, limit)


async def _refuse(send: Send, limit: int) -> None:
    await send_error(send, 413, CODE, message(limit), {"limit": limit})
