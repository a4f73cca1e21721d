"""Serve Nefos or the baseline in this process, with the same uvicorn settings.

    python bench/serve.py nefos PORT        # settings from NEFOS_* variables
    python bench/serve.py baseline PORT BODIES.json
    python bench/serve.py nefos-fanout PORT   # Nefos plus POST /bench/publish (bench_ws_fanout)
    python bench/serve.py ws-baseline PORT    # a bare Starlette WebSocket broadcaster

Both run ``uvicorn.run`` with the keyword arguments of ``UVICORN`` below: one
worker, 127.0.0.1 only, no access log and no proxy headers, as ``nefos serve``
runs by default; the event loop and the HTTP parser are uvicorn's "auto" choice
(uvloop and httptools when installed) for both.

A watchdog ends the server if the benchmark that started it goes away, or after
``MAX_LIFETIME`` seconds, so no server outlives its run.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

UVICORN: dict[str, Any] = {
    "host": "127.0.0.1",
    "log_level": "warning",
    "access_log": False,
    "proxy_headers": False,
}

MAX_LIFETIME = 30 * 60


def watchdog() -> None:
    parent, deadline = os.getppid(), time.monotonic() + MAX_LIFETIME
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGINT)  # uvicorn's graceful shutdown
    time.sleep(20)
    os._exit(1)


def nefos_app() -> Any:
    from nefos.api.app import create_app
    from nefos.config import Settings

    return create_app(Settings(_env_file=None))  # type: ignore[call-arg]


def baseline_app(bodies: Path) -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from baseline_app import create_app, load_bodies

    return create_app(load_bodies(bodies))


def nefos_fanout_app() -> Any:
    """Nefos, with one bench-only route that publishes synthetic events on its bus:
    ``POST /bench/publish?n=N&project_id=P`` (each event's data carries ``sent``, the
    wall-clock time of its publication, for the receivers' latency)."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from nefos.events import EventType, make

    app = nefos_app()

    async def publish(request: Request) -> JSONResponse:
        n = int(request.query_params["n"])
        project = request.query_params["project_id"]
        bus = request.app.state.core.events
        for i in range(n):
            bus.publish(
                make(EventType.METRICS, {"seq": i, "sent": time.time()}, project_id=project)
            )
        return JSONResponse({"published": n})

    app.add_route("/bench/publish", publish, methods=["POST"])
    return app


def ws_baseline_app() -> Any:
    """The floor: a Starlette WebSocket endpoint and a broadcast loop over its sockets,
    sending the same JSON shape (one serialisation per event), no auth, no filter."""
    import asyncio
    import json
    import uuid

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    sockets: set[WebSocket] = set()

    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text(json.dumps({"type": "connected", "data": {}}))
        sockets.add(socket)
        try:
            while True:
                await socket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            sockets.discard(socket)

    async def publish(request: Request) -> JSONResponse:
        n = int(request.query_params["n"])
        # All stamped at publication, as Nefos's route stamps them: a delivery's
        # latency then counts the wait behind the events before it, on both sides.
        texts = [
            json.dumps(
                {
                    "id": uuid.uuid4().hex,
                    "type": "metrics_update",
                    "data": {"seq": i, "sent": time.time()},
                    "timestamp": "",
                }
            )
            for i in range(n)
        ]
        for text in texts:
            for socket in list(sockets):
                await socket.send_text(text)
            await asyncio.sleep(0)
        return JSONResponse({"published": n})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            WebSocketRoute("/ws", ws),
            Route("/bench/publish", publish, methods=["POST"]),
            Route("/health", health),
        ]
    )


def main(argv: list[str]) -> None:
    kind, port = argv[0], int(argv[1])
    threading.Thread(target=watchdog, daemon=True).start()
    apps = {"nefos": nefos_app, "nefos-fanout": nefos_fanout_app, "ws-baseline": ws_baseline_app}
    app = apps[kind]() if kind in apps else baseline_app(Path(argv[2]))
    uvicorn.run(app, port=port, **UVICORN)


if __name__ == "__main__":
    main(sys.argv[1:])
