"""``WS /ws``: real-time events (seeds 002, 003, 004), also under ``/api/v1`` and ``/api``.

Handshake: the credentials come, in this order of precedence, as

* ``?ticket=<ticket>``: a one-time ticket from ``POST /ws/ticket`` (a browser's way
  in: no long-lived credential in the URL; see ``nefos.services.ws_tickets``);
* the ``Sec-WebSocket-Protocol`` header ``nefos.v1, bearer.<jwt or api key>``: the
  answer selects ``nefos.v1``, never the credential;
* ``?token=<jwt or api key>`` (kept for old clients; every log line redacts it);
* an ``Authorization: Bearer`` / ``X-API-Key`` / ``X-Auth-Token`` header (the SDK).

A browser's ``Origin`` must be
the API's own, or listed in ``ws_allowed_origins`` or ``cors_origins``; another is
refused before the upgrade (HTTP 403). Bad credentials: the socket opens, says
``{"type": "error", "data": {"code": "UNAUTHORIZED", ...}}`` and closes (4401).

Messages from the server are ``{id, type, data, timestamp}``: first ``connected``
(with the event types the caller may receive), then events. The client may send
``{"subscribe": [types]}`` (empty: all), ``{"unsubscribe": [types]}`` and
``{"type": "ping"}``; answers are ``subscribed`` and ``pong``; a malformed message
gets an ``error`` and the socket stays open. A client too slow for its events
loses the oldest and is told (``events_dropped`` with a count).

Every ``ws_recheck_interval`` seconds the credentials and memberships are read
again: a revoked token closes the socket with 4401, a lost membership with 4403.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.responses import Response
from starlette.websockets import WebSocketState

from nefos.api.deps import Access, CoreDep, SessionDep, authorize
from nefos.api.wsauth import (
    CLOSE_FORBIDDEN,
    CLOSE_UNAUTHORIZED,
    REQUIRED,
    accept,
    credential,
    error,
    message,
    origin_allowed,
)
from nefos.domain.access import Permission
from nefos.domain.errors import Forbidden, NefosError, Unauthorized
from nefos.events import Event
from nefos.gateway.envelope import ok
from nefos.schemas.common import Envelope
from nefos.schemas.events import WsTicket
from nefos.services.core import Core
from nefos.services.subscriptions import EventView, unknown_types
from nefos.services.ws_tickets import WsTicketService

log = logging.getLogger("nefos.events")
router = APIRouter(tags=["events"])

MAX_MESSAGE = 64 * 1024


class _Encoded:
    """The last event's text: one serialisation for all its subscribers."""

    id: str | None = None
    text: str = ""

    @classmethod
    def of(cls, event: Event) -> str:
        if cls.id != event.id:
            cls.text = orjson.dumps(event.message()).decode()
            cls.id = event.id
        return cls.text


class Connection:
    def __init__(self, ws: WebSocket, core: Core, view: EventView) -> None:
        self.ws = ws
        self.core = core
        self.view = view
        self._send_lock = asyncio.Lock()

    async def send(self, text: str) -> None:
        async with self._send_lock:
            await self.ws.send_text(text)

    async def run(self) -> None:
        settings = self.core.settings
        sub = self.core.events.subscribe(self.view.sees, maxsize=settings.ws_queue_size)
        try:
            await self.send(
                message(
                    "connected",
                    {
                        "user_id": self.view.user_id,
                        "subscriptions": sorted(self.view.types),
                        "allowed": sorted(self.view.allowed_types),
                        "recheck_interval": settings.ws_recheck_interval,
                    },
                )
            )
            tasks = [
                asyncio.create_task(self._pump(sub)),
                asyncio.create_task(self._receive()),
                asyncio.create_task(self._recheck()),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if isinstance(exc, NefosError):
                        await self._close_for(exc)
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        finally:
            sub.close()

    async def _pump(self, sub: Any) -> None:
        while True:
            event = await sub.get()
            dropped = sub.take_dropped()
            if dropped:
                await self.send(message("events_dropped", {"count": dropped}))
            await self.send(_Encoded.of(event))

    async def _receive(self) -> None:
        while True:
            try:
                raw = await self.ws.receive_text()
            except (WebSocketDisconnect, RuntimeError):
                return
            reply = self._handle(raw)
            if reply is not None:
                await self.send(reply)

    def _handle(self, raw: str) -> str | None:
        if len(raw) > MAX_MESSAGE:
            return error("VALIDATION_ERROR", "Message too large")
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return error("VALIDATION_ERROR", "Messages are JSON objects")
        if not isinstance(msg, dict):
            return error("VALIDATION_ERROR", "Messages are JSON objects")
        if msg.get("type") == "ping" or msg.get("action") == "ping":
            return message("pong", {})
        for key in ("subscribe", "unsubscribe"):
            if key not in msg:
                continue
            types = msg[key]
            if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
                return error("VALIDATION_ERROR", f"'{key}' is a list of event types")
            unknown = unknown_types(types)
            if unknown:
                return error("VALIDATION_ERROR", "Unknown event types", unknown=unknown)
            if key == "unsubscribe":
                types = sorted(self.view.types - set(types))
                if not types:
                    self.view.types = set()
                    return message("subscribed", {"types": [], "refused": []})
            subscribed, refused = self.view.subscribe(types)
            return message("subscribed", {"types": subscribed, "refused": refused})
        return error(
            "VALIDATION_ERROR",
            'Send {"subscribe": [types]}, {"unsubscribe": [types]} or {"type": "ping"}',
        )

    async def _recheck(self) -> None:
        interval = self.core.settings.ws_recheck_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.view.refresh()
            except NefosError:
                raise  # revoked, expired, lost membership: the socket closes
            except Exception:  # the database is away: keep the socket, look again later
                log.warning("could not re-check a WebSocket's credentials", exc_info=True)

    async def _close_for(self, exc: NefosError) -> None:
        if isinstance(exc, Unauthorized):
            code = CLOSE_UNAUTHORIZED
        elif isinstance(exc, Forbidden):
            code = CLOSE_FORBIDDEN
        else:
            code = 1011  # another refusal: "internal error", the client may retry
        with contextlib.suppress(Exception):
            await self.send(error(exc.code, exc.message))
            await self.ws.close(code=code, reason=exc.message[:120])


@router.websocket("/ws")
async def events_socket(ws: WebSocket) -> None:
    """Real-time events of the caller's tenants (see the module's docstring)."""
    core: Core = ws.app.state.core
    if not origin_allowed(ws, core):
        await ws.close(code=1008)  # before accept: the upgrade is refused with 403
        return
    # Only ``nefos.v1`` is ever selected: the answer must not echo a credential.
    await accept(ws)
    view = EventView(core, "")
    try:
        given = await credential(ws, core)
        if not given:
            raise Unauthorized(REQUIRED)
        view.credential = given
        await view.refresh()
    except NefosError as exc:
        await ws.send_text(error(exc.code, exc.message))
        await ws.close(code=CLOSE_UNAUTHORIZED, reason=exc.message[:120])
        return
    try:
        await Connection(ws, core, view).run()
    finally:
        if ws.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await ws.close()


@router.post("/ws/ticket", status_code=201, response_model=Envelope[WsTicket])
async def create_ticket(
    core: CoreDep, session: SessionDep, access: Access = authorize(Permission.ACCOUNT_READ)
) -> Response:
    """A one-time ticket for ``/ws?ticket=<ticket>``, valid ``ws_ticket_ttl`` seconds:
    the socket it opens acts as the caller's session or API key (with its scopes)."""
    ticket, expires_at = await WsTicketService(core, session).issue(access.principal)
    body = WsTicket(ticket=ticket, expires_at=expires_at, expires_in=core.settings.ws_ticket_ttl)
    return ok(body, 201, headers={"Cache-Control": "no-store"})
