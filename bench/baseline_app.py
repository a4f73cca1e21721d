"""The baseline: a bare Starlette app that answers fixed JSON bodies.

``bench_api.py`` captures Nefos's exact response bodies and hands them to this
app as a JSON file ``{"/path": "<body>", ...}``; each path then answers its body,
byte for byte, with ``200 application/json``, whatever the query string or the
headers. No middleware, no database, no validation: what is left is the cost of
uvicorn, Starlette's routing and the response, the floor any app on this stack
stands on.
"""

from __future__ import annotations

import json
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def create_app(bodies: dict[str, bytes]) -> Starlette:
    def endpoint_for(body: bytes):  # type: ignore[no-untyped-def]
        async def endpoint(request: Request) -> Response:
            return Response(body, media_type="application/json")

        return endpoint

    return Starlette(routes=[Route(path, endpoint_for(body)) for path, body in bodies.items()])


def load_bodies(path: Path) -> dict[str, bytes]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {p: b.encode("utf-8") for p, b in raw.items()}
