"""Trailing slashes (pure ASGI): ``/auth/login/`` is served as ``/auth/login``.

Every route is declared without a trailing slash; this middleware, outermost, strips
one (or several) from the path of every HTTP and WebSocket request before anything
else reads it, so both spellings reach the same route with no redirect (a 307
would cost seed 001's clients a second request and a rate-limit slot, and many
clients drop a POST's body on redirect). The root ``/`` stays as it is.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class TrailingSlashMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                scope["path"] = path.rstrip("/") or "/"
                raw = scope.get("raw_path")
                if raw:
                    scope["raw_path"] = raw.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)
