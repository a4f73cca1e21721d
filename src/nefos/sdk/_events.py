"""``client.events()``: the WebSocket event stream, as an async or a plain iterator.

::

    async for event in client.events(["vm_status_changed"]):
        print(event.type, event.data)

    for event in client.events():          # the same, blocking (the CLI uses it)
        ...

The stream authenticates with the client's credentials (renewing its session
first when needed), sends ``{"subscribe": types}``, and yields each event as an
``EventMessage``. Control messages (``connected``, ``subscribed``,
``events_dropped``) are consumed, or yielded too when ``include_control`` is set
(so a caller can tell when its subscription is in place). When
the connection drops it reconnects with backoff (``reconnect=True``, the default)
and subscribes again; events sent while it was away are lost (the REST API has
the state). A refusal of the credentials (close code 4401) or of the caller's
memberships (4403) raises ``AuthenticationError`` / ``PermissionDeniedError``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from nefos.schemas.events import EventMessage
from nefos.sdk._errors import AuthenticationError, PermissionDeniedError, TransportError
from nefos.sdk._transport import Transport

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
MAX_BACKOFF = 10.0


class EventStream:
    def __init__(
        self,
        client: Transport,
        types: list[str] | None = None,
        *,
        reconnect: bool = True,
        include_control: bool = False,
        open_timeout: float = 10.0,
    ) -> None:
        self._client = client
        self.types = list(types or [])
        self.reconnect = reconnect
        self.include_control = include_control
        self.open_timeout = open_timeout
        self.connected: EventMessage | None = None  # the server's welcome, once open

    @property
    def url(self) -> str:
        base = self._client.base_url
        scheme = "wss" if base.startswith("https://") else "ws"
        return scheme + base[base.index("://") :] + "/ws"

    def _headers(self) -> dict[str, str]:
        headers, _ = self._client._credentials()
        return {**headers, "User-Agent": self._client._http.headers.get("user-agent", "nefos-sdk")}

    def _subscribe_message(self) -> str:
        return json.dumps({"subscribe": self.types})

    def _take(self, raw: str | bytes) -> EventMessage | None:
        message = EventMessage.model_validate_json(raw)
        if message.type == "connected":
            self.connected = message
        elif message.type == "error":
            data = message.data
            raise _refusal(data.get("code"), str(data.get("message", "refused")))
        if message.is_event or (self.include_control and message.type != "pong"):
            return message
        return None

    # --- asyncio ----------------------------------------------------------------
    async def __aiter__(self) -> AsyncIterator[EventMessage]:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

        delay = 0.2
        while True:
            try:
                async with connect(
                    self.url,
                    additional_headers=self._headers(),
                    open_timeout=self.open_timeout,
                    max_size=2**22,
                ) as ws:
                    if self.types:
                        await ws.send(self._subscribe_message())
                    delay = 0.2
                    async for raw in ws:
                        message = self._take(raw)
                        if message is not None:
                            yield message
            except ConnectionClosed as exc:
                _raise_for_close(exc.rcvd.code if exc.rcvd else None, exc)
            except InvalidStatus as exc:
                raise TransportError(f"WebSocket refused: HTTP {exc.response.status_code}") from exc
            except (OSError, WebSocketException, TimeoutError) as exc:
                if not self.reconnect:
                    raise TransportError(f"WebSocket: {exc}") from exc
            if not self.reconnect:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    # --- blocking ---------------------------------------------------------------
    def __iter__(self) -> Iterator[EventMessage]:
        from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        delay = 0.2
        while True:
            try:
                with connect(
                    self.url,
                    additional_headers=self._headers(),
                    open_timeout=self.open_timeout,
                    max_size=2**22,
                ) as ws:
                    if self.types:
                        ws.send(self._subscribe_message())
                    delay = 0.2
                    for raw in ws:
                        message = self._take(raw)
                        if message is not None:
                            yield message
            except ConnectionClosed as exc:
                _raise_for_close(exc.rcvd.code if exc.rcvd else None, exc)
            except InvalidStatus as exc:
                raise TransportError(f"WebSocket refused: HTTP {exc.response.status_code}") from exc
            except (OSError, WebSocketException, TimeoutError) as exc:
                if not self.reconnect:
                    raise TransportError(f"WebSocket: {exc}") from exc
            if not self.reconnect:
                return
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)


def _refusal(code: Any, message: str) -> Exception:
    if code == "UNAUTHORIZED":
        return AuthenticationError(401, "UNAUTHORIZED", message)
    if code == "FORBIDDEN":
        return PermissionDeniedError(403, "FORBIDDEN", message)
    return TransportError(f"WebSocket error: {code}: {message}")


def _raise_for_close(code: int | None, exc: Exception) -> None:
    if code == CLOSE_UNAUTHORIZED:
        raise AuthenticationError(401, "UNAUTHORIZED", "The server closed the stream") from exc
    if code == CLOSE_FORBIDDEN:
        raise PermissionDeniedError(403, "FORBIDDEN", "The server closed the stream") from exc
