"""Test fixtures: every DB-backed test runs on SQLite *and* PostgreSQL.

``NEFOS_TEST_BACKENDS`` (default ``sqlite,postgresql``) picks the backends.
PostgreSQL comes from ``NEFOS_TEST_POSTGRES_URL`` (``make test`` starts a server
and sets it); each session makes a fresh database there and drops it at the end.
Tables are emptied between tests, so each test starts from an empty platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from nefos.api.app import create_app
from nefos.config import Settings
from nefos.db.models import Base

BACKENDS = [b for b in os.environ.get("NEFOS_TEST_BACKENDS", "sqlite,postgresql").split(",") if b]
PASSWORD = "correct-horse-battery"
ADMIN_PASSWORD = "admin-password-123"
# OWASP's minimum argon2id parameters: the cheapest that Settings accepts.
FAST_HASH = {"argon2_time_cost": 2, "argon2_memory_kib": 19456, "argon2_parallelism": 1}


def _pg_admin_url() -> str:
    url = os.environ.get("NEFOS_TEST_POSTGRES_URL")
    if not url:
        pytest.fail(
            "NEFOS_TEST_POSTGRES_URL is not set: run `make test`, which starts PostgreSQL, "
            "or set NEFOS_TEST_BACKENDS=sqlite to run on SQLite only."
        )
    return url


async def _pg_exec(admin_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class DatabaseFactory:
    """Makes one fresh database per call on the chosen backend, and cleans up."""

    def __init__(self, backend: str, tmp: Path) -> None:
        self.backend = backend
        self.tmp = tmp
        self._pg_dbs: list[str] = []

    def new_url(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.tmp / f'nefos-{uuid.uuid4().hex[:8]}.db'}"
        admin = _pg_admin_url()
        name = f"nefos_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(_pg_exec(admin, f'CREATE DATABASE "{name}"'))
        self._pg_dbs.append(name)
        return admin.rsplit("/", 1)[0] + f"/{name}"

    def cleanup(self) -> None:
        if self.backend != "postgresql":
            return
        import asyncpg

        admin = _pg_admin_url()
        for name in self._pg_dbs:
            for attempt in range(5):
                try:
                    asyncio.run(_pg_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    break
                except asyncpg.InsufficientPrivilegeError:
                    # A session of another role (a superuser's psql, a maintenance
                    # worker) is on it: it ends soon. A database left behind costs
                    # disk, not a test result.
                    if attempt == 4:
                        warnings.warn(f"test database {name} left behind", stacklevel=1)
                    time.sleep(1 + attempt)


# --- the order test files are handed to the workers --------------------------------------
#: What each test file took (seconds, both databases) in a whole `make test` run on
#: the CI machine: `make test` gives the workers the slowest files first (the
#: Makefile turns off xdist's own order, by the number of tests), so that no worker
#: is left with a long file at the end while the others stand idle. A file not
#: listed counts as quick. Refresh with `scripts/test_durations.py JUNIT_XML`.
DURATIONS = Path(__file__).with_name("durations.json")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    try:
        weight: dict[str, float] = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return
    # Stable: a file's own tests keep their order (and its module fixtures their use).
    items.sort(key=lambda item: -weight.get(item.nodeid.split("::", 1)[0], 0.0))


TEST_SECRET_KEY = "test-secret-key-that-is-long-enough-for-hs256"
# Every app a test makes is an installation of its own (label nefos.installation),
# so no app's reconciler reaps another app's engine containers as orphans, and two
# test sessions sharing the test Podman never touch each other's.
SESSION_INSTALLATION = f"test-{uuid.uuid4().hex[:10]}"
_apps = itertools.count()


def new_installation_id() -> str:
    return f"{SESSION_INSTALLATION}-{next(_apps)}"


GENEROUS_LIMITS = {
    f"rate_limit_{group}": "999999999/second"
    for group in ("auth", "containers", "monitoring", "billing", "user")
}


def make_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "secret_key": TEST_SECRET_KEY,
        "installation_id": new_installation_id(),
        "admin_email": "admin@nefos.test",
        "admin_username": "admin",
        "admin_password": ADMIN_PASSWORD,
        # Tests register the hosts they use; the local engine is not picked up.
        "register_local_hosts": False,
        "operation_poll_interval": 0.2,
        # No billing pass on its own during a test: tests that need one call run_once.
        "billing_interval": 3600.0,
        # A test's marketplace calls are written before it charges them: charged at
        # once (tests of the settling delay set their own).
        "marketplace_settle_seconds": 0.0,
        # The kvm probe of "auto" is the driver's to test (tests/contract); every test
        # app would otherwise spend its timeout where /dev/kvm hangs.
        "libvirt_domain_type": os.environ.get("NEFOS_TEST_LIBVIRT_DOMAIN_TYPE") or "qemu",
        **FAST_HASH,
        # The limiter stays on (every response carries its headers) but never refuses
        # the suite's thousands of requests from 127.0.0.1; tests of the limits set
        # their own.
        **GENEROUS_LIMITS,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def databases(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(backend, tmp_path_factory.mktemp(backend))
    yield factory
    factory.cleanup()


@pytest.fixture(scope="session")
def settings(databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(databases.new_url(), tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[Any]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


async def _empty_tables(application: Any) -> None:
    from sqlalchemy.exc import DBAPIError

    db = application.state.core.db
    # The leases are the running processes' (which loop runs where), not the platform's.
    tables = [t.name for t in reversed(Base.metadata.sorted_tables) if t.name != "leases"]
    for attempt in range(5):
        try:
            async with db.engine.begin() as conn:
                if db.is_sqlite:
                    # Rows reference rows of their own table (organisations.parent_id).
                    await conn.execute(text("PRAGMA defer_foreign_keys=ON"))
                    # Invoices first: a finalized invoice's lines cannot be deleted on
                    # their own (a trigger), but go with their invoice.
                    for name in sorted(tables, key=lambda t: t != "invoices"):
                        await conn.execute(text(f'DELETE FROM "{name}"'))
                else:
                    await conn.execute(
                        text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")
                    )
            return
        except DBAPIError as exc:
            # The app's background tasks (collector, alert engine, webhook dispatcher)
            # lock tables in another order than TRUNCATE: PostgreSQL may pick the
            # TRUNCATE as a deadlock's victim. Doing it again is safe.
            if "deadlock" not in str(exc) or attempt == 4:
                raise


async def wait_serving(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    service_id: str,
    count: int = 1,
    timeout: float = 60,  # noqa: ASYNC109 - a deadline for polling, not a cancel scope
) -> dict[str, Any]:
    """Poll a service (a container) until ``count`` of its instances pass their health
    checks, so that the ingress, the port mesh and load tests send them traffic (a
    new instance takes none before); the service's JSON."""
    deadline = time.monotonic() + timeout
    while True:
        r = await client.get(f"/api/v1/services/{service_id}", headers=headers)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()["data"]["service"]
        if data["passing"] >= count:
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} instance(s) not passing in {timeout}s: {data}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on a freshly emptied platform (no users at all)."""
    await _empty_tables(app)
    app.state.core.placer.invalidate()
    app.state.core.principals.invalidate("all")  # the rows went by TRUNCATE, not a commit
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://nefos.test") as c:
        yield c


@dataclass
class Account:
    """A registered user and the headers that authenticate as them."""

    user: dict[str, Any]
    access_token: str
    refresh_token: str
    password: str

    @property
    def id(self) -> str:
        return str(self.user["id"])

    @property
    def email(self) -> str:
        return str(self.user["email"])

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    @property
    def project_id(self) -> str:
        return str(self.user["default_project_id"])


@pytest.fixture
def register(client: httpx.AsyncClient) -> Any:
    async def _register(
        email: str | None = None, password: str = PASSWORD, **extra: Any
    ) -> Account:
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        r = await client.post(
            "/api/v1/auth/register", json={"email": email, "password": password, **extra}
        )
        assert r.status_code == 201, r.text
        data = r.json()["data"]
        return Account(data["user"], data["access_token"], data["refresh_token"], password)

    return _register


@pytest.fixture
async def admin(client: httpx.AsyncClient, app: Any) -> Account:
    """The platform admin (made the way `nefos serve` makes it), logged in."""
    from nefos.services.users import UserService

    core = app.state.core
    async with core.db.session() as session:
        await UserService(core, session).ensure_admin()
    r = await client.post(
        "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    return Account(data["user"], data["access_token"], data["refresh_token"], ADMIN_PASSWORD)


# --- a real server on a real socket, for the SDK, the CLI and benchmarks -------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    def __init__(self, settings: Settings) -> None:
        import uvicorn

        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the live Nefos server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def live_server(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """Nefos served by uvicorn on a free port, with its own database."""
    # No registry is reachable here: the live server pulls nothing, so an image the
    # host lacks passes the registry check and fails its operation (IMAGE_PULL_FAILED).
    settings = make_settings(
        databases.new_url(), tmp_path_factory.mktemp("live"), container_image_pull=False
    )
    with LiveServer(settings) as server:
        yield server


# --- compute: a real engine as a host ------------------------------------------------
TEST_IMAGE = "localhost/nefos-busybox:test"  # busybox httpd serving "nefos test page" on 8080


def docker_host_uri() -> str:
    """The Podman Engine API socket the test bootstrap started (`make services`)."""
    uri = os.environ.get("NEFOS_TEST_DOCKER_HOST")
    if not uri:
        raise RuntimeError(
            "NEFOS_TEST_DOCKER_HOST is not set: run the tests through `make test`, or "
            "`make services && source var/test-services.env`"
        )
    return uri


def remove_managed_containers(uri: str | None = None) -> list[str]:
    """Force-remove the engine containers this test session's Nefos made; their names."""
    import docker
    import docker.errors

    client = docker.DockerClient(base_url=uri or docker_host_uri(), version="1.41")
    try:
        names = []
        # The plain list (no inspect of each container): other test workers remove
        # their containers at any moment, and Podman answers an inspect of a container
        # gone meanwhile with a 500, not a 404.
        for c in client.api.containers(all=True, filters={"label": "nefos.managed=true"}):
            labels = c.get("Labels") or {}
            if not labels.get("nefos.installation", "").startswith(SESSION_INSTALLATION):
                continue  # another session's, or the contract suite's
            names.append((c.get("Names") or [c["Id"]])[0].lstrip("/"))
            try:
                client.api.remove_container(c["Id"], force=True)
            except docker.errors.NotFound:
                pass  # its own Nefos removed it meanwhile
            except docker.errors.APIError as exc:
                if "no such container" not in str(exc).lower():
                    raise
        return names
    finally:
        client.close()


async def wait_operation(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    op: dict[str, Any] | str,
    timeout: float = 60,  # noqa: ASYNC109 - a deadline for polling, not a cancel scope
) -> dict[str, Any]:
    """Poll an operation until it ends; its final JSON."""
    url = op if isinstance(op, str) else op["url"]
    deadline = time.monotonic() + timeout
    while True:
        r = await client.get(url, headers=headers)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()["data"]
        if data["status"] not in ("pending", "running"):
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"operation did not end in {timeout}s: {data}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def podman_host(client: httpx.AsyncClient, admin: Account) -> AsyncIterator[dict[str, Any]]:
    """The test Podman registered as an active docker host; engine containers Nefos
    made are force-removed afterwards."""
    r = await client.post(
        "/api/v1/resources/hosts",
        json={"hostname": "podman-test", "driver": "docker", "uri": docker_host_uri()},
        headers=admin.headers,
    )
    assert r.status_code == 201, r.text
    host: dict[str, Any] = r.json()["data"]
    assert host["status"] == "active", host
    yield host
    remove_managed_containers()


# --- compute: the real libvirt as a host ---------------------------------------------
def libvirt_test_uri() -> str:
    """The libvirtd the test bootstrap started (`make services`)."""
    uri = os.environ.get("NEFOS_TEST_LIBVIRT_URI")
    if not uri:
        raise RuntimeError(
            "NEFOS_TEST_LIBVIRT_URI is not set: run the tests through `make test`, or "
            "`make services && source var/test-services.env`"
        )
    return uri


def tiny_vm_image() -> Path:
    """The tiny bootable image of scripts/build-vm-image.sh (kernel + busybox initramfs)."""
    root = Path(__file__).resolve().parent.parent
    image = Path(os.environ.get("NEFOS_TEST_VM_IMAGE") or root / "var" / "images" / "nefos-tiny")
    if not (image / "vmlinuz").is_file():
        raise RuntimeError(f"no VM image at {image}: run `make services`")
    return image


async def remove_managed_domains(uri: str | None = None) -> list[str]:
    """Destroy the domains (with their volumes) and the networks this test session's
    Nefos made; their names."""
    from nefos.drivers.base import InstanceNotFound
    from nefos.drivers.libvirt import LibvirtDriver

    driver = LibvirtDriver(uri or libvirt_test_uri(), domain_type="qemu")
    try:
        names = []
        for info in await driver.list():
            if info.labels.get("nefos.installation", "").startswith(SESSION_INSTALLATION):
                names.append(info.name)
                with contextlib.suppress(InstanceNotFound):  # its own Nefos got there first
                    await driver.destroy(info.driver_id)
        for net in await driver.list_networks():
            if net.labels.get("nefos.installation", "").startswith(SESSION_INSTALLATION):
                names.append(net.name)
                await driver.delete_network(net.network_id)
        return names
    finally:
        await driver.close()


@pytest.fixture
async def libvirt_host(
    client: httpx.AsyncClient, admin: Account, app: Any
) -> AsyncIterator[dict[str, Any]]:
    """The test libvirtd registered as an active libvirt host; the domains and the
    pool images this test's Nefos made are removed afterwards."""
    r = await client.post(
        "/api/v1/resources/hosts",
        json={"hostname": "libvirt-test", "driver": "libvirt", "uri": libvirt_test_uri()},
        headers=admin.headers,
    )
    assert r.status_code == 201, r.text
    host: dict[str, Any] = r.json()["data"]
    assert host["status"] == "active", host
    yield host
    await remove_managed_domains()
    from sqlalchemy import select

    from nefos.db.models import Backup, Image, Volume
    from nefos.drivers.libvirt import LibvirtDriver
    from nefos.services.images import pool_image_name

    async with app.state.core.db.sessionmaker() as session:
        images = (await session.scalars(select(Image.id))).all()
        volumes = (await session.scalars(select(Volume.id))).all()
        backups = (await session.scalars(select(Backup.id))).all()
    driver = LibvirtDriver(libvirt_test_uri(), domain_type="qemu")
    try:
        for image_id in images:
            await driver.delete_image(pool_image_name(image_id))
        for volume_id in volumes:
            await driver.delete_volume(volume_id)
        for backup_id in backups:
            await driver.delete_backup(backup_id)
    finally:
        await driver.close()


def refresh_pool(pool: Any, within: float = 30) -> None:
    """``pool.refresh(0)``, waiting out "asynchronous jobs running": libvirt refuses a
    refresh while any client (another test session, say) uploads into the pool."""
    import libvirt

    deadline = time.monotonic() + within
    while True:
        try:
            pool.refresh(0)
            return
        except libvirt.libvirtError as exc:
            if "asynchronous jobs" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


async def join_org(
    client: httpx.AsyncClient,
    org_id: str,
    inviter: dict[str, str],
    who: Account,
    role: str = "member",
    base: str = "/api/v1",
) -> dict[str, Any]:
    """``who`` joins an organisation the only way there is: invited by e-mail (by the
    holder of ``inviter``'s headers), then accepting. Returns the organisation."""
    r = await client.post(
        f"{base}/organisations/{org_id}/members",
        json={"email": who.email, "role": role},
        headers=inviter,
    )
    assert r.status_code == 202, r.text
    token = r.json()["data"]["token"]
    r = await client.post(f"{base}/invitations/accept", json={"token": token}, headers=who.headers)
    assert r.status_code == 200, r.text
    return dict(r.json()["data"])


@pytest.fixture(scope="module", autouse=True)
def _collect_what_the_module_left() -> Iterator[None]:
    """Collect garbage when a test module ends, so that whatever it left unclosed (a
    connection, a coroutine never awaited) is reported as an error of that module's
    last test, rather than of whichever test the collector happens to run in later
    on the same worker."""
    yield
    gc.collect()
