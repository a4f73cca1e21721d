"""API processes: requests/s of ``nefos serve --role api --processes 1`` against
``--processes 2``, on one PostgreSQL database, in the same run.

    python bench/bench_processes.py [--duration 10] [--connections 50]

It makes a fresh PostgreSQL database (through ``NEFOS_TEST_POSTGRES_URL``), starts
``nefos serve --role api --processes 1`` on a free 127.0.0.1 port (the real command,
uvicorn and its workers as an operator runs them), registers a user, measures
``GET /api/v1/auth/me`` with its bearer token, stops it, then does the same with
``--processes 2`` on the same database and token, and prints both and their ratio.
The load comes from bench_api's helpers: ``wrk -t1 -cN -dDs`` (or, where wrk cannot
be installed, its bounded in-Python httpx generator, which the output names). An
``api`` process runs no loops and no operation workers, so the figure is the
request path alone. With ``NEFOS_BENCH_REDIS_URL`` or ``NEFOS_TEST_REDIS_URL`` set,
the processes use that Redis, as an installation of several processes should (its
principal cache needs it). Only 127.0.0.1 is contacted; every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_api import (
    START_TIMEOUT,
    Load,
    database,
    ensure_wrk,
    free_port,
    machine,
    nefos_env,
    run_load,
)

PATH = "/api/v1/auth/me"
PASSWORD = "bench-password-123"


@contextmanager
def nefos_serve(processes: int, database_url: str, data_dir: Path, log: Path) -> Iterator[str]:
    """``nefos serve --role api --processes N``; its base URL once it answers."""
    port = free_port()
    env = nefos_env(database_url, data_dir)
    env.update(NEFOS_HOST="127.0.0.1", NEFOS_PORT=str(port), NEFOS_REGISTER_LOCAL_HOSTS="false")
    # Several processes share what they learn through Redis (events, rate limits, the
    # cached callers' invalidations); without it they cache no caller at all.
    redis = os.environ.get("NEFOS_BENCH_REDIS_URL") or os.environ.get("NEFOS_TEST_REDIS_URL")
    if redis:
        env["NEFOS_REDIS_URL"] = redis
    nefos = Path(sys.executable).parent / "nefos"
    cmd = (
        [str(nefos)]
        if nefos.exists()
        else [sys.executable, "-c", "from nefos.cli.main import main; main()"]
    )
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "serve", "--role", "api", "--processes", str(processes)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"nefos serve exited early:\n{log.read_text()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nefos serve did not start:\n{log.read_text()}")
                with suppress(httpx.HTTPError):
                    if httpx.get(base + "/health", timeout=2.0).status_code == 200:
                        break
                time.sleep(0.1)
            yield base
        finally:
            with suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def token(base: str) -> str:
    with httpx.Client(base_url=base, timeout=30.0) as client:
        r = client.post(
            "/api/v1/auth/register",
            json={"email": "bench@example.com", "password": PASSWORD, "name": "Bench"},
        )
        r.raise_for_status()
        return str(r.json()["data"]["access_token"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--database",
        action="append",
        choices=["sqlite", "postgresql"],
        help="As bench/run_all.py passes it: only PostgreSQL runs several processes "
        "(without postgresql in the list, nothing is measured).",
    )
    args = parser.parse_args(argv)
    if args.database and "postgresql" not in args.database:
        print("bench_processes: several processes need PostgreSQL; skipped on SQLite")
        return 0
    wrk = ensure_wrk()
    print(f"bench_processes on {machine()}")
    results: dict[int, Load] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with database("postgresql", tmp) as url:
            bearer: str | None = None
            for n in (1, 2):
                log = tmp / f"serve-{n}.log"
                with nefos_serve(n, url, tmp / "data", log) as base:
                    bearer = bearer or token(base)
                    run_load(wrk, base + PATH, bearer, 2.0, args.connections)  # warm-up
                    results[n] = load = run_load(
                        wrk, base + PATH, bearer, args.duration, args.connections
                    )
                print(
                    f"--processes {n}: {load.rps:8.0f} req/s  p99 {load.p99_ms:7.1f} ms  "
                    f"{load.requests} requests, {load.errors} errors ({load.tool})"
                )
    ratio = results[2].rps / results[1].rps if results[1].rps else float("nan")
    print(f"GET /api/v1/auth/me, 2 processes / 1 process: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
