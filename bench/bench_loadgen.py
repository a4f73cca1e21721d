"""Nefos's load generator against wrk, on the same target, at the same concurrency.

    python bench/bench_loadgen.py [--duration 5] [--connections 20] [--low 1,4]
        [--target busybox|python|both] [--target-cpu 0] [--tool-cpu 1] [--no-pin]

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
wrk's (aim: at least 0.5) and Nefos's p50 over wrk's (aim: within 20%, 0.8-1.2), at
``--connections``. The ``--low`` concurrencies (default 1 and 4) are extra rows, not
judged: near-unloaded latency, where the p50 is the round trip plus each tool's own
cost per request rather than a queue.

Pinning: the target (and every process it forks) runs on ``--target-cpu`` and each
tool (wrk, one thread; the generator, one process) on ``--tool-cpu``, so that the
two never take turns on one core, which made the figures of a 2-core machine depend
on how the scheduler interleaved them. Children inherit the CPU affinity of the
thread that starts them, which is how the generator (started by
``nefos.loadtest.runner.GeneratorProcess``) is pinned without changing it.
``--no-pin`` measures as before (every process on every CPU). wrk runs at the
niceness the generator sets itself (10), so that other processes on the machine, if
any, take the same share from both.
``--database`` arguments (from ``bench/run_all.py``) are accepted and ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
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
from bench_api import _ms, check_pinned, ensure_wrk, free_port, machine, on_cpus

from nefos.loadtest.__main__ import NICENESS as GENERATOR_NICENESS
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


def _cpu_jiffies() -> dict[int, tuple[int, int]]:
    """Each CPU's (busy, total) jiffies since boot, from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(f) for f in fields[:8]]
            idle = ticks[3] + ticks[4]  # idle, iowait
            out[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _tasks_cpu() -> float:
    """CPU seconds all processes spent (user, nice, system; not interrupts), all CPUs."""
    user, nice, system = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:4]
    return (int(user) + int(nice) + int(system)) / _TICK


def _pid_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and of its children it has reaped (busybox's forks)."""
    with suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in stat[11:15]) / _TICK
    return 0.0


def _own_cpu() -> float:
    """CPU seconds of this process and of its reaped children (wrk)."""
    me, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


class CpuMeter:
    """Over a measurement: how busy the target's CPU and the tool's CPU were, by
    everything on them (the one at 100 % is the bottleneck), and how many cores
    processes other than this bench's used (another test run on the machine)."""

    def __init__(self, target: set[int] | None, tool: set[int] | None, pids: list[int]) -> None:
        self.target, self.tool, self.pids = target, tool, pids
        self.before: dict[int, tuple[int, int]] = {}
        self.others = (0.0, 0.0, 0.0)

    def _others(self) -> tuple[float, float, float]:
        ours = sum(_pid_cpu(p) for p in self.pids) + _own_cpu()
        return time.monotonic(), _tasks_cpu(), ours

    def start(self, *pids: int) -> None:
        self.pids = [*self.pids, *pids]
        self.before = _cpu_jiffies()
        self.others = self._others()

    def stop(self) -> tuple[float | None, float | None, float | None]:
        after, others = _cpu_jiffies(), self._others()

        def busy(cpus: set[int] | None) -> float | None:
            if cpus is None or not self.before:
                return None
            used = sum(after[c][0] - self.before[c][0] for c in cpus)
            total = sum(after[c][1] - self.before[c][1] for c in cpus)
            return 100.0 * used / total if total else None

        elapsed = others[0] - self.others[0]
        if not self.before or elapsed <= 0:
            return busy(self.target), busy(self.tool), None
        foreign = (others[1] - self.others[1]) - (others[2] - self.others[2])
        return busy(self.target), busy(self.tool), max(0.0, foreign) / elapsed


@dataclass
class Row:
    tool: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    #: The target's CPU and the tool's CPU busy, %; cores used by other processes.
    busy: tuple[float | None, float | None, float | None] = (None, None, None)

    def busy_cells(self) -> str:
        target, tool, others = self.busy
        cells = ["-" if b is None else f"{b:.0f}" for b in (target, tool)]
        return " | ".join([*cells, "-" if others is None else f"{others:.2f}"])


@contextmanager
def target(kind: str, cpus: set[int] | None = None) -> Iterator[tuple[str, int]]:
    """A local HTTP server of ``kind``, on ``cpus``; its URL and pid."""
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
        with on_cpus(cpus):
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            check_pinned(proc.pid, cpus, f"the {kind} target")
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
            yield url, proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()


def _generator_niceness() -> None:
    """wrk at the niceness the generator gives itself (``nefos.loadtest.__main__``):
    against other processes on the machine both tools then weigh the same."""
    os.nice(GENERATOR_NICENESS)


def run_wrk(
    wrk: str,
    url: str,
    duration: float,
    connections: int,
    cpus: set[int] | None = None,
    meter: CpuMeter | None = None,
) -> Row:
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "5s", url]
    meter = meter or CpuMeter(None, None, [])
    meter.start()
    with on_cpus(cpus):
        out = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=True,
            preexec_fn=_generator_niceness,
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
        meter.stop(),
    )


async def run_nefos(
    url: str,
    duration: float,
    connections: int,
    cpus: set[int] | None = None,
    meter: CpuMeter | None = None,
) -> Row:
    plan = Plan(
        urls=(url,), requests=(RequestSpec(),), duration=duration, users=connections, timeout=5
    )
    gen = GeneratorProcess(plan)
    with on_cpus(cpus):  # the event loop's thread forks the child, in start()
        await gen.start()
    final: dict[str, object] = {}
    meter = meter or CpuMeter(None, None, [])
    busy: tuple[float | None, float | None, float | None] = (None, None, None)
    try:
        assert gen.pid is not None
        check_pinned(gen.pid, cpus, "the generator")
        async for message in gen.messages():
            if not meter.before:  # its first second is over: start-up is not counted
                meter.start(gen.pid)
            if message.get("type") == "final":
                busy = meter.stop()
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
        busy,
    )


def cpu_plan(args: argparse.Namespace) -> tuple[set[int] | None, set[int] | None, str]:
    """The target's CPUs, the tools' CPUs, and a line saying so."""
    allowed = os.sched_getaffinity(0)
    if args.no_pin:
        return None, None, f"Not pinned: target and tools share CPUs {sorted(allowed)}."
    if args.target_cpu == args.tool_cpu or not {args.target_cpu, args.tool_cpu} <= allowed:
        raise SystemExit(
            f"--target-cpu and --tool-cpu must be two different CPUs of {sorted(allowed)}"
        )
    return (
        {args.target_cpu},
        {args.tool_cpu},
        f"Pinned: the target on CPU {args.target_cpu}, wrk and the generator on CPU "
        f"{args.tool_cpu} (this script unpinned; it only reads the generator's output).",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--database", action="append", help="Ignored (no database here).")
    parser.add_argument("--duration", type=float, default=5.0, help="Seconds per run.")
    parser.add_argument("--connections", type=int, default=20, help="wrk -c / Nefos users.")
    parser.add_argument(
        "--low", default="1,4",
        help="Extra, lower concurrencies, comma-separated, not judged ('' for none).",
    )  # fmt: skip
    parser.add_argument("--target", choices=["busybox", "python", "both"], default="both")
    parser.add_argument("--target-cpu", type=int, default=0, help="The target's CPU.")
    parser.add_argument("--tool-cpu", type=int, default=1, help="wrk's and the generator's CPU.")
    parser.add_argument("--no-pin", action="store_true", help="Run everything on every CPU.")
    args = parser.parse_args(argv)
    wrk = ensure_wrk()
    if wrk is None:
        print("wrk is not installed and could not be: nothing to compare with")
        return 1
    target_cpus, tool_cpus, pinning = cpu_plan(args)
    low = {int(c) for c in args.low.split(",") if c.strip()} - {args.connections}
    levels = [args.connections, *sorted(low)]
    print(f"Machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    print(pinning)
    print(f"wrk runs at niceness {GENERATOR_NICENESS}, as the generator sets itself.")
    print(
        f"Fixed concurrency {args.connections} (judged) and "
        f"{', '.join(map(str, levels[1:])) or 'no other'} (extra rows), "
        f"{args.duration:g} s per run, one after the other. C/rps: the mean latency "
        "a closed loop of C users implies at that rate (Little's law). CPU %: how busy "
        "the target's and the tool's CPU were (by anything), the one at 100 % the bottleneck; "
        "others: cores used meanwhile by processes not of this bench."
    )
    kinds = ["busybox", "python"] if args.target == "both" else [args.target]
    print(
        "\n| target | tool | C | requests/s | p50 ms | p99 ms | C/rps ms | "
        "target CPU % | tool CPU % | others | requests | errors |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for kind in kinds:
        with target(kind, target_cpus) as (url, pid):
            for connections in levels:
                meter = CpuMeter(target_cpus, tool_cpus, [pid])
                base = run_wrk(wrk, url, args.duration, connections, tool_cpus, meter)
                meter = CpuMeter(target_cpus, tool_cpus, [pid])
                ours = asyncio.run(run_nefos(url, args.duration, connections, tool_cpus, meter))
                for row in (base, ours):
                    print(
                        f"| {kind} | {row.tool} | {connections} | {row.rps:,.0f} | "
                        f"{row.p50_ms:.3f} | {row.p99_ms:.3f} | "
                        f"{connections / row.rps * 1e3:.3f} | {row.busy_cells()} | "
                        f"{row.requests:,} | {row.errors} |",
                        flush=True,
                    )
                ratios.append((kind, connections, ours.rps / base.rps, ours.p50_ms / base.p50_ms))
    print()
    for kind, connections, rps_ratio, p50_ratio in ratios:
        aims = connections == args.connections
        print(
            f"{kind}, {connections} connections: requests/s ratio to wrk {rps_ratio:.2f}"
            + (" (aim >= 0.5)" if aims else "")
            + f"; p50 ratio to wrk {p50_ratio:.2f}"
            + (" (aim 0.8-1.2)" if aims else " (extra row, not judged)")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
