"""Serve Nefos or the baseline in this process, with the same uvicorn settings.

    python bench/serve.py nefos PORT        # settings from NEFOS_* variables
    python bench/serve.py baseline PORT BODIES.json

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


def main(argv: list[str]) -> None:
    kind, port = argv[0], int(argv[1])
    threading.Thread(target=watchdog, daemon=True).start()
    app = nefos_app() if kind == "nefos" else baseline_app(Path(argv[2]))
    uvicorn.run(app, port=port, **UVICORN)


if __name__ == "__main__":
    main(sys.argv[1:])
