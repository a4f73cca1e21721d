"""SDK fixtures: real servers on real sockets, and a transport that records calls.

The libvirt section is shared with the CLI tests: the test libvirtd registered as
a host of the live server (only if it is not there yet) and removed again at the
end of each module that used it, with whatever domains, volumes, backups and pool
images are left; the tiny image (scripts/build-vm-image.sh), whose init prints
markers on the serial console.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from nefos.schemas.compute import HostPublic, OperationPublic, OperationRef
from nefos.schemas.vms import ImagePublic
from nefos.sdk import Client, ConflictError
from tests.conftest import (
    ADMIN_PASSWORD,
    PASSWORD,
    DatabaseFactory,
    LiveServer,
    libvirt_test_uri,
    make_settings,
    remove_managed_domains,
    tiny_vm_image,
)

SHORT_TTL = 60  # the shortest access-token lifetime Settings allows


class Recorder(httpx.HTTPTransport):
    """A real HTTP transport that notes (method, path under /api/v1, status) of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        path = request.url.path.removeprefix("/api/v1")
        self.calls.append((request.method, path, response.status_code))
        return response

    def paths(self) -> list[str]:
        return [f"{m} {p} {s}" for m, p, s in self.calls]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="session")
def short_ttl_server(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A live server whose access tokens live one minute."""
    settings = make_settings(
        databases.new_url(), tmp_path_factory.mktemp("short"), access_token_ttl=SHORT_TTL
    )
    with LiveServer(settings) as server:
        yield server


def unique_email(prefix: str = "sdk") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


@pytest.fixture
def new_user(live_server: LiveServer) -> Iterator[Any]:
    """Register a fresh user; returns a logged-in Client (closed at teardown)."""
    clients: list[Client] = []

    def _new_user(url: str | None = None, **kwargs: Any) -> Client:
        email = kwargs.pop("email", None) or unique_email()
        client = Client(url or live_server.url, **kwargs)
        clients.append(client)
        client.auth.register(email=email, password=PASSWORD)
        return client

    yield _new_user
    for c in clients:
        c.close()


@pytest.fixture
def admin_client(live_server: LiveServer) -> Iterator[Client]:
    with Client(live_server.url, username="admin", password=ADMIN_PASSWORD) as client:
        yield client


# --- libvirt and the tiny image (the CLI tests use them too) ---------------------------
LIBVIRT_HOSTNAME = "libvirt-live"
WAIT = {"timeout": 240, "poll": 0.3}
BOOT_SECONDS = 180
USER_DATA = "#!/bin/sh\necho nefos-user-data-ran\n"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForNefosTests test@nefos"

#: Images, volumes and backups the tests made: what of them is left in libvirt goes
#: at a module's teardown, should a failed test leave it behind.
IMAGES: set[str] = set()
VOLUMES: set[str] = set()
BACKUPS: set[str] = set()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def tiny_checksum() -> str:
    """sha256 of the tiny image's kernel then initrd, as the API checks it."""
    digest = hashlib.sha256()
    for name in ("vmlinuz", "initrd.img"):
        digest.update((tiny_vm_image() / name).read_bytes())
    return digest.hexdigest()


def ensure_libvirt_host(admin: Client) -> HostPublic:
    """The test libvirtd as a libvirt host of this server, registered unless it is."""
    for host in admin.hosts.list(limit=500).items:
        if host.hostname == LIBVIRT_HOSTNAME:
            return host
    try:
        host = admin.hosts.register(
            hostname=LIBVIRT_HOSTNAME, driver="libvirt", uri=libvirt_test_uri()
        )
    except ConflictError:  # registered meanwhile
        host = next(h for h in admin.hosts.list(limit=500).items if h.hostname == LIBVIRT_HOSTNAME)
    assert host.status == "active", host
    return host


def unregister_libvirt_host(server: LiveServer) -> None:
    """Remove what this session's Nefos made in libvirt (domains with their disks and
    networks, the tracked volumes, backups and images' pool volumes) and the host
    from ``server``."""
    from nefos.drivers.libvirt import LibvirtDriver
    from nefos.services.images import pool_image_name

    async def clean() -> None:
        await remove_managed_domains()
        driver = LibvirtDriver(libvirt_test_uri(), domain_type="qemu")
        try:
            for volume_id in VOLUMES:
                await driver.delete_volume(volume_id)
            for backup_id in BACKUPS:
                await driver.delete_backup(backup_id)
            for image_id in IMAGES:
                await driver.delete_image(pool_image_name(image_id))
        finally:
            await driver.close()

    asyncio.run(clean())
    with Client(server.url, username="admin", password=ADMIN_PASSWORD) as admin:
        for host in admin.hosts.list(limit=500).items:
            if host.hostname == LIBVIRT_HOSTNAME:
                try:
                    admin.hosts.delete(host.id)
                except ConflictError:
                    pass  # a failed test left VMs behind


def track(image_id: str, kind: set[str] = IMAGES) -> str:
    """Note an image (or, with ``kind=VOLUMES`` or ``BACKUPS``, a volume or a backup)
    to remove from libvirt at teardown; its id."""
    kind.add(image_id)
    return image_id


def register_tiny(admin: Client, name: str | None = None) -> ImagePublic:
    """The tiny image, registered by the platform admin from its folder, imported."""
    accepted = admin.images.register(
        name or unique("tiny"),
        path=str(tiny_vm_image()),
        os_type="busybox",
        os_version="1",
        checksum=f"sha256:{tiny_checksum()}",
    )
    track(accepted.image_id)
    admin.operations.wait(accepted, **WAIT)
    return admin.images.get(accepted.image_id)


def delete_image(c: Client, image_id: str) -> OperationPublic:
    """Delete a VM image through ``c`` and wait until it is gone; the operation."""
    ref = c.images.delete(image_id)
    assert isinstance(ref, OperationRef)
    return c.operations.wait(ref, **WAIT)


def console_until(c: Client, vm_id: str, needle: str, count: int = 1) -> str:
    """The serial console once ``needle`` is on it ``count`` times."""
    deadline = time.monotonic() + BOOT_SECONDS
    while True:
        text = c.vms.console(vm_id, tail=2000)
        if text.count(needle) >= count:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} x{count} not on the console:\n{text}")
        time.sleep(0.5)


def between(text: str, begin: str, end: str) -> str:
    lines = text.splitlines()
    start = len(lines) - 1 - lines[::-1].index(begin)
    return "\n".join(lines[start + 1 : lines.index(end, start)])


@pytest.fixture(scope="module")
def libvirt_teardown(live_server: LiveServer) -> Iterator[None]:
    yield
    unregister_libvirt_host(live_server)


@pytest.fixture
def libvirt(live_server: LiveServer, libvirt_teardown: None) -> HostPublic:
    """The libvirt host of the live server (registered unless it is already)."""
    with Client(live_server.url, username="admin", password=ADMIN_PASSWORD) as admin:
        return ensure_libvirt_host(admin)
