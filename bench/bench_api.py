"""Foundation benchmark: Nefos's API against a bare Starlette app, same server, same run.

    python bench/bench_api.py [--database sqlite] [--database postgresql] [--duration 10]

For each backend it

1. starts Nefos (``bench/serve.py nefos``: uvicorn, one worker, no access log) on a
   free 127.0.0.1 port with a fresh database: SQLite in a temp dir, or a PostgreSQL
   database made through ``NEFOS_TEST_POSTGRES_URL`` and dropped afterwards;
2. registers a user over HTTP and bulk-inserts projects into that user's personal
   organisation with one SQLAlchemy ``INSERT`` (10,000 projects in all);
3. captures the exact bodies of ``GET /api/v1/auth/me`` and
   ``GET /api/v1/projects?page=250&limit=20`` (a middle page of 500);
4. starts the baseline (``bench/baseline_app.py`` via ``bench/serve.py baseline``:
   same uvicorn settings) on another free port, answering those bodies byte for
   byte on the same paths;
5. per endpoint: warms both servers up, then measures Nefos and the baseline one
   after the other with ``wrk -t1 -c50 -d10s --latency`` and the Authorization
   header (or, where wrk cannot be installed, a bounded in-Python httpx load
   generator, which the output then names).

Every server is its own process, so the load generator, Nefos and the baseline
share no GIL. Only 127.0.0.1 is ever contacted; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SERVE = BENCH_DIR / "serve.py"
ENSURE_WRK = REPO / "scripts" / "ensure-wrk.sh"

PASSWORD = "bench-password-123"
PROJECTS = 10_000
PAGE, LIMIT = 250, 20
ENDPOINTS = {
    "GET /auth/me": "/api/v1/auth/me",
    "GET /projects (page 250 of 500)": f"/api/v1/projects?page={PAGE}&limit={LIMIT}",
}
START_TIMEOUT = 60.0
BUSY = 0.25  # cores used by other processes during a measurement worth a warning


# --- load generation ----------------------------------------------------------------
@dataclass
class Load:
    rps: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx answers, socket errors and timeouts
    tool: str
    others: float = 0.0  # CPU cores used by processes not in this benchmark, meanwhile
    cpu_us: float = 0.0  # the server process's CPU time per request (all its threads)


def ensure_wrk() -> str | None:
    """Path to wrk, installing it from Debian if needed; None if that fails."""
    if shutil.which("wrk") is None and ENSURE_WRK.exists():
        with suppress(subprocess.SubprocessError, OSError):
            subprocess.run(["bash", str(ENSURE_WRK)], check=False, timeout=600)
    return shutil.which("wrk")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unexpected wrk time {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> Load:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    total = re.search(r"^\s+(\d+) requests in", out, re.M)
    if not (rps and p99 and total):
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return Load(float(rps.group(1)), _ms(p99.group(1)), int(total.group(1)), errors, "wrk")


def run_wrk(wrk: str, url: str, token: str, duration: float, connections: int) -> Load:
    cmd = [
        wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "5s",
        "-H", f"Authorization: Bearer {token}", url,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True)
    return parse_wrk(done.stdout)


async def _httpx_load(url: str, token: str, duration: float, connections: int) -> Load:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(limits=limits, timeout=5.0, headers=headers) as client:
        started = time.perf_counter()
        deadline = started + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    r = await client.get(url)
                    ok = r.status_code < 400
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3
    return Load(len(latencies) / elapsed, p99, len(latencies), errors, "httpx (fallback)")


def run_load(wrk: str | None, url: str, token: str, duration: float, connections: int) -> Load:
    if wrk:
        return run_wrk(wrk, url, token, duration, connections)
    return asyncio.run(_httpx_load(url, token, duration, connections))


# --- other load on the machine -----------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def _system_busy() -> float:
    """CPU seconds spent on all cores, by everything, since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


#: PostgreSQL's processes that serve the whole server, not one database (their titles
#: after "postgres: "): the WAL they write and the buffers they flush are the
#: measured database's work as much as its backends' are.
_PG_SERVER_WIDE = (
    b"checkpointer", b"background writer", b"walwriter", b"autovacuum launcher",
    b"logical replication launcher", b"stats collector", b"archiver",
)  # fmt: skip


def _pg_server_wide(cmdline: bytes) -> bool:
    title = cmdline.split(b"\0", 1)[0]
    if title.startswith(b"postgres: "):
        rest = title[len(b"postgres: ") :]
        cluster, sep, after = rest.partition(b": ")  # "15/main: walwriter" names its cluster
        if sep and b" " not in cluster:
            rest = after
        return rest.startswith(_PG_SERVER_WIDE)
    return title.endswith(b"/postgres")  # the postmaster itself


def _ours(pids: list[int], database: str | None) -> float:
    """CPU seconds of the servers, this process, and PostgreSQL's backends for our
    database with the server's own processes (not the backends of other databases:
    those are another load)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        with suppress(OSError, ValueError, IndexError):
            if pid not in pids and pid != os.getpid():
                cmdline = (entry / "cmdline").read_bytes()
                if not (database and (database.encode() in cmdline or _pg_server_wide(cmdline))):
                    continue
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            total += (int(stat[11]) + int(stat[12])) / _TICK
    return total


def _cpu(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / _TICK


def measure(
    wrk: str | None, url: str, token: str, duration: float, connections: int,
    *, server: int, pids: list[int], database: str | None,
) -> Load:  # fmt: skip
    """``run_load``, with the server's CPU time per request and the cores that other
    processes used meanwhile (a busy machine disturbs req/s and p99 far more than
    the CPU time per request)."""
    rusage = resource.RUSAGE_CHILDREN
    before = _system_busy(), _ours(pids, database), resource.getrusage(rusage), _cpu(server)
    started = time.monotonic()
    load = run_load(wrk, url, token, duration, connections)
    elapsed = time.monotonic() - started
    after = _system_busy(), _ours(pids, database), resource.getrusage(rusage), _cpu(server)
    children = (after[2].ru_utime + after[2].ru_stime) - (before[2].ru_utime + before[2].ru_stime)
    load.others = max(0.0, (after[0] - before[0]) - (after[1] - before[1]) - children) / elapsed
    load.cpu_us = (after[3] - before[3]) / max(1, load.requests) * 1e6
    return load


# --- servers ------------------------------------------------------------------------
@contextmanager
def on_cpus(cpus: set[int] | None) -> Iterator[None]:
    """Processes started inside run on ``cpus`` (``None``: wherever they are allowed):
    a child inherits the CPU affinity of the thread that forks it."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def pin(pid: int, cpus: set[int] | None) -> None:
    """Move every thread of the running process ``pid`` onto ``cpus`` (threads and
    processes it starts later inherit it); nothing if ``cpus`` is None."""
    if cpus is None:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(task.name), cpus)
    check_pinned(pid, cpus, f"process {pid}")


def check_pinned(pid: int, cpus: set[int] | None, what: str) -> None:
    """``RuntimeError`` unless every thread of ``pid`` may run on ``cpus`` only."""
    if cpus is None:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(ProcessLookupError):
            if (actual := os.sched_getaffinity(int(task.name))) != cpus:
                raise RuntimeError(f"{what} runs on CPUs {sorted(actual)}, not {sorted(cpus)}")


def postgres_server() -> list[int]:
    """The pids of the local PostgreSQL server: its postmaster and every process it
    forked (empty if none runs here)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, ValueError, IndexError):
                if (entry / "comm").read_text().strip() == "postgres":
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    parents[int(entry.name)] = int(stat[1])
    return [pid for pid, parent in parents.items() if parent not in parents] + [
        pid for pid, parent in parents.items() if parent in parents
    ]


@contextmanager
def postgres_on_cpus(cpus: set[int] | None) -> Iterator[None]:
    """The local PostgreSQL server (every process, and the backends it forks meanwhile,
    which inherit the postmaster's affinity) on ``cpus``, then back where it was: the
    database gets cores apart from the process measured, as when it is a server of
    its own. Nothing if ``cpus`` is None or no server runs here."""
    if cpus is None:
        yield
        return
    before: dict[int, set[int]] = {}
    for pid in postgres_server():
        with suppress(ProcessLookupError):
            before[pid] = os.sched_getaffinity(pid)
            os.sched_setaffinity(pid, cpus)
    try:
        yield
    finally:
        every = set().union(*before.values()) if before else set()
        for pid in postgres_server():
            with suppress(ProcessLookupError):
                os.sched_setaffinity(pid, before.get(pid, every))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(
    args: list[str], *, env: dict[str, str], cwd: Path, log: Path, ready_path: str
) -> Iterator[tuple[str, int]]:
    """Run ``bench/serve.py ARGS`` in a child process; yield its base URL and pid once it
    answers."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(SERVE), args[0], str(port), *args[1:]],
            env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{args[0]} exited early:\n{log.read_text()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{args[0]} did not start:\n{log.read_text()}")
                with suppress(httpx.HTTPError):
                    httpx.get(base + ready_path, timeout=2.0)
                    break
                time.sleep(0.1)
            yield base, proc.pid
        finally:
            with suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def nefos_env(database_url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEFOS_")}
    env.update(
        NEFOS_DATABASE_URL=database_url,
        NEFOS_DATA_DIR=str(data_dir),
        NEFOS_SECRET_KEY="bench-secret-key-that-is-long-enough-for-hs256",
        NEFOS_ADMIN_PASSWORD="bench-admin-password-123",
        # argon2id at OWASP's minimum: it only costs at register/login, not measured.
        NEFOS_ARGON2_TIME_COST="2",
        NEFOS_ARGON2_MEMORY_KIB="19456",
        NEFOS_ARGON2_PARALLELISM="1",
        NEFOS_LOG_LEVEL="warning",
    )
    # The gateway on, as in production, but no limit a benchmark's load reaches
    # (bench_gateway.py measures the gateway itself).
    for group in ("AUTH", "CONTAINERS", "MONITORING", "BILLING", "USER"):
        env[f"NEFOS_RATE_LIMIT_{group}"] = "999999999/second"
    return env


# --- databases ----------------------------------------------------------------------
async def _pg_exec(admin_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def database(backend: str, tmp: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'nefos.db'}"
        return
    admin = os.environ.get("NEFOS_TEST_POSTGRES_URL")
    if not admin:
        raise SystemExit("NEFOS_TEST_POSTGRES_URL is not set (source var/test-services.env)")
    name = f"nefos_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_exec(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(_pg_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _insert_projects(database_url: str, organisation_id: str, count: int) -> None:
    from sqlalchemy import insert
    from sqlalchemy.ext.asyncio import create_async_engine

    from nefos.config import async_database_url
    from nefos.db.models import Project

    start = datetime.now(UTC) - timedelta(days=1)
    rows = [
        {
            "id": str(uuid.uuid4()),
            "organisation_id": organisation_id,
            "name": f"bench-{i:05d}",
            "description": f"Benchmark project {i}",
            "is_default": False,
            "created_at": start + timedelta(milliseconds=i),
            "updated_at": start + timedelta(milliseconds=i),
        }
        for i in range(count)
    ]
    engine = create_async_engine(async_database_url(database_url))
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(Project), rows)
    finally:
        await engine.dispose()


def seed(base: str, database_url: str) -> str:
    """Register the bench user, give its organisation PROJECTS projects; return a token."""
    with httpx.Client(base_url=base, timeout=30.0) as client:
        r = client.post(
            "/api/v1/auth/register",
            json={"email": "bench@example.com", "password": PASSWORD, "name": "Bench"},
        )
        r.raise_for_status()
        data = r.json()["data"]
        token = data["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        r = client.get(f"/api/v1/projects/{data['user']['default_project_id']}", headers=auth)
        r.raise_for_status()
        org_id = r.json()["data"]["organisation_id"]
        asyncio.run(_insert_projects(database_url, org_id, PROJECTS - 1))  # + "default"
        r = client.get("/api/v1/projects?limit=1", headers=auth)
        r.raise_for_status()
        total = r.json()["data"]["pagination"]["total"]
        if total != PROJECTS:
            raise RuntimeError(f"expected {PROJECTS} projects, the API lists {total}")
    return str(token)


def capture(base: str, token: str) -> dict[str, str]:
    """The exact bodies Nefos answers, keyed by path (the baseline's routes)."""
    bodies: dict[str, str] = {}
    with httpx.Client(base_url=base, timeout=30.0) as client:
        for target in ENDPOINTS.values():
            r = client.get(target, headers={"Authorization": f"Bearer {token}"})
            if r.status_code != 200:
                raise RuntimeError(f"GET {target}: {r.status_code} {r.text}")
            bodies[target.split("?", 1)[0]] = r.content.decode("utf-8")
    return bodies


# --- the benchmark ------------------------------------------------------------------
@dataclass
class Row:
    endpoint: str
    backend: str
    nefos: Load
    baseline: Load
    body_bytes: int

    @property
    def ratio(self) -> float:
        return self.nefos.rps / self.baseline.rps if self.baseline.rps else 0.0


def bench_backend(
    backend: str, wrk: str | None, *, duration: float, warmup: float, connections: int
) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix=f"nefos-bench-{backend}-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "data").mkdir()
        with database(backend, tmp) as db_url:
            env = nefos_env(db_url, tmp / "data")
            with server(
                ["nefos"], env=env, cwd=tmp, log=tmp / "nefos.log", ready_path="/health"
            ) as (nefos, nefos_pid):
                print(f"[{backend}] Nefos on {nefos}; seeding {PROJECTS:,} projects", flush=True)
                t0 = time.monotonic()
                token = seed(nefos, db_url)
                print(f"[{backend}] seeded in {time.monotonic() - t0:.1f}s", flush=True)
                bodies = capture(nefos, token)
                (tmp / "bodies.json").write_text(json.dumps(bodies), encoding="utf-8")
                with server(
                    ["baseline", str(tmp / "bodies.json")],
                    env=env, cwd=tmp, log=tmp / "baseline.log", ready_path="/api/v1/auth/me",
                ) as (baseline, baseline_pid):  # fmt: skip
                    pids = [nefos_pid, baseline_pid]
                    pg = db_url.rsplit("/", 1)[1] if backend == "postgresql" else None
                    for name, target in ENDPOINTS.items():
                        check = httpx.get(baseline + target, timeout=5.0).content
                        if check.decode("utf-8") != bodies[target.split("?", 1)[0]]:
                            raise RuntimeError(f"the baseline's {target} differs from Nefos's")
                        for base in (nefos, baseline):
                            run_load(wrk, base + target, token, warmup, connections)
                        args = (token, duration, connections)
                        n = measure(
                            wrk, nefos + target, *args, server=nefos_pid, pids=pids, database=pg
                        )
                        b = measure(
                            wrk, baseline + target, *args, server=baseline_pid, pids=pids,
                            database=pg,
                        )  # fmt: skip
                        row = Row(name, backend, n, b, len(check))
                        print(f"[{backend}] {format_row(row)}", flush=True)
                        rows.append(row)
    return rows


HEADER = (
    "| endpoint | backend | nefos req/s | baseline req/s | ratio | nefos p99 ms "
    "| baseline p99 ms | nefos CPU µs/req | baseline CPU µs/req | other load (cores) |"
)


def format_row(r: Row) -> str:
    errors = f" ({r.nefos.errors} errors)" if r.nefos.errors or r.baseline.errors else ""
    return (
        f"| {r.endpoint} | {r.backend} | {r.nefos.rps:,.0f} | {r.baseline.rps:,.0f} "
        f"| {r.ratio:.2f} | {r.nefos.p99_ms:.2f} | {r.baseline.p99_ms:.2f} "
        f"| {r.nefos.cpu_us:,.0f} | {r.baseline.cpu_us:,.0f} "
        f"| {r.nefos.others:.2f} / {r.baseline.others:.2f} |{errors}"
    )


def busy_note(rows: list[Row]) -> str | None:
    return busy_note_for([load for r in rows for load in (r.nefos, r.baseline)])


def busy_note_for(loads: list[Load]) -> str | None:
    worst = max((load.others for load in loads), default=0.0)
    if worst < BUSY:
        return None
    return (
        f"Other processes used up to {worst:.2f} of the {os.cpu_count()} cores during a "
        "measurement: these figures are disturbed; rerun on an idle machine."
    )


def machine() -> str:
    mem = ""
    with suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.1f} GiB memory"
    return f"{os.cpu_count()} CPUs{mem}, {platform.machine()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--database", action="append", choices=["sqlite", "postgresql"],
        help="Backend (repeatable; default sqlite).",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per measurement.")
    parser.add_argument("--warmup", type=float, default=3.0, help="Warm-up seconds per server.")
    parser.add_argument("--connections", type=int, default=50, help="Concurrent clients.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args(argv)
    if not (0 < args.duration <= 120 and 0 <= args.warmup <= 60 and 0 < args.connections <= 500):
        parser.error("duration 0-120 s, warmup 0-60 s, connections 1-500")

    wrk = ensure_wrk()
    tool = "wrk -t1 -c{c} -d{d:g}s --latency" if wrk else "httpx fallback, {c} clients, {d:g}s"
    print(f"Machine: {machine()}")
    print(f"Load generator: {tool.format(c=args.connections, d=args.duration)}")
    if not wrk:
        print("wrk could not be installed: using the slower in-Python httpx load generator")
    rows: list[Row] = []
    for backend in args.database or ["sqlite"]:
        rows += bench_backend(
            backend, wrk, duration=args.duration, warmup=args.warmup, connections=args.connections
        )
    print()
    print(HEADER)
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(format_row(r))
    print(
        "\nratio = Nefos req/s / baseline req/s; CPU µs/req = the server process's CPU time "
        "(all threads) per request; other load = CPU cores used meanwhile by processes "
        "outside this benchmark (Nefos / baseline measurement)."
    )
    if note := busy_note(rows):
        print(note)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "tool": rows[0].nefos.tool if rows else None,
                    "rows": [asdict(r) | {"ratio": r.ratio} for r in rows],
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
