"""Fixtures of the fault tests: apps of their own, a Podman of their own, a killable engine.

Each test builds the apps it needs (``Lab.app``) on a fresh database of the session's
backend, with the settings the fault calls for (no workers, a short lease, ...), and
can start several apps on one database to play a restart or a second server. The
background reconciler and host checker are off (an hour apart) unless a test turns
them on, so nothing but the test moves the platform.

The hosts are a Podman storage of the fault tests' own (``podman``): these tests run
reconcilers, which remove every Nefos-labelled engine container they do not know. On
the shared test Podman they would remove other test sessions' containers, and other
sessions' clean-ups (``remove_managed_containers``) would remove theirs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from nefos.api.app import create_app
from nefos.config import Settings
from nefos.db.models import Container, ContainerReplica, Host, Operation
from nefos.services.containers import LABEL_INSTALLATION
from nefos.services.users import UserService
from tests.conftest import (
    ADMIN_PASSWORD,
    PASSWORD,
    TEST_IMAGE,
    Account,
    DatabaseFactory,
    make_settings,
    new_installation_id,
    wait_operation,
)
from tests.processes import dies_with_us

V1 = "/api/v1"
REPO = Path(__file__).resolve().parents[2]


# --- a Podman of our own -------------------------------------------------------------
def _ping_unix(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(path))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return data.startswith(b"HTTP/1.") and data.rstrip().endswith(b"OK")
    except OSError:
        return False


def _podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(REPO / "var" / "podman" / "containers.conf"))
    return env


def _podman() -> str:
    podman = shutil.which("podman")
    if podman is None:
        raise RuntimeError("podman is not on PATH: run `make services`")
    return podman


class EngineService:
    """``podman system service`` on a socket of its own, started and killed at will."""

    def __init__(self, storage: list[str], log_path: Path, sock: Path | None = None) -> None:
        self.storage = storage
        self.path = sock or Path(f"/tmp/nefos-fault-{uuid.uuid4().hex[:12]}.sock")
        self.uri = f"unix://{self.path}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None, "already running"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - a fixed command line
                [_podman(), *self.storage, "system", "service", "--time=0", self.uri],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_podman_env(),
                start_new_session=True,
                preexec_fn=dies_with_us(),  # noqa: PLW1509 - set before the exec, main thread
            )
        deadline = time.monotonic() + 60
        while not _ping_unix(self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"podman system service did not answer on {self.uri}:\n{tail}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the service: the engine is gone, its containers live on (conmon)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.kill()
        self.path.unlink(missing_ok=True)


class Podman:
    """A Podman storage of the fault tests' own, with the test image, served on a socket.

    Same runtime, network and containers.conf as the shared test Podman; only the
    storage (``--root``/``--runroot``) differs.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.storage = ["--root", str(base / "root"), "--runroot", str(base / "run")]
        self.service = EngineService(self.storage, base / "service.log", base / "engine.sock")
        self.uri = self.service.uri

    def _run(self, *args: str) -> None:
        subprocess.run(  # noqa: S603 - a fixed command line
            [_podman(), *args], env=_podman_env(), check=True, capture_output=True, timeout=300
        )

    def setup(self) -> None:
        archive = self.base / "image.tar"
        self._run("save", "--format", "docker-archive", "-o", str(archive), TEST_IMAGE)
        self._run(*self.storage, "load", "-i", str(archive))
        archive.unlink()
        self.service.start()

    def another_service(self, log_path: Path) -> EngineService:
        """A second Engine API endpoint on this storage (to kill without losing this one)."""
        return EngineService(self.storage, log_path)

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.uri, version="1.41")

    def containers(self, project_id: str | None) -> list[dict[str, Any]]:
        """Nefos-made engine containers (of one project): name, id, labels, state."""
        labels = ["nefos.managed=true"]
        if project_id is not None:
            labels.append(f"nefos.project={project_id}")
        client = self.client()
        try:
            rows = client.api.containers(all=True, filters={"label": labels})
        finally:
            client.close()
        return [
            {
                "name": str(row["Names"][0]).lstrip("/"),
                "id": row["Id"],
                "labels": dict(row.get("Labels") or {}),
                "state": str(row.get("State", "")).lower(),
            }
            for row in rows
        ]

    def teardown(self) -> None:
        self.service.close()
        for args in (("rm", "-af", "-t", "0"), ("rmi", "-af")):
            try:
                self._run(*self.storage, *args)
            except subprocess.SubprocessError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    base = Path(f"/tmp/nefos-faults-{uuid.uuid4().hex[:10]}")
    base.mkdir()
    engine = Podman(base)
    try:
        engine.setup()
        yield engine
    finally:
        engine.teardown()


@pytest.fixture
def engine(podman: Podman, tmp_path: Path) -> Iterator[EngineService]:
    """A killable Engine API endpoint on the fault tests' storage (not yet started)."""
    service = podman.another_service(tmp_path / "podman-service.log")
    yield service
    service.close()


# --- Nefos apps --------------------------------------------------------------------------
@dataclass
class Nefos:
    """One running app (its lifespan entered) and an HTTP client on it."""

    app: Any
    client: httpx.AsyncClient
    lab: Lab

    @property
    def core(self) -> Any:
        return self.app.state.core

    async def admin(self) -> dict[str, str]:
        async with self.core.db.session() as session:
            await UserService(self.core, session).ensure_admin()
        r = await self.client.post(
            f"{V1}/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
        )
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['data']['access_token']}"}

    async def user(self) -> Account:
        email = f"user-{uuid.uuid4().hex[:10]}@example.com"
        r = await self.client.post(
            f"{V1}/auth/register", json={"email": email, "password": PASSWORD}
        )
        assert r.status_code == 201, r.text
        data = r.json()["data"]
        return Account(data["user"], data["access_token"], data["refresh_token"], PASSWORD)

    async def add_host(
        self, admin: dict[str, str], uri: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        body = {
            "hostname": f"h-{uuid.uuid4().hex[:8]}",
            "driver": "docker",
            "uri": uri or self.lab.podman.uri,
            **extra,
        }
        r = await self.client.post(f"{V1}/resources/hosts", json=body, headers=admin)
        assert r.status_code == 201, r.text
        host: dict[str, Any] = r.json()["data"]
        return host

    async def host(self, admin: dict[str, str], host_id: str) -> dict[str, Any]:
        r = await self.client.get(f"{V1}/resources/hosts/{host_id}", headers=admin)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()["data"]
        return data

    async def create(self, who: Account, name: str, **body: Any) -> httpx.Response:
        payload = {"name": name, "image": TEST_IMAGE, **body}
        return await self.client.post(f"{V1}/containers", json=payload, headers=who.headers)

    async def created(self, who: Account, name: str, **body: Any) -> dict[str, Any]:
        """Create a container and wait for its operation to succeed; the container."""
        r = await self.create(who, name, **body)
        assert r.status_code == 202, r.text
        op = await self.wait(who, r.json()["data"]["operation"])
        assert op["status"] == "succeeded", op
        return await self.container(who, r.json()["data"]["container_id"])

    async def container(self, who: Account, container_id: str) -> dict[str, Any]:
        r = await self.client.get(f"{V1}/containers/{container_id}", headers=who.headers)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()["data"]["container"]
        return data

    async def wait(self, who: Account, op: dict[str, Any] | str) -> dict[str, Any]:
        return await wait_operation(self.client, who.headers, op, timeout=120)

    # --- the database's side -----------------------------------------------------------
    async def op_row(self, op_id: str) -> Operation:
        async with self.core.db.sessionmaker() as session:
            op = await session.get(Operation, op_id)
            assert op is not None
            return op

    async def host_row(self, host_id: str) -> Host:
        async with self.core.db.sessionmaker() as session:
            host = await session.get(Host, host_id)
            assert host is not None
            return host

    async def replica_rows(self, container_id: str | None = None) -> list[ContainerReplica]:
        async with self.core.db.sessionmaker() as session:
            q = select(ContainerReplica).order_by(
                ContainerReplica.created_at, ContainerReplica.slot
            )
            if container_id is not None:
                q = q.where(ContainerReplica.container_id == container_id)
            return list((await session.scalars(q)).all())

    async def count(self, model: Any) -> int:
        async with self.core.db.sessionmaker() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)

    async def counts(self) -> dict[str, int]:
        return {
            "containers": await self.count(Container),
            "replicas": await self.count(ContainerReplica),
            "operations": await self.count(Operation),
        }

    async def assert_converged(self) -> list[dict[str, Any]]:
        """Every replica row has exactly one engine container, named after it and
        running, and every engine container of this test's installations has a replica
        row (no orphans).

        Only this test's installations count: a container an earlier test's engine call
        was still making when that test ended (a thread finishing a create after its
        app stopped, or after the lab's clean-up) is that installation's orphan, for
        its own reconciler, not this test's."""
        async with self.core.db.sessionmaker() as session:
            rows = (
                await session.execute(select(ContainerReplica.id, ContainerReplica.state))
            ).all()
        mine = self.lab.installations()
        found = [
            c
            for c in self.lab.podman.containers(None)
            if c["name"] not in self.lab.foreign and c["labels"].get(LABEL_INSTALLATION) in mine
        ]
        names = sorted(c["name"] for c in found)
        assert names == sorted(f"nefos-{r.id}" for r in rows), (names, rows)
        assert sorted(c["labels"]["nefos.id"] for c in found) == sorted(r.id for r in rows)
        assert all(c["state"] == "running" for c in found), found
        assert all(r.state == "running" for r in rows), rows
        return found


@dataclass
class Lab:
    databases: DatabaseFactory
    podman: Podman
    tmp: Path
    #: Engine containers a test made on purpose outside this platform's rows.
    foreign: set[str] = field(default_factory=set)
    _n: int = 0
    _installations: dict[str, str] = field(default_factory=dict)

    async def new_url(self) -> str:
        """A fresh database (the factory runs its own loop: call it off this one)."""
        return await asyncio.to_thread(self.databases.new_url)

    def installation(self, url: str) -> str:
        """The installation id of the apps on ``url`` (apps on one database are one
        installation: a restart is the same Nefos, and reaps the same orphans)."""
        return self._installations.setdefault(url, new_installation_id())

    def installations(self) -> set[str]:
        return set(self._installations.values())

    def settings(self, url: str, **overrides: Any) -> Settings:
        self._n += 1
        values: dict[str, Any] = {
            "installation_id": self.installation(url),
            "reconcile_interval": 3600.0,
            "host_check_interval": 3600.0,
            "host_timeout": 5.0,
            **overrides,
        }
        return make_settings(url, self.tmp / f"data-{self._n}", **values)

    @asynccontextmanager
    async def app(self, url: str | None = None, **overrides: Any) -> AsyncIterator[Nefos]:
        """A Nefos app on ``url`` (default: a fresh database), its lifespan running."""
        application = create_app(self.settings(url or await self.new_url(), **overrides))
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application, client=("203.0.113.7", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://nefos.test") as c:
                yield Nefos(application, c, self)

    def containers(self, project_id: str) -> list[dict[str, Any]]:
        return self.podman.containers(project_id)


@pytest.fixture
def lab(databases: DatabaseFactory, podman: Podman, tmp_path: Path) -> Iterator[Lab]:
    the_lab = Lab(databases, podman, tmp_path)
    yield the_lab
    # Each test starts from an empty engine: remove whatever it left.
    client = podman.client()
    try:
        for c in client.containers.list(all=True):
            c.remove(force=True)
    finally:
        client.close()


async def eventually(check: Any, what: str, within: float = 60) -> Any:
    """Poll ``check()`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.1)
