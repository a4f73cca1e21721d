"""Nefos's load generator against wrk, on the same target, at the same concurrency.

    python bench/bench_loadgen.py [--duration 5] [--connections 20] [--target busybox|python|both]

Targets, each a local HTTP server on a free 127.0.0.1 port, started by the bench:

* ``busybox``: ``busybox httpd`` serving a small page (what the test container image
  runs; it forks a process per connection and answers one request per connection,
  so every request is a new connection for both tools);
* ``python``: a tiny keep-alive HTTP/1.1 server on asyncio (uvloop when installed),
  one connection many requests.

For each target, one after the other: ``wrk -t1 -cC -dDs --latency`` (the baseline,
measured in this run) and Nefos's generator (``python -m nefos.loadtest``: the process
the control plane starts, closed model, C users, no ramp). Each row reports the
requests/s achieved and the p50 and p99 latency; the ratio rows are Nefos's rps over
wrk's (aim: at least 0.5) and Nefos's p50 over wrk's (aim: within 20%, 0.8-1.2).
``--database`` arguments (from ``bench/run_all.py``) are accepted and ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api import _ms, ensure_wrk, free_port, machine

from nefos.loadtest.plan import Plan, RequestSpec
from nefos.loadtest.runner import GeneratorProcess

PAGE = b"<html><body>nefos bench page</body></html>\n"
PYTHON_SERVER = r"""
import asyncio, sys
BODY = sys.argv[2].encode()
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY), BODY)
class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.t, self.buf = transport, b""
    def data_received(self, data):
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            self.t.write(RESPONSE * n)
async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    async with server:
        await server.serve_forever()
try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


@dataclass
class Row:
    tool: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


@contextmanager
def target(kind: str) -> Iterator[str]:
    """A local HTTP server of ``kind``; its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="nefos-bench-loadgen-") as tmp:
        if kind == "busybox":
            busybox = shutil.which("busybox")
            if busybox is None:
                raise SystemExit("busybox is not installed")
            Path(tmp, "index.html").write_bytes(PAGE)
            cmd = [busybox, "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", tmp]
        else:
            cmd = [sys.executable, "-c", PYTHON_SERVER, str(port), PAGE.decode()]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/"
            deadline = time.monotonic() + 15
            while True:
                with suppress(OSError):
                    import socket

                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the {kind} target did not start")
                time.sleep(0.05)
            yield url
        finally:
            proc.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()


def run_wrk(wrk: str, url: str, duration: float, connections: int) -> Row:
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "5s", url]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration + 60, check=True
    ).stdout
    import re

    def find(pattern: str) -> str:
        m = re.search(pattern, out, re.M)
        if m is None:
            raise RuntimeError(f"could not read wrk's output:\n{out}")
        return m.group(1)

    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return Row(
        "wrk",
        float(find(r"^Requests/sec:\s+([\d.]+)")),
        _ms(find(r"^\s+50%\s+(\S+)")),
        _ms(find(r"^\s+99%\s+(\S+)")),
        int(find(r"^\s+(\d+) requests in")),
        errors,
    )


async def run_nefos(url: str, duration: float, connections: int) -> Row:
    plan = Plan(
        urls=(url,), requests=(RequestSpec(),), duration=duration, users=connections, timeout=5
    )
    gen = GeneratorProcess(plan)
    await gen.start()
    final: dict[str, object] = {}
    try:
        async for message in gen.messages():
            if message.get("type") == "final":
                final = message["summary"]
            elif message.get("type") == "error":
                raise RuntimeError(str(message))
    finally:
        await gen.kill()
    if not final:
        raise RuntimeError(f"the generator ended without results: {gen.stderr!r}")
    saturated = " (saturated)" if final.get("saturated") else ""
    return Row(
        f"nefos generator{saturated}",
        float(final["requests_per_second"]),  # type: ignore[arg-type]
        float(final["p50_response_time"]),  # type: ignore[arg-type]
        float(final["p99_response_time"]),  # type: ignore[arg-type]
        int(final["total_requests"]),  # type: ignore[call-overload]
        int(final["failed_requests"]),  # type: ignore[call-overload]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--database", action="append", help="Ignored (no database here).")
    parser.add_argument("--duration", type=float, default=5.0, help="Seconds per run.")
    parser.add_argument("--connections", type=int, default=20, help="wrk -c / Nefos users.")
    parser.add_argument("--target", choices=["busybox", "python", "both"], default="both")
    args = parser.parse_args(argv)
    wrk = ensure_wrk()
    if wrk is None:
        print("wrk is not installed and could not be: nothing to compare with")
        return 1
    print(f"Machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    print(
        f"Fixed concurrency {args.connections}, {args.duration:g} s per run, one after the other."
    )
    kinds = ["busybox", "python"] if args.target == "both" else [args.target]
    print("\n| target | tool | requests/s | p50 ms | p99 ms | requests | errors |")
    print("|---|---|---:|---:|---:|---:|---:|")
    ratios = []
    for kind in kinds:
        with target(kind) as url:
            base = run_wrk(wrk, url, args.duration, args.connections)
            ours = asyncio.run(run_nefos(url, args.duration, args.connections))
        for row in (base, ours):
            print(
                f"| {kind} | {row.tool} | {row.rps:,.0f} | {row.p50_ms:.3f} | "
                f"{row.p99_ms:.3f} | {row.requests:,} | {row.errors} |"
            )
        ratios.append((kind, ours.rps / base.rps, ours.p50_ms / base.p50_ms))
    print()
    for kind, rps_ratio, p50_ratio in ratios:
        print(
            f"{kind}: requests/s ratio to wrk {rps_ratio:.2f} (aim >= 0.5); "
            f"p50 ratio to wrk {p50_ratio:.2f} (aim 0.8-1.2)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
