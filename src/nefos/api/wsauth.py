"""What every WebSocket of the API does before it speaks: the browser's ``Origin``,
the credential (a ticket, a subprotocol, a query token, a header) and its errors.
Used by ``WS /ws`` (events) and ``WS /containers/{id}/exec`` (terminals)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson
from fastapi import WebSocket

from nefos.domain.errors import (
    Forbidden,
    NefosError,
    NotFound,
    Unauthorized,
    ValidationFailed,
)
from nefos.events import now_iso
from nefos.services.auth import AuthService, Grant
from nefos.services.core import Core
from nefos.services.principal import Principal
from nefos.services.ws_tickets import WsTicketService

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_REFUSED = 4409
CLOSE_INVALID = 4422
#: The subprotocol the server speaks, selected when offered.
PROTOCOL = "nefos.v1"
#: An offered subprotocol ``bearer.<credential>`` carries the credential.
BEARER_PROTOCOL = "bearer."


def origin_allowed(ws: WebSocket, core: Core) -> bool:
    """A browser's ``Origin`` is the API's own or listed in ``ws_allowed_origins`` or
    ``cors_origins``; a client that sends none (the SDK, the CLI) is not a browser."""
    origin = ws.headers.get("origin")
    if origin is None:
        return True
    allowed = {
        o.rstrip("/") for o in (*core.settings.ws_allowed_origins, *core.settings.cors_origins)
    }
    if "*" in allowed or origin.rstrip("/") in allowed:
        return True
    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc == ws.headers.get("host")


def offered(ws: WebSocket) -> list[str]:
    return [str(p) for p in ws.scope.get("subprotocols", [])]


async def accept(ws: WebSocket) -> None:
    """Accept, selecting ``nefos.v1`` if offered: the answer never echoes a credential."""
    await ws.accept(subprotocol=PROTOCOL if PROTOCOL in offered(ws) else None)


async def credential(ws: WebSocket, core: Core) -> str | Grant | None:
    """The handshake's credential, in order of precedence: ``?ticket=`` (redeemed
    here, once), ``Sec-WebSocket-Protocol: bearer.<token>``, ``?token=``, then the
    ``Authorization``/``X-API-Key``/``X-Auth-Token`` headers."""
    ticket = ws.query_params.get("ticket")
    if ticket:
        async with core.db.sessionmaker() as session:
            return await WsTicketService(core, session).redeem(ticket)
    for protocol in offered(ws):
        if protocol.startswith(BEARER_PROTOCOL):
            return protocol[len(BEARER_PROTOCOL) :] or None
    token = ws.query_params.get("token")
    if token:
        return token
    auth = ws.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return ws.headers.get("x-api-key") or ws.headers.get("x-auth-token")


REQUIRED = (
    "Authentication required: ?ticket=<ticket from POST /ws/ticket>, "
    "Sec-WebSocket-Protocol: nefos.v1, bearer.<token>, or ?token=<token>"
)


async def principal_of(auth: AuthService, given: str | Grant) -> Principal:
    """Who the credential is (raises :class:`Unauthorized`)."""
    if isinstance(given, Grant):  # a redeemed ticket
        return await auth.authenticate_grant(given)
    return await auth.authenticate(given, kind="bearer")


def message(type_: str, data: dict[str, Any]) -> str:
    return orjson.dumps({"type": type_, "data": data, "timestamp": now_iso()}).decode()


def error(code: str, text: str, **details: Any) -> str:
    return message("error", {"code": code, "message": text, "details": details})


def close_code(exc: NefosError) -> int:
    """The close code that says why a socket is refused or ended."""
    if isinstance(exc, Unauthorized):
        return CLOSE_UNAUTHORIZED
    if isinstance(exc, Forbidden):
        return CLOSE_FORBIDDEN
    if isinstance(exc, NotFound):
        return CLOSE_NOT_FOUND
    if isinstance(exc, ValidationFailed):
        return CLOSE_INVALID
    return CLOSE_REFUSED
