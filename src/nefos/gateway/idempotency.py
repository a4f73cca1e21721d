"""``Idempotency-Key`` on every POST, PUT, PATCH and DELETE (pure ASGI middleware).

The key is scoped to the caller: an API key (by its hash) or a user (the ``sub`` of
a verified access token), so one tenant's keys never meet another's. A request
without credentials passes through untouched (it is refused later anyway, or is a
public route such as registration). The fingerprint is a SHA-256 of the method,
path, query string and body. See ``services.idempotency`` for the rules.

A replayed response carries ``Idempotent-Replayed: true``.
"""

from __future__ import annotations

import hashlib
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nefos.gateway.client import credential
from nefos.gateway.envelope import send_error
from nefos.gateway.parts import GatewayParts
from nefos.security.tokens import InvalidToken
from nefos.services import idempotency
from nefos.services.idempotency import Outcome

log = logging.getLogger("nefos.gateway")

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HEADER = b"idempotency-key"
MAX_KEY = 255
MAX_BODY = 8 * 1024 * 1024
# Response headers worth replaying (the body's type and where the new thing is).
_KEPT = {"content-type", "location", "deprecation", "sunset"}


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in scope["headers"]}


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        raw_key = headers.get(HEADER)
        if raw_key is None:
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1").strip()
        if not key or len(key) > MAX_KEY or not key.isprintable() or not key.isascii():
            await send_error(
                send,
                422,
                "VALIDATION_ERROR",
                "Idempotency-Key must be 1-255 printable ASCII characters",
                {"Idempotency-Key": "invalid"},
            )
            return
        core: GatewayParts = scope["app"].state.core
        owner = _owner(core, headers)
        if owner is None:
            await self.app(scope, receive, send)
            return
        body, more = await _read_body(receive)
        if more:
            await send_error(
                send, 413, "PAYLOAD_TOO_LARGE", "Request body too large", {"limit": MAX_BODY}
            )
            return
        fingerprint = hashlib.sha256(
            b"\0".join(
                [scope["method"].encode(), scope["path"].encode(), scope["query_string"], body]
            )
        ).hexdigest()
        async with core.db.sessionmaker() as session:
            result = await idempotency.claim(
                session, owner, key, fingerprint, core.settings.idempotency_ttl
            )
        if result.outcome is Outcome.MISMATCH:
            await send_error(
                send,
                422,
                "VALIDATION_ERROR",
                "This Idempotency-Key was used with a different request",
                {"Idempotency-Key": "reused with another method, path or body"},
            )
            return
        if result.outcome is Outcome.IN_PROGRESS:
            await send_error(
                send,
                409,
                "CONFLICT",
                "A request with this Idempotency-Key is still being processed; retry later",
                {"Idempotency-Key": "in progress"},
            )
            return
        assert result.record is not None
        if result.outcome is Outcome.REPLAY:
            await _replay(
                send,
                result.record.response_status or 200,
                result.record.response_headers or {},
                result.record.response_body or "",
            )
            return
        await self._run(core, scope, body, send, result.record.id)

    async def _run(
        self, core: GatewayParts, scope: Scope, body: bytes, send: Send, record_id: str
    ) -> None:
        sent = False

        async def replay_receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        status = 500
        kept: dict[str, str] = {}
        chunks: list[bytes] = []
        settled = False

        async def settle() -> None:
            nonlocal settled
            settled = True
            keep = status < 500 and status not in (401, 429)
            await _settle(core, record_id, (status, kept, b"".join(chunks)) if keep else None)

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for k, v in message.get("headers", []):
                    name = k.decode("latin-1").lower()
                    if name in _KEPT:
                        kept[name] = v.decode("latin-1")
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    # Recorded before the client has the whole answer: a retry sent
                    # the moment it arrives is replayed, never told "in progress".
                    await settle()
            await send(message)

        try:
            await self.app(scope, replay_receive, capture)
        except BaseException:
            if not settled:
                await _settle(core, record_id, None)
            raise
        if not settled:
            await settle()


async def _settle(
    core: GatewayParts, record_id: str, response: tuple[int, dict[str, str], bytes] | None
) -> None:
    try:
        async with core.db.sessionmaker() as session:
            if response is None:
                await idempotency.abandon(session, record_id)
            else:
                status, headers, body = response
                await idempotency.complete(
                    session, record_id, status, headers, body.decode("utf-8", "replace")
                )
    except Exception:
        log.exception("could not record the idempotent response %s", record_id)


def _owner(core: GatewayParts, headers: dict[bytes, bytes]) -> str | None:
    presented = credential(headers)
    if presented is None:
        return None
    if presented.is_api_key:
        return "key:" + presented.key_hash[:40]
    try:
        claims = core.tokens.decode(presented.token, typ="access")
    except InvalidToken:
        return None
    return f"user:{claims.sub}"


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return b"", True
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts), False


async def _replay(send: Send, status: int, headers: dict[str, str], body: str) -> None:
    raw = body.encode()
    out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    out += [(b"content-length", str(len(raw)).encode()), (b"idempotent-replayed", b"true")]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": raw})
