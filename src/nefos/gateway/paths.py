"""Paths (pure ASGI), made canonical before anything reads them.

* Trailing slashes: ``/auth/login/`` is served as ``/auth/login``. Every route is
  declared without one; stripping it here (outermost) makes both spellings reach the
  same route with no redirect (a 307 would cost seed 001's clients a second request
  and a rate-limit slot, and many clients drop a POST's body on redirect). The root
  ``/`` stays as it is.
* Aliases: every route is registered once, under the API's prefix (``/api/v1``).
  ``/api/...`` (the newest version's alias) is served as ``/api/v1/...``, and the
  root paths load balancers and seed 004 use (``/health``, ``/ws``) as
  ``/api/v1/health`` and ``/api/v1/ws``. Only ``path`` changes: ``raw_path`` keeps
  what the client sent.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


class PathMiddleware:
    def __init__(
        self, app: ASGIApp, *, prefix: str, alias: str, roots: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.prefix = prefix
        self.alias = alias
        self.roots = roots

    def canonical(self, path: str) -> str:
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/") or "/"
        if _under(path, self.prefix):
            return path
        if _under(path, self.alias):
            return self.prefix + path[len(self.alias) :]
        for root in self.roots:
            if _under(path, root):
                return self.prefix + path
        return path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                raw = scope.get("raw_path")
                if raw:
                    scope["raw_path"] = raw.rstrip(b"/") or b"/"
            scope["path"] = self.canonical(path)
        await self.app(scope, receive, send)
