"""The control plane's side of a generator process: start it, stream its messages,
kill it.

``GeneratorProcess`` starts ``python -m nefos.loadtest`` with the plan on its
stdin, and yields each JSON line it writes. Closing (``kill``) sends SIGKILL and
reaps it; the generator also dies by itself when this process dies
(``nefos.loadtest.__main__``), so a crashed control plane leaves no generator behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from nefos.loadtest.plan import Plan

#: Where ``nefos`` is imported from, handed to the child (a source checkout run with
#: PYTHONPATH, or an installed package: either way the child imports the same code).
_SRC = str(Path(__file__).resolve().parents[2])
MAX_LINE = 4 * 1024 * 1024


class GeneratorProcess:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr = b""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, env.get("PYTHONPATH")) if p)
        env["NEFOS_LOADTEST_PARENT"] = str(os.getpid())
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nefos.loadtest",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            limit=MAX_LINE,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(self.plan.to_json()).encode() + b"\n")
        await self.proc.stdin.drain()  # stdin stays open: its end tells the child to go

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """Each message the generator writes, until it exits."""
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict):
                    yield message
        if self.proc.stderr is not None:
            self.stderr = (await self.proc.stderr.read())[-4000:]
        await self.proc.wait()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    async def kill(self) -> None:
        """Kill the generator (if still running) and reap it."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 10)
