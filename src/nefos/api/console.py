"""The web console (``console/``, a single-page application) served at ``/``.

Pure ASGI in front of the API, inside the ingress: a ``GET`` or ``HEAD`` of a path
the API does not own is the console's. Owned paths are the first segments of the
app's routes and mounts (``/api``, ``/docs``, ``/openapi.json``, ...) plus the paths
rewritten or taken before routing (``/ws``, ``/health``, ``/gw/``, ``/svc/``); they
always reach the API, whose 404 is the envelope, so the console never shadows one.

* ``/assets/...``: the build's content-hashed files, cached for a year
  (``immutable``): a new build has new names.
* Any other path without a file extension (``/overview``, ``/containers/abc``): the
  HTML shell, ``Cache-Control: no-cache`` (revalidated on every load, so a new build
  shows at once), with a Content-Security-Policy that allows only this origin (and,
  where cards are taken, Stripe.js's origin, Stripe's API and its frames: ``csp``). The
  client-side router shows the page, or its own "not found".
* A file of the build (``.gz``/``.br`` twins are sent when the client accepts them),
  else a plain 404.

Without a build (``index.html`` missing) the shell's paths answer 503 with a page
saying how to make one. Nothing here reads the database or calls the API: the
console talks to the API from the browser like any other client.
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

#: Where ``console/``'s build lands (``vite.config.ts``); git ignores it.
BUILD_DIR = Path(__file__).resolve().parent / "console_dist"
ASSETS = "/assets/"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
#: Same-origin only: scripts and styles from the build, API calls and /ws to this host.
#: Inline styles are allowed for the framework's style attributes; inline scripts
#: are not.
DIRECTIVES: dict[str, tuple[str, ...]] = {
    "default-src": ("'self'",),
    "script-src": ("'self'",),
    "style-src": ("'self'", "'unsafe-inline'"),
    "img-src": ("'self'", "data:"),
    "connect-src": ("'self'",),
    "frame-ancestors": ("'none'",),
    "base-uri": ("'none'",),
    "form-action": ("'self'",),
    "object-src": ("'none'",),
}
#: What Stripe.js needs beside its own script's origin (Stripe's security guide,
#: "Content Security Policy"): its API, the frames of cards and 3-D Secure, and the
#: subdomains of js.stripe.com it loads parts from.
STRIPE = {
    "script-src": ("https://js.stripe.com", "https://*.js.stripe.com"),
    "connect-src": ("https://api.stripe.com",),
    "frame-src": ("https://js.stripe.com", "https://*.js.stripe.com", "https://hooks.stripe.com"),
    "img-src": ("https://*.stripe.com",),
}


def csp(card_js_url: str | None = None) -> str:
    """The shell's policy: this origin only, and where cards are taken
    (``card_js_url``, Stripe.js) that script's origin and what Stripe.js needs."""
    directives = dict(DIRECTIVES)
    if card_js_url:
        parts = urlsplit(card_js_url)
        # The host as written (an IPv6 literal keeps its brackets), never credentials.
        origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        for name, sources in STRIPE.items():
            # The script's origin serves frames too, and a stand-in's API is there.
            own = (origin,) if name != "img-src" else ()
            merged = (*directives.get(name, ()), *own, *sources)
            directives[name] = tuple(dict.fromkeys(merged))
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives.items())


CSP = csp()
SHELL_HEADERS = {
    "Cache-Control": REVALIDATE,
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
#: Paths taken before routing (the path rewrite, the gateway, the ingress) or kept
#: for the API's future (``/metrics`` and ``/prometheus`` are ``/api/v1/...`` today).
ALWAYS_RESERVED = frozenset(
    {"api", "ws", "health", "docs", "redoc", "openapi.json", "gw", "svc", "metrics", "prometheus"}
)
_ENCODINGS = (("br", ".br"), ("gzip", ".gz"))

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Nefos: the console is not built</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto;
padding: 0 1rem; line-height: 1.5">
<h1>The web console is not built</h1>
<p>This Nefos serves its API, but the console's files (its
<code>index.html</code> and <code>assets/</code>) are not where it looks for them.</p>
<p>From a source checkout, <code>make run</code> builds it (Node.js and npm are
installed from Debian when missing), or build it alone with
<code>scripts/ensure-console.sh</code>. To serve a build from elsewhere, set
<code>NEFOS_CONSOLE_DIR</code>.</p>
<p>The API works without it: its reference is at <a href="/docs">/docs</a>.</p>
</body></html>
"""


def first_segment(path: str) -> str:
    return path.lstrip("/").split("/", 1)[0]


class ConsoleMiddleware:
    """Serve the console's files; hand every other request to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        directory: Path,
        reserved: Iterable[str] = (),
        card_js_url: str | None = None,
    ) -> None:
        self.app = app
        self.directory = directory.resolve()
        self.reserved = ALWAYS_RESERVED | {s for s in reserved if s}
        self.shell_headers = {**SHELL_HEADERS, "Content-Security-Policy": csp(card_js_url)}

    def owns(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return False
        return first_segment(scope["path"]) not in self.reserved

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.owns(scope):
            await self.app(scope, receive, send)
            return
        response = self.respond(scope["path"], Headers(scope=scope))
        await response(scope, receive, send)

    def respond(self, path: str, headers: Headers) -> Response:
        last = path.rsplit("/", 1)[-1]
        if not path.startswith(ASSETS) and "." not in last:
            return self.shell(headers)
        found = self.file(path)
        if found is None:
            return PlainTextResponse(
                "Not found", status_code=404, headers={"Cache-Control": REVALIDATE}
            )
        cache = IMMUTABLE if path.startswith(ASSETS) else REVALIDATE
        return self.send_file(found, headers, cache)

    def file(self, path: str) -> Path | None:
        """The build's file at ``path``, never one outside the build directory."""
        relative = path.lstrip("/")
        if not relative or "\x00" in relative:
            return None
        if any(part.startswith(".") for part in relative.split("/")):
            return None  # dot files (the build's stamp) and `..` are never served
        candidate = (self.directory / relative).resolve()
        if not candidate.is_relative_to(self.directory) or not candidate.is_file():
            return None
        if candidate.suffix in (".gz", ".br"):
            return None  # twins are chosen by Accept-Encoding, not asked for
        return candidate

    def send_file(self, path: Path, headers: Headers, cache: str, **extra: str) -> Response:
        accepted = {
            part.split(";", 1)[0].strip().lower()
            for part in headers.get("accept-encoding", "").split(",")
        }
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if media_type.startswith("text/") or media_type in ("application/javascript",):
            media_type += "; charset=utf-8"
        base = {"Cache-Control": cache, "Vary": "Accept-Encoding", **extra}
        for encoding, suffix in _ENCODINGS:
            twin = path.with_name(path.name + suffix)
            if encoding in accepted and twin.is_file():
                return self.conditional(
                    twin, headers, media_type, {**base, "Content-Encoding": encoding}
                )
        return self.conditional(path, headers, media_type, base)

    @staticmethod
    def conditional(
        path: Path, request: Headers, media_type: str, headers: dict[str, str]
    ) -> Response:
        stat = path.stat()
        tag = hashlib.sha1(  # noqa: S324 - a cache validator, not a security check
            f"{path.name}-{stat.st_size}-{stat.st_mtime_ns}".encode()
        ).hexdigest()[:20]
        etag = f'"{tag}"'
        if etag in {t.strip() for t in request.get("if-none-match", "").split(",")}:
            return Response(status_code=304, headers={**headers, "ETag": etag})
        return FileResponse(
            path, media_type=media_type, headers={**headers, "ETag": etag}, stat_result=stat
        )

    def shell(self, headers: Headers) -> Response:
        index = self.directory / "index.html"
        if not index.is_file():
            return HTMLResponse(
                NOT_BUILT,
                status_code=503,
                headers={"Cache-Control": "no-store", "Retry-After": "60"},
            )
        shell = {k: v for k, v in self.shell_headers.items() if k != "Cache-Control"}
        return self.send_file(index, headers, REVALIDATE, **shell)
