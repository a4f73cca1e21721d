"""``python -m nefos.loadtest``: one generator process.

Reads one JSON line from stdin, the plan (``nefos.loadtest.plan.Plan``), then
writes JSON lines to stdout: ``{"type": "second", "entry": ...}`` for each second of
the timeline, ``{"type": "progress", "summary": ...}`` about once a second, and
last ``{"type": "final", "summary": ...}`` (or ``{"type": "error", ...}``).

It never outlives its parent: on Linux the kernel kills it when the parent dies
(``PR_SET_PDEATHSIG``), and everywhere it exits when its stdin reaches end of file,
which happens when the parent dies or closes the pipe (a cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
from typing import Any

from nefos.loadtest.engine import run
from nefos.loadtest.plan import Plan

PR_SET_PDEATHSIG = 1
#: The generator runs below the control plane's priority: a test that saturates the
#: machine's CPUs (as a closed model does by design) must not starve the API, the
#: engines' calls or the health checks of the host it runs on.
NICENESS = 10


def _lower_priority() -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.nice(NICENESS)


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(3)

    def watch_stdin() -> None:
        with contextlib.suppress(Exception):
            while sys.stdin.buffer.read(4096):
                pass
        os._exit(3)

    threading.Thread(target=watch_stdin, daemon=True, name="stdin-watch").start()


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main() -> int:
    parent = int(os.environ.get("NEFOS_LOADTEST_PARENT") or os.getppid())
    line = sys.stdin.buffer.readline()
    _die_with_parent(parent)
    _lower_priority()
    try:
        plan = Plan.from_json(json.loads(line))
    except (ValueError, KeyError, TypeError) as exc:
        _emit({"type": "error", "message": f"bad plan: {exc}"})
        return 2
    try:
        import uvloop  # optional: a faster event loop where installed

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        summary = runner(run(plan, _emit))
    except Exception as exc:  # reported to the parent, which records the failure
        _emit({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    _emit({"type": "final", "summary": summary})
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # Not the interpreter's shutdown: the stdin watcher holds stdin's lock in a read.
    os._exit(code)
