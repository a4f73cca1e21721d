"""The generator's event loop: the closed and the open model (``nefos.loadtest.plan``),
measured by a ``Recorder``, reported once a second through ``emit``.

It runs in a process of its own (``python -m nefos.loadtest``), never on the API's
event loop: a busy generator must not slow the control plane, nor the control plane
the generator.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

from nefos.loadtest.http import Connection, Prepared, RequestFailed, prepare
from nefos.loadtest.plan import Plan, intended_time, target_rate, user_start, weighted_cycle
from nefos.loadtest.stats import Recorder

Emit = Callable[[dict[str, Any]], None]
TICK = 0.1  # seconds between the ticker's wake-ups (event loop lag, progress)


class Generator:
    def __init__(self, plan: Plan, emit: Emit) -> None:
        self.plan = plan
        self.emit = emit
        # prepared[u][r]: request r of the scenario, to URL u.
        self.prepared = [[prepare(url, spec) for spec in plan.requests] for url in plan.urls]
        self._mix = itertools.cycle(weighted_cycle(plan.requests))
        self._url = itertools.cycle(range(len(plan.urls)))
        self.start = 0.0
        self.end = 0.0
        self.rec: Recorder
        self._in_flight = 0
        #: Every open connection, for the ticker's timeouts.
        self._conns: set[Connection] = set()

    def _connection(self, host: str, port: int) -> Connection:
        conn = Connection(host, port, self.plan.timeout)
        self._conns.add(conn)
        return conn

    def _expire(self, now: float) -> None:
        """End the requests that have waited longer than the timeout."""
        limit = now - self.plan.timeout
        for conn in self._conns:
            if conn.busy_since and conn.busy_since < limit:
                conn.expire()

    def _next(self) -> tuple[int, Prepared]:
        u = next(self._url)
        return u, self.prepared[u][next(self._mix)]

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        now = time.monotonic()
        self.start, self.end = now, now + plan.duration
        self.rec = Recorder(
            start=now,
            target=lambda s: target_rate(s, plan.rate, plan.ramp_up),
            open_model=plan.rate is not None,
        )
        ticker = asyncio.create_task(self._ticker())
        try:
            if plan.rate is None:
                await self._closed()
            else:
                await self._open(plan.rate)
        finally:
            ticker.cancel()
        now = time.monotonic()
        self.rec.users(0)
        for second in self.rec.flush():
            self.emit({"type": "second", "entry": second.to_json()})
        return self.rec.summary(now)

    # --- progress -------------------------------------------------------------------
    async def _ticker(self) -> None:
        wake = time.monotonic()
        reported = 0.0
        while True:
            wake += TICK
            await asyncio.sleep(max(0.0, wake - time.monotonic()))
            now = time.monotonic()
            self.rec.tick(now - wake)
            self._expire(now)
            if now - wake > TICK:  # far behind: start again from now
                wake = now
            if self.plan.rate is not None:
                self.rec.users(self._in_flight)
            self.rec.roll(now)
            seconds = self.rec.take()
            for second in seconds:
                self.emit({"type": "second", "entry": second.to_json()})
            if seconds and now - reported >= 0.5:
                reported = now
                self.emit({"type": "progress", "summary": self.rec.summary(now)})

    # --- closed model ---------------------------------------------------------------
    async def _closed(self) -> None:
        plan = self.plan
        users = [
            asyncio.create_task(self._user(self.start + user_start(i, plan.users, plan.ramp_up)))
            for i in range(plan.users)
        ]
        try:
            await asyncio.gather(*users)
        finally:
            for task in users:
                task.cancel()

    async def _user(self, start_at: float) -> None:
        delay = start_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if time.monotonic() >= self.end:
            return
        self._in_flight += 1
        self.rec.users(self._in_flight)
        conns = [self._connection(p[0].host, p[0].port) for p in self.prepared]
        try:
            while time.monotonic() < self.end:
                u, req = self._next()
                self.rec.sent(time.monotonic())
                await self._one(conns[u], req, None)
        finally:
            for c in conns:
                c.close()
                self._conns.discard(c)
            self._in_flight -= 1
            self.rec.users(self._in_flight)

    async def _one(self, conn: Connection, req: Prepared, intended: float | None) -> None:
        """One request; its latency from the moment its bytes went out (closed model)
        or from its intended send time (open model, with the other one beside it),
        to the arrival of the response's last byte."""
        try:
            answer = await conn.request(req)
        except RequestFailed as exc:
            self.rec.done(time.monotonic(), None, kind=exc.kind)
            return
        done, sent = answer.done, answer.sent
        if intended is None:
            self.rec.done(done, done - sent, status=answer.status)
        else:
            self.rec.done(done, done - intended, status=answer.status, uncorrected=done - sent)

    # --- open model -----------------------------------------------------------------
    async def _open(self, rate: float) -> None:
        plan = self.plan
        idle: list[list[Connection]] = [[] for _ in self.prepared]
        tasks: set[asyncio.Task[None]] = set()
        room = asyncio.Semaphore(plan.max_in_flight)

        async def send(u: int, req: Prepared, intended: float) -> None:
            pool = idle[u]
            conn = pool.pop() if pool else self._connection(req.host, req.port)
            self._in_flight += 1
            try:
                await self._one(conn, req, intended)
            finally:
                self._in_flight -= 1
                room.release()
                pool.append(conn)  # a closed one reconnects on its next use

        k = 0
        try:
            while True:
                intended = self.start + intended_time(k, rate, plan.ramp_up)
                if intended >= self.end:
                    break
                now = time.monotonic()
                if intended > now:
                    # uvloop's timers have millisecond resolution and may fire early:
                    # never send before the intended time.
                    while (now := time.monotonic()) < intended:  # noqa: ASYNC110 - a clock, no event
                        await asyncio.sleep(intended - now)
                elif k % 64 == 0:
                    await asyncio.sleep(0)  # behind schedule: let the sends run too
                await room.acquire()  # at the bound: this send is late, and counted so
                now = time.monotonic()
                self.rec.sent(now, now - intended)
                u, req = self._next()
                task = asyncio.create_task(send(u, req, intended))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                k += 1
            if tasks:
                await asyncio.wait(set(tasks), timeout=plan.timeout + 1)
        finally:
            for task in tasks:
                task.cancel()
            for pool in idle:
                for c in pool:
                    c.close()


async def run(plan: Plan, emit: Emit) -> dict[str, Any]:
    """Run ``plan``, emitting ``{"type": "second", "entry": ...}`` as each second ends
    and ``{"type": "progress", "summary": ...}`` about once a second; the final
    summary (with the encoded histogram)."""
    return await Generator(plan, emit).run()
