"""Request context middleware (pure ASGI: no per-request task or body copy).

* ``X-Request-ID``: taken from the client when it is sane, else generated; set on
  the response and kept in ``scope["state"]["request_id"]`` for logs and 5xx bodies.
* ``Accept: application/vnd.nefos.vN+json``: v1 is served; any other version is
  406 ``UNSUPPORTED_VERSION``.
* Deprecated routes (``scope["route"]`` marked by ``deprecated_route``) answer with
  ``Deprecation`` and ``Sunset`` headers.
* An exception no handler took becomes a 500 envelope with the request id and no
  trace, logged in full.
"""

from __future__ import annotations

import logging
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nefos.gateway.counters import RequestCounters
from nefos.gateway.envelope import send_error

log = logging.getLogger("nefos.gateway")

SUPPORTED_VERSIONS = frozenset({"1"})
_VENDOR = re.compile(rb"application/vnd\.nefos\.v([^+;,\s]*)\+json")
_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, counters: RequestCounters | None = None) -> None:
        self.app = app
        self.counters = counters if counters is not None else RequestCounters()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given.decode() if given and _SAFE_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        accept = _header(scope, b"accept")
        if accept:
            m = _VENDOR.search(accept)
            if m and m.group(1).decode(errors="replace") not in SUPPORTED_VERSIONS:
                await send_error(
                    send,
                    406,
                    "UNSUPPORTED_VERSION",
                    "Unsupported API version",
                    {"supported": sorted(SUPPORTED_VERSIONS)},
                    [(b"x-request-id", rid.encode())],
                )
                return

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.counters.count(int(message["status"]))
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                sunset = getattr(scope.get("endpoint"), "__nefos_sunset__", None)
                if sunset:
                    headers.append((b"deprecation", b"true"))
                    headers.append((b"sunset", sunset.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception(
                "unhandled error in %s %s (request %s)", scope["method"], scope["path"], rid
            )
            if started:
                raise
            self.counters.count(500)
            await send_error(
                send,
                500,
                "INTERNAL_ERROR",
                "Internal server error",
                {"request_id": rid},
                [(b"x-request-id", rid.encode())],
            )
