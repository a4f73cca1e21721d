"""Create-to-running latency: Nefos's API against Podman itself, same engine, same run.

    python bench/bench_containers.py [--database sqlite] [--database postgresql]
                                     [--count 20] [--warmup 2] [--poll 0.05] [--json out.json]

Needs the test Podman (``make services``; its socket is ``NEFOS_TEST_DOCKER_HOST`` in
``var/test-services.env``) and its image ``localhost/nefos-busybox:test``. Without
them the benchmark says so and exits 0. For each backend it

1. starts Nefos (``bench/serve.py nefos``: uvicorn, one worker, the default 4
   operation workers, no access log) with a fresh database: SQLite in a temp dir,
   or a PostgreSQL database made through ``NEFOS_BENCH_POSTGRES_URL`` or
   ``NEFOS_TEST_POSTGRES_URL`` and dropped afterwards;
2. registers the Podman socket as a ``docker`` host (``POST /resources/hosts``, as
   the admin) and a user, whose default project gets the containers;
3. makes ``--count`` containers three ways, one at a time, rotating which way goes
   first in each round (after ``--warmup`` uncounted rounds):

   - **Nefos**: ``POST /api/v1/containers`` (1 replica, 0.1 CPU, 64 MiB, port 8080
     published on a free host port), then ``GET /containers/{id}`` every ``--poll``
     seconds until it says ``running``, then the operation until it ``succeeded``.
     Nefos sets ``running`` once the engine has started the container and Nefos
     has recorded it. The figure is from just before the POST is sent to that
     instant, read from the container's ``updated_at`` (same clock, so polling
     adds nothing). The time until a poll sees it, and until the operation
     succeeded, are reported too;
   - **podman CLI** (the baseline of the ratio): ``podman --url <socket> run -d``
     with the same image, limits (``--cpus``, ``--memory``, ``--memory-swap``,
     ``--pids-limit``), hardening (``--cap-drop ALL``, ``no-new-privileges``,
     ``--init``) and port, timed until the CLI returns (the container is running);
   - **docker SDK**: the Engine API's create + start through the ``docker`` SDK,
     with the host config Nefos's docker driver sends, timed until start returns.

4. removes everything it made: Nefos's containers through the API (then any engine
   container left with its project's label), the baselines' by their run label.

It prints p50 and p95 (nearest rank) per way and the ratios Nefos / baseline.
Every wait is bounded; only 127.0.0.1 and the Podman socket are contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api import machine, nefos_env, server

IMAGE = "localhost/nefos-busybox:test"
CPU = 0.1
MEMORY_MB = 64
CONTAINER_PORT = 8080
PIDS_LIMIT = 512  # Settings.container_pids_limit's default, which Nefos sends
AIM = 1.15  # Nefos / raw podman, at most
WAIT = 60.0  # seconds any one container may take
PASSWORD = "bench-password-123"
ADMIN_PASSWORD = "bench-admin-password-123"


def engine_uri() -> str | None:
    return os.environ.get("NEFOS_TEST_DOCKER_HOST")


def postgres_admin_url() -> str | None:
    return os.environ.get("NEFOS_BENCH_POSTGRES_URL") or os.environ.get("NEFOS_TEST_POSTGRES_URL")


# --- databases --------------------------------------------------------------------------
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
    admin = postgres_admin_url()
    if not admin:
        raise SystemExit("set NEFOS_BENCH_POSTGRES_URL or NEFOS_TEST_POSTGRES_URL")
    name = f"nefos_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_exec(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(_pg_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --- the three ways -----------------------------------------------------------------------
@dataclass
class Samples:
    """Seconds per container, for one way of making it."""

    name: str
    values: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float:
        """Nearest-rank percentile, in milliseconds."""
        ordered = sorted(self.values)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1e3 if ordered else math.nan


class Nefos:
    def __init__(self, base: str, uri: str, poll: float) -> None:
        self.client = httpx.Client(base_url=base, timeout=30.0)
        self.poll = poll
        self.uri = uri
        self.containers: list[str] = []
        self.project_id = ""
        self.auth: dict[str, str] = {}
        self.running = Samples("Nefos: POST to running (server-stamped)")
        self.seen = Samples("Nefos: POST to a poll seeing running")
        self.done = Samples("Nefos: POST to operation succeeded (polled)")
        self.accepted = Samples("Nefos: POST answered (202)")
        # Where the time goes, from the server's own timestamps (seconds):
        self.stages: dict[str, list[float]] = {
            "request sent -> operation enqueued (API: auth, quota, placement, ping, commit)": [],
            "operation enqueued -> a worker started it": [],
            "worker started -> container running (engine calls, replica rows)": [],
            "container running -> operation succeeded": [],
        }

    def set_up(self) -> None:
        r = self.client.post(
            "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
        )
        r.raise_for_status()
        admin = {"Authorization": f"Bearer {r.json()['data']['access_token']}"}
        r = self.client.post(
            "/api/v1/resources/hosts",
            json={"hostname": "podman-bench", "driver": "docker", "uri": self.uri},
            headers=admin,
        )
        r.raise_for_status()
        host = r.json()["data"]
        if host["status"] != "active":
            raise RuntimeError(f"the Podman host is not active: {host}")
        r = self.client.post(
            "/api/v1/auth/register",
            json={"email": "bench@example.com", "password": PASSWORD, "name": "Bench"},
        )
        r.raise_for_status()
        data = r.json()["data"]
        self.auth = {"Authorization": f"Bearer {data['access_token']}"}
        self.project_id = data["user"]["default_project_id"]

    def make(self, name: str, *, record: bool) -> None:
        body = {
            "name": name,
            "image": IMAGE,
            "ports": [str(CONTAINER_PORT)],
            "resources": {"cpu": f"{CPU:g}", "memory": f"{MEMORY_MB}m"},
        }
        sent_at = time.time()
        t0 = time.perf_counter()
        r = self.client.post("/api/v1/containers", json=body, headers=self.auth)
        accepted = time.perf_counter() - t0
        if r.status_code != 202:
            raise RuntimeError(f"POST /containers: {r.status_code} {r.text}")
        data = r.json()["data"]
        cid, op_url = data["container_id"], data["operation"]["url"]
        self.containers.append(cid)
        deadline = t0 + WAIT
        while True:
            g = self.client.get(f"/api/v1/containers/{cid}", headers=self.auth)
            g.raise_for_status()
            container = g.json()["data"]["container"]
            if container["status"] == "running":
                seen = time.perf_counter() - t0
                running_at = datetime.fromisoformat(container["updated_at"]).timestamp()
                stamped = running_at - sent_at
                break
            if container["status"] in ("error", "stopped", "degraded"):
                raise RuntimeError(f"container {name}: {container['status']}: {container}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"container {name} not running after {WAIT:g}s: {container}")
            time.sleep(self.poll)
        while True:
            op = self.client.get(op_url, headers=self.auth).json()["data"]
            if op["status"] == "succeeded":
                done = time.perf_counter() - t0
                break
            if op["status"] not in ("pending", "running"):
                raise RuntimeError(f"operation of {name}: {op}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"operation of {name} not done after {WAIT:g}s: {op}")
            time.sleep(self.poll)
        if record:
            self.running.values.append(stamped)
            self.seen.values.append(seen)
            self.done.values.append(done)
            self.accepted.values.append(accepted)
            created, started, finished = (
                datetime.fromisoformat(op[k]).timestamp()
                for k in ("created_at", "started_at", "finished_at")
            )
            marks = [sent_at, created, started, running_at, finished]
            for stage, a, b in zip(self.stages.values(), marks, marks[1:], strict=False):
                stage.append(b - a)

    def clean_up(self) -> None:
        """Delete every container through the API and wait for the deletions."""
        ops = []
        for cid in self.containers:
            r = self.client.delete(f"/api/v1/containers/{cid}", headers=self.auth)
            if r.status_code == 202:
                ops.append(r.json()["data"]["operation"]["url"])
            else:
                print(f"DELETE /containers/{cid}: {r.status_code} {r.text}", file=sys.stderr)
        deadline = time.monotonic() + WAIT
        for url in ops:
            while time.monotonic() < deadline:
                r = self.client.get(url, headers=self.auth)
                if r.status_code != 200 or r.json()["data"]["status"] not in ("pending", "running"):
                    break
                time.sleep(0.1)
        self.client.close()


class Raw:
    """The baselines: podman's CLI and the Engine API through the docker SDK."""

    def __init__(self, uri: str, run_id: str) -> None:
        import docker

        self.uri = uri
        self.label = f"nefos.bench={run_id}"
        self.api = docker.APIClient(base_url=uri, version="1.41", timeout=WAIT)
        self.cli = Samples("podman CLI: run -d")
        self.sdk = Samples("docker SDK: create + start")

    def podman_run(self, name: str, *, record: bool) -> None:
        cmd = [
            "podman", "--url", self.uri, "run", "-d", "--pull", "missing", "--name", name,
            "--label", self.label, "--cpus", f"{CPU:g}", "--memory", f"{MEMORY_MB}m",
            "--memory-swap", f"{MEMORY_MB}m", "--pids-limit", str(PIDS_LIMIT),
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--init",
            "--restart", "no", "-p", str(CONTAINER_PORT), IMAGE,
        ]  # fmt: skip
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT, check=False)
        elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"podman run: {done.returncode}: {done.stderr.strip()}")
        self._check_running(name)
        if record:
            self.cli.values.append(elapsed)

    def sdk_run(self, name: str, *, record: bool) -> None:
        # The host config Nefos's docker driver sends (src/nefos/drivers/docker/driver.py).
        host_config = self.api.create_host_config(
            privileged=False,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            port_bindings={f"{CONTAINER_PORT}/tcp": ("",)},
            nano_cpus=int(CPU * 1e9),
            mem_limit=MEMORY_MB * 1024**2,
            memswap_limit=MEMORY_MB * 1024**2,
            pids_limit=PIDS_LIMIT,
            restart_policy={"Name": "no"},
            init=True,
        )
        t0 = time.perf_counter()
        created = self.api.create_container(
            image=IMAGE,
            name=name,
            labels={"nefos.bench": self.label.split("=", 1)[1]},
            ports=[(CONTAINER_PORT, "tcp")],
            host_config=host_config,
            detach=True,
        )
        self.api.start(created["Id"])
        elapsed = time.perf_counter() - t0
        self._check_running(name)
        if record:
            self.sdk.values.append(elapsed)

    def _check_running(self, name: str) -> None:
        state = self.api.inspect_container(name)["State"]
        if not state.get("Running"):
            raise RuntimeError(f"{name} is not running: {state}")

    def clean_up(self) -> int:
        removed = 0
        for c in self.api.containers(all=True, filters={"label": self.label}):
            with suppress(Exception):
                self.api.remove_container(c["Id"], force=True, v=True)
                removed += 1
        self.api.close()
        return removed


def sweep(uri: str, label: str) -> int:
    """Force-remove engine containers carrying ``label`` (key=value); how many."""
    import docker

    api = docker.APIClient(base_url=uri, version="1.41", timeout=WAIT)
    try:
        removed = 0
        for c in api.containers(all=True, filters={"label": label}):
            with suppress(Exception):
                api.remove_container(c["Id"], force=True, v=True)
                removed += 1
        return removed
    finally:
        api.close()


# --- the benchmark --------------------------------------------------------------------------
@dataclass
class Row:
    backend: str
    samples: list[Samples]
    load: tuple[float, float]  # load average (1 min) before and after
    stages: dict[str, list[float]] = field(default_factory=dict)


def bench_backend(backend: str, uri: str, *, count: int, warmup: int, poll: float) -> Row:
    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix=f"nefos-bench-containers-{backend}-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "data").mkdir()
        with database(backend, tmp) as db_url:
            env = nefos_env(db_url, tmp / "data")
            env.update(NEFOS_REGISTER_LOCAL_HOSTS="false", NEFOS_ADMIN_PASSWORD=ADMIN_PASSWORD)
            with server(
                ["nefos"], env=env, cwd=tmp, log=tmp / "nefos.log", ready_path="/health"
            ) as (base, _pid):
                nefos = Nefos(base, uri, poll)
                raw = Raw(uri, run_id)
                project_label = ""
                load0 = os.getloadavg()[0]
                try:
                    nefos.set_up()
                    project_label = f"nefos.project={nefos.project_id}"
                    print(f"[{backend}] Nefos on {base}; engine {uri}", flush=True)
                    ways: list[Callable[[str, bool], None]] = [
                        lambda n, rec: nefos.make(n, record=rec),
                        lambda n, rec: raw.podman_run(n, record=rec),
                        lambda n, rec: raw.sdk_run(n, record=rec),
                    ]
                    prefixes = ["n", "cli", "sdk"]
                    for i in range(warmup + count):
                        record = i >= warmup
                        shift = i % len(ways)
                        for k in [(j + shift) % len(ways) for j in range(len(ways))]:
                            ways[k](f"bench-{run_id}-{prefixes[k]}-{i:02d}", record)
                        if record:
                            print(
                                f"[{backend}] {i - warmup + 1}/{count}: nefos "
                                f"{nefos.running.values[-1] * 1e3:.0f} ms, podman run "
                                f"{raw.cli.values[-1] * 1e3:.0f} ms, sdk "
                                f"{raw.sdk.values[-1] * 1e3:.0f} ms",
                                flush=True,
                            )
                    load1 = os.getloadavg()[0]
                finally:
                    nefos.clean_up()
                    left = sweep(uri, project_label) if project_label else 0
                    removed = raw.clean_up()
                    print(
                        f"[{backend}] cleaned up: {len(nefos.containers)} Nefos containers "
                        f"deleted through the API ({left} left over, force-removed), "
                        f"{removed} baseline containers removed",
                        flush=True,
                    )
    return Row(
        backend,
        [nefos.running, nefos.seen, nefos.done, nefos.accepted, raw.cli, raw.sdk],
        (load0, load1),
        nefos.stages,
    )


def report(rows: list[Row]) -> None:
    print()
    print("| backend | way | n | p50 ms | p95 ms | p50 / podman CLI | p95 / podman CLI "
          "| p50 / SDK | p95 / SDK |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        cli, sdk = row.samples[-2], row.samples[-1]
        for s in row.samples:
            ratios = (
                f"{s.pct(0.5) / cli.pct(0.5):.2f} | {s.pct(0.95) / cli.pct(0.95):.2f} "
                f"| {s.pct(0.5) / sdk.pct(0.5):.2f} | {s.pct(0.95) / sdk.pct(0.95):.2f}"
            )
            print(
                f"| {row.backend} | {s.name} | {len(s.values)} | {s.pct(0.5):,.0f} "
                f"| {s.pct(0.95):,.0f} | {ratios} |"
            )
    for row in rows:
        print(f"\n{row.backend}: where Nefos's time goes (medians, server timestamps):")
        for stage, values in row.stages.items():
            print(f"  {stage}: {Samples(stage, values).pct(0.5):,.0f} ms")
    print(
        "\nNearest-rank percentiles. Ratio = Nefos's (or the way's) percentile / the "
        f"baseline's, same run. Aim: Nefos POST-to-running / podman CLI <= {AIM}."
    )
    for row in rows:
        n, cli = row.samples[0], row.samples[-2]
        ratio = max(n.pct(0.5) / cli.pct(0.5), n.pct(0.95) / cli.pct(0.95))
        verdict = "met" if ratio <= AIM else "NOT met"
        print(
            f"{row.backend}: Nefos / podman CLI = {n.pct(0.5) / cli.pct(0.5):.2f} (p50), "
            f"{n.pct(0.95) / cli.pct(0.95):.2f} (p95): aim {verdict}; load average "
            f"{row.load[0]:.2f} before, {row.load[1]:.2f} after"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument(
        "--database", action="append", choices=["sqlite", "postgresql"],
        help="Backend (repeatable). Default: sqlite, and postgresql when "
        "NEFOS_BENCH_POSTGRES_URL or NEFOS_TEST_POSTGRES_URL is set.",
    )  # fmt: skip
    parser.add_argument("--count", type=int, default=20, help="Containers per way, measured.")
    parser.add_argument("--warmup", type=int, default=2, help="Uncounted rounds first.")
    parser.add_argument("--poll", type=float, default=0.05, help="Seconds between polls.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args, ignored = parser.parse_known_args(argv)
    if ignored:
        print(f"ignoring {' '.join(ignored)}: this benchmark has no such option")
    # Nefos's default quota is 50 containers per project; 0.1 CPU each fits the
    # test Podman's capacity (its cores x the default allocation ratio of 4).
    if not (1 <= args.count and 0 <= args.warmup and args.count + args.warmup <= 40):
        parser.error("count >= 1, warmup >= 0, count + warmup <= 40")
    if not 0.005 <= args.poll <= 1:
        parser.error("poll 0.005-1 s")
    uri = engine_uri()
    if not uri:
        print("NEFOS_TEST_DOCKER_HOST is not set (run `make services` and source "
              "var/test-services.env): bench_containers skipped.")  # fmt: skip
        return 0
    try:
        import docker

        client = docker.APIClient(base_url=uri, version="1.41", timeout=10)
        try:
            client.inspect_image(IMAGE)
        finally:
            client.close()
    except Exception as exc:  # the engine or the image is missing
        print(f"The test Podman at {uri} or its image {IMAGE} is unavailable ({exc}): "
              "run `make services`. bench_containers skipped.")  # fmt: skip
        return 0
    backends = args.database or ["sqlite"] + (["postgresql"] if postgres_admin_url() else [])
    if "postgresql" in backends and not postgres_admin_url():
        print("NEFOS_BENCH_POSTGRES_URL / NEFOS_TEST_POSTGRES_URL not set: PostgreSQL skipped")
        backends = [b for b in backends if b != "postgresql"]

    print(f"Machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    print(
        f"{args.count} containers per way (+{args.warmup} warm-up rounds) of {IMAGE}: "
        f"{CPU:g} CPU, {MEMORY_MB} MiB, port {CONTAINER_PORT} published, one at a time"
    )
    rows = [
        bench_backend(b, uri, count=args.count, warmup=args.warmup, poll=args.poll)
        for b in dict.fromkeys(backends)
    ]
    report(rows)
    if args.json:
        out: dict[str, Any] = {
            "machine": machine(),
            "rows": [
                {
                    "backend": r.backend,
                    "load": r.load,
                    "stages": r.stages,
                    "samples": [
                        asdict(s) | {"p50_ms": s.pct(0.5), "p95_ms": s.pct(0.95)} for s in r.samples
                    ],
                }
                for r in rows
            ],
        }
        args.json.write_text(json.dumps(out, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
