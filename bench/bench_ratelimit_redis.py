"""Rate-limit decisions per second on Redis against ``redis-benchmark``, same Redis,
same run.

    python bench/bench_ratelimit_redis.py [--duration 10] [--connections 50] [--processes 1]

It starts a throwaway ``redis-server`` on a free 127.0.0.1 port (no persistence, so
that nothing else disturbs it; ``--redis-url`` uses another) and measures, one after
the other:

1. **redis-benchmark**: ``redis-benchmark -c C -n N EVALSHA <sha of "return 1"> 0``,
   Redis's own C client running the most trivial script: the ceiling.
2. **python, trivial script**: the same ``EVALSHA`` from ``redis.asyncio`` (the client
   Nefos uses), C concurrent tasks: what a Python process can send at all.
3. **Nefos**: ``RedisCounters.decide`` (``nefos.gateway.limiter``), the call the
   middleware makes for every request: one ``EVALSHA`` of the GCRA script over two
   policies (a group's and the overall one) of one of ``--callers`` callers, C
   concurrent tasks, all admitted (limits of 10^8). Decisions are batched into
   pipelines, one in flight at a time, as in the server.

The Python runs use uvloop when it is installed, as uvicorn does for ``nefos serve``.

With ``--processes P`` rows 2 and 3 also run in P processes at once (as P server
processes would share one Redis) and their sum is reported. Ratio = Nefos
decisions/s / redis-benchmark EVALSHA/s; the aim (issue 7) is at least 0.5.
``--database`` arguments (from ``bench/run_all.py``) are accepted and ignored: no
database is involved.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api import free_port, machine

from nefos.domain.rate_limits import Policy
from nefos.gateway.limiter import RedisCounters

TRIVIAL = "return 1"
POLICIES = [Policy("containers", 10**8, 60), Policy("user", 10**8, 3600)]


@contextmanager
def throwaway_redis() -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed (make services installs it)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="nefos-bench-redis-") as tmp:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            url = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + 10
            while asyncio.run(_ping(url)) is False:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


async def _ping(url: str) -> bool:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        return bool(await client.ping())
    except Exception:  # not up yet
        return False
    finally:
        with suppress(Exception):
            await client.aclose()


def redis_benchmark(url: str, connections: int, requests: int) -> float:
    tool = shutil.which("redis-benchmark")
    if tool is None:
        raise SystemExit("redis-benchmark is not installed (Debian's redis-tools)")
    host, port = re.match(r"redis://([^:/]+):(\d+)", url).groups()  # type: ignore[union-attr]
    sha = subprocess.run(
        ["redis-cli", "-h", host, "-p", port, "SCRIPT", "LOAD", TRIVIAL],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    out = subprocess.run(
        [tool, "-h", host, "-p", port, "-c", str(connections), "-n", str(requests), "-q",
         "EVALSHA", sha, "0"],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout  # fmt: skip
    found = re.findall(r"([\d.]+) requests per second", out)
    if not found:
        raise RuntimeError(f"could not read redis-benchmark's output:\n{out}")
    return float(found[-1])


async def _drive(call: Callable[[int], Awaitable[object]], tasks: int, duration: float) -> int:
    done = 0
    deadline = time.perf_counter() + duration

    async def worker(n: int) -> None:
        nonlocal done
        i = n
        while time.perf_counter() < deadline:
            await call(i)
            done += 1
            i += tasks

    await asyncio.gather(*(worker(n) for n in range(tasks)))
    return done


async def _trivial(url: str, tasks: int, duration: float) -> float:
    counters = RedisCounters(url, timeout=2.0)  # the same client settings as the limiter's
    try:
        sha = await counters.redis.script_load(TRIVIAL)
        started = time.perf_counter()
        done = await _drive(lambda _: counters.redis.evalsha(sha, 0), tasks, duration)
        return done / (time.perf_counter() - started)
    finally:
        await counters.close()


async def _decisions(url: str, tasks: int, duration: float, callers: int) -> float:
    counters = RedisCounters(url, timeout=2.0)
    keys = [[f"bench:rl:containers:{c}", f"bench:rl:user:{c}"] for c in range(callers)]
    try:
        await counters.decide(keys[0], POLICIES)  # loads the script
        started = time.perf_counter()

        async def one(i: int) -> None:
            d = await counters.decide(keys[i % callers], POLICIES)
            if not d.allowed:
                raise RuntimeError("a decision refused: the limits are meant to admit all")

        done = await _drive(one, tasks, duration)
        return done / (time.perf_counter() - started)
    finally:
        await counters.close()


def _loop_run(coro: Awaitable[float]) -> float:
    """``uvloop.run`` when installed (as uvicorn serves Nefos), else ``asyncio.run``."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return float(uvloop.run(coro))  # type: ignore[arg-type]


def _run(kind: str, url: str, tasks: int, duration: float, callers: int) -> float:
    if kind == "trivial":
        return _loop_run(_trivial(url, tasks, duration))
    return _loop_run(_decisions(url, tasks, duration, callers))


def in_processes(
    kind: str, url: str, processes: int, tasks: int, duration: float, callers: int
) -> float:
    if processes == 1:
        return _run(kind, url, tasks, duration, callers)
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        rates = pool.starmap(_run, [(kind, url, tasks, duration, callers)] * processes)
    return sum(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--database", action="append", help="Ignored (no database here).")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per Python run.")
    parser.add_argument("--connections", type=int, default=50, help="Concurrent clients/tasks.")
    parser.add_argument("--callers", type=int, default=1000, help="Distinct callers' keys.")
    parser.add_argument("--processes", type=int, default=2, help="Also run in P processes.")
    parser.add_argument("--requests", type=int, default=200_000, help="redis-benchmark -n.")
    parser.add_argument("--redis-url", help="Use this Redis instead of a throwaway one.")
    args = parser.parse_args(argv)
    if not (0 < args.duration <= 120 and 1 <= args.connections <= 1000 and args.processes >= 1):
        parser.error("duration 0-120 s, connections 1-1000, processes >= 1")
    print(f"Machine: {machine()}")
    try:
        import hiredis  # noqa: F401

        parser_name = "hiredis"
    except ImportError:
        parser_name = "pure-Python parser"
    print(f"Client: redis-py {__import__('redis').__version__} ({parser_name})")
    with ExitStack() as stack:
        url = args.redis_url or stack.enter_context(throwaway_redis())
        c, d = args.connections, args.duration
        ceiling = redis_benchmark(url, c, args.requests)
        rows = [("redis-benchmark EVALSHA (return 1)", "C client", ceiling)]
        for p in sorted({1, args.processes}):
            label = f"{p} process{'es' if p > 1 else ''}"
            trivial = in_processes("trivial", url, p, c, d, args.callers)
            rows.append(("python EVALSHA (return 1)", label, trivial))
            decided = in_processes("decide", url, p, c, d, args.callers)
            rows.append(("Nefos GCRA decisions", label, decided))
    print()
    print("| what | client | ops/s | ratio to redis-benchmark |")
    print("| --- | --- | ---: | ---: |")
    for what, client, rate in rows:
        print(f"| {what} | {client} | {rate:,.0f} | {rate / ceiling:.2f} |")
    print("\nAim: Nefos decisions/s at least 0.5 of redis-benchmark's EVALSHA/s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
