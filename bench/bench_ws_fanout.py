"""WebSocket fan-out: Nefos's event bus and ``/ws`` against a bare Starlette broadcast,
same machine, same client, same run.

    python bench/bench_ws_fanout.py [--database sqlite] [--database postgresql]
                                    [--subscribers 1000] [--events 20] [--rounds 5]
                                    [--json out.json]

For each backend it starts, one after the other, each in a process of its own
(``bench/serve.py``, uvicorn, one worker):

- **Nefos** (``nefos-fanout``): the real app on a fresh database, plus one bench-only
  route, ``POST /bench/publish?n=N&project_id=P``, that publishes N ``metrics_update``
  events of a project on the bus (the path every event takes: outbox, pump, the
  organisation named, each subscriber's filter and queue, its socket's sender);
  ``--subscribers`` sockets open ``/ws?token=`` as one user of that project;
- **bare Starlette** (``ws-baseline``): a WebSocket endpoint keeping its sockets in a
  set and a ``/bench/publish`` that serialises each event once and sends it to every
  socket in a loop: no auth, no filter, no queue.

One client process opens the sockets (all of them before any round), then runs
``--rounds`` rounds: POST ``/bench/publish`` with ``--events`` events, and wait until
every socket has every event. Delivered events/s = sockets x events / (time from the
POST to the last delivery). Latency of a delivery = its arrival - the ``sent`` time the
server stamped into it at publication (same machine, same clock). It prints p50 and
p99 latency and events/s per server, and the ratios Nefos / Starlette.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api import machine, nefos_env, server
from bench_containers import database

PASSWORD = "bench-password-123"
CONNECT_AT_ONCE = 50


@dataclass
class Result:
    server: str
    subscribers: int
    events: int
    rounds: int
    delivered_per_s: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    @property
    def rate(self) -> float:
        ordered = sorted(self.delivered_per_s)
        return ordered[len(ordered) // 2]  # the median round


class Subscriber:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.count = 0
        self.latencies: list[float] = []

    async def read(self, expect: list[int], done: asyncio.Event, last: list[float]) -> None:
        async for raw in self.ws:
            now = time.time()
            msg = json.loads(raw)
            if msg.get("type") != "metrics_update":
                continue
            self.latencies.append((now - msg["data"]["sent"]) * 1000)
            self.count += 1
            expect[0] -= 1
            if expect[0] == 0:
                last[0] = time.monotonic()
                done.set()


async def measure(
    kind: str,
    base: str,
    token: str | None,
    project: str,
    subscribers: int,
    events: int,
    rounds: int,
) -> Result:
    from websockets.asyncio.client import connect

    url = base.replace("http://", "ws://") + "/ws" + (f"?token={token}" if token else "")
    sockets: list[Any] = []
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)

    async def open_one() -> None:
        async with gate:
            ws = await connect(url, open_timeout=60, max_queue=None, ping_interval=None)
            hello = json.loads(await ws.recv())
            assert hello["type"] == "connected", hello
            sockets.append(ws)

    await asyncio.gather(*(open_one() for _ in range(subscribers)))
    result = Result(kind, subscribers, events, rounds)
    subs = [Subscriber(ws) for ws in sockets]
    expect = [0]
    done = asyncio.Event()
    last = [0.0]
    readers = [asyncio.create_task(s.read(expect, done, last)) for s in subs]
    try:
        async with httpx.AsyncClient(base_url=base, timeout=120) as c:
            for _ in range(rounds + 1):  # the first round warms up, uncounted
                for s in subs:
                    s.latencies.clear()
                expect[0] = subscribers * events
                done.clear()
                start = time.monotonic()
                r = await c.post("/bench/publish", params={"n": events, "project_id": project})
                r.raise_for_status()
                await asyncio.wait_for(done.wait(), 300)
                elapsed = last[0] - start
                if _ > 0 or rounds == 0:
                    result.delivered_per_s.append(subscribers * events / elapsed)
                    result.latencies_ms.extend(x for s in subs for x in s.latencies)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return result


def nefos_user(base: str) -> tuple[str, str]:
    with httpx.Client(base_url=base, timeout=60) as c:
        r = c.post(
            "/api/v1/auth/register",
            json={"email": f"fan-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD},
        )
        r.raise_for_status()
        data = r.json()["data"]
        return data["access_token"], data["user"]["default_project_id"]


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nefos-fanout-") as tmp_dir:
        tmp = Path(tmp_dir)
        with database(backend, tmp) as url:
            env = nefos_env(url, tmp / "data")
            env.update(
                NEFOS_REGISTER_LOCAL_HOSTS="false",
                NEFOS_WORKERS="0",
                NEFOS_WS_QUEUE_SIZE=str(max(1000, args.events * 2)),
            )
            with server(
                ["nefos-fanout"], env=env, cwd=tmp, log=tmp / "nefos.log", ready_path="/health"
            ) as (base, _pid):
                token, project = nefos_user(base)
                nefos = asyncio.run(
                    measure(
                        "Nefos", base, token, project, args.subscribers, args.events, args.rounds
                    )
                )
        with server(
            ["ws-baseline"], env=env, cwd=tmp, log=tmp / "baseline.log", ready_path="/health"
        ) as (base, _pid):
            bare = asyncio.run(
                measure(
                    "bare Starlette", base, None, "p", args.subscribers, args.events, args.rounds
                )
            )
    print(
        f"\n{backend}: {args.subscribers} subscribers, {args.events} events x {args.rounds} rounds"
    )
    print(f"{'server':<16} {'events/s':>12} {'p50 ms':>9} {'p99 ms':>9}")
    for r in (nefos, bare):
        print(f"{r.server:<16} {r.rate:>12,.0f} {r.pct(0.50):>9.1f} {r.pct(0.99):>9.1f}")
    ratio = nefos.rate / bare.rate
    print(
        f"Nefos / Starlette: throughput {ratio:.2f}, p99 {nefos.pct(0.99) - bare.pct(0.99):+.1f} ms"
    )
    return {
        "backend": backend,
        "nefos": {
            **asdict(nefos),
            "latencies_ms": None,
            "p50": nefos.pct(0.5),
            "p99": nefos.pct(0.99),
        },
        "baseline": {
            **asdict(bare),
            "latencies_ms": None,
            "p50": bare.pct(0.5),
            "p99": bare.pct(0.99),
        },
        "throughput_ratio": ratio,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--database", action="append", choices=["sqlite", "postgresql"],
        help="Backend (repeatable; default sqlite).",
    )  # fmt: skip
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=20, help="Events per round.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, help="Ignored (run_all passes it to all).")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args(argv)
    if not (1 <= args.subscribers <= 5000 and 1 <= args.events <= 1000 and 1 <= args.rounds <= 50):
        parser.error("subscribers 1-5000, events 1-1000, rounds 1-50")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, args.subscribers * 2 + 256)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    print(f"Machine: {machine()}")
    results = [run_backend(b, args) for b in args.database or ["sqlite"]]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
