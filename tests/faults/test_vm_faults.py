"""VM faults on the real libvirtd: libvirt goes away mid-operation (503 for new work,
the operation waits and finishes when it is back), a domain is stopped or removed
behind Nefos's back (the reconciler says so), and the server dies mid-create (a
restart converges, with no orphan domain).

libvirtd itself is shared with the rest of the suite, so "libvirtd goes away" is a
socket proxy in front of it that the test closes and reopens (failure injection:
Nefos talks to the real daemon through it, with the ``?socket=`` of libvirt URIs).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from sqlalchemy import delete, select, update

from nefos.db.models import Network, Operation, Vm
from nefos.services.hosts import HostService
from tests.conftest import (
    Account,
    libvirt_test_uri,
    remove_managed_domains,
    tiny_vm_image,
    wait_operation,
)
from tests.faults.conftest import V1, Lab, Nefos, eventually

LIBVIRT_SOCKET = "/run/libvirt/libvirt-sock"


class SocketProxy:
    """A unix socket forwarding every connection to libvirtd's; ``kill`` closes the
    listener and every connection (libvirtd "dies"), ``start`` listens again."""

    def __init__(self, path: Path, target: str = LIBVIRT_SOCKET) -> None:
        self.path = path
        self.target = target
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.path}"

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def kill(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.path.unlink(missing_ok=True)
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[SocketProxy]:
    p = SocketProxy(tmp_path / "libvirt.sock")
    yield p
    p.kill()


#: Images the tests registered (their pool volumes go at the end of each test).
IMAGES: list[str] = []


@pytest.fixture(autouse=True)
async def no_domains_left() -> AsyncIterator[None]:
    yield
    await remove_managed_domains()
    from nefos.drivers.libvirt import LibvirtDriver
    from nefos.services.images import pool_image_name

    driver = LibvirtDriver(libvirt_test_uri(), domain_type="qemu")
    try:
        while IMAGES:
            await driver.delete_image(pool_image_name(IMAGES.pop()))
    finally:
        await driver.close()


# --- helpers ----------------------------------------------------------------------------
async def vm_world(n: Nefos, uri: str) -> tuple[dict[str, str], Account, str, dict[str, Any]]:
    """Admin headers, a user, the tiny image's id, and a libvirt host on ``uri``."""
    admin = await n.admin()
    host = await n.add_host(admin, uri, driver="libvirt")
    assert host["status"] == "active", host
    r = await n.client.post(
        f"{V1}/images",
        json={"name": "tiny", "os_type": "busybox", "path": str(tiny_vm_image())},
        headers=admin,
    )
    assert r.status_code == 202, r.text
    IMAGES.append(r.json()["data"]["image_id"])
    op = await wait_operation(n.client, admin, r.json()["data"]["operation"], timeout=120)
    assert op["status"] == "succeeded", op
    return admin, await n.user(), r.json()["data"]["image_id"], host


async def create_vm(n: Nefos, user: Account, image_id: str, name: str) -> Any:
    return await n.client.post(
        f"{V1}/vms",
        json={"name": name, "image_id": image_id, "memory_mb": 128, "storage_gb": 1},
        headers=user.headers,
    )


async def vm(n: Nefos, user: Account, vm_id: str) -> dict[str, Any]:
    r = await n.client.get(f"{V1}/vms/{vm_id}", headers=user.headers)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


def domains_of(installation: str) -> dict[str, int]:
    """Nefos domains of one installation, by Nefos id, with their libvirt state."""
    conn = libvirt.open(libvirt_test_uri())
    try:
        out: dict[str, int] = {}
        for dom in conn.listAllDomains():
            if not dom.name().startswith("nefos-"):
                continue
            try:
                md = dom.metadata(
                    libvirt.VIR_DOMAIN_METADATA_ELEMENT, "urn:nefos:libvirt:instance:1", 0
                )
            except libvirt.libvirtError:
                continue
            if f">{installation}<" in md:
                out[dom.name().removeprefix("nefos-")] = int(dom.state()[0])
        return out
    finally:
        conn.close()


# --- the tests ---------------------------------------------------------------------------
async def test_libvirtd_going_away_is_503_for_new_vms_and_operations_wait_for_it(
    lab: Lab, proxy: SocketProxy
) -> None:
    proxy.start()
    async with lab.app(host_timeout=3.0, operation_retry_deadline=300) as n:
        admin, user, image_id, host = await vm_world(n, proxy.uri)
        r = await create_vm(n, user, image_id, "db")
        assert r.status_code == 202, r.text
        vm_id = r.json()["data"]["vm_id"]
        op = await n.wait(user, r.json()["data"]["operation"])
        assert op["status"] == "succeeded", op

        proxy.kill()
        # A new VM: 503, nothing made, the host offline.
        r = await create_vm(n, user, image_id, "db-2")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        async with n.core.db.sessionmaker() as session:
            assert (await session.scalar(select(Vm.id).where(Vm.name == "db-2"))) is None
        assert (await n.host(admin, host["id"]))["status"] == "offline"

        # An operation on the existing VM waits (pending, retried) while libvirt is away.
        r = await n.client.post(f"{V1}/vms/{vm_id}/stop", json={}, headers=user.headers)
        assert r.status_code == 202, r.text
        stop = r.json()["data"]["operation"]

        async def retried() -> bool:
            row = await n.op_row(stop["id"])
            return row.attempts >= 1 and row.status == "pending" and row.error_message is not None

        await eventually(retried, "the stop is retried while libvirt is away")

        proxy.start()
        async with n.core.db.sessionmaker() as session:
            assert await HostService(n.core, session).check_all() == [host["id"]]
        n.core.workers.notify()
        async with n.core.db.sessionmaker() as session:
            # Back-off over: the next look runs it (as the next retry would).
            await session.execute(
                update(Operation).where(Operation.id == stop["id"]).values(run_after=None)
            )
            await session.commit()
        n.core.workers.notify()
        final = await n.wait(user, stop)
        assert final["status"] == "succeeded", final
        assert (await vm(n, user, vm_id))["status"] == "stopped"
        r = await n.client.delete(f"{V1}/vms/{vm_id}", headers=user.headers)
        assert (await n.wait(user, r.json()["data"]["operation"]))["status"] == "succeeded"
        assert domains_of(n.core.settings.installation_id) == {}


async def test_a_domain_stopped_or_removed_behind_nefos_back(lab: Lab) -> None:
    async with lab.app() as n:
        _, user, image_id, _ = await vm_world(n, libvirt_test_uri())
        r = await create_vm(n, user, image_id, "web")
        vm_id = r.json()["data"]["vm_id"]
        assert (await n.wait(user, r.json()["data"]["operation"]))["status"] == "succeeded"

        conn = libvirt.open(libvirt_test_uri())
        try:
            dom = conn.lookupByName(f"nefos-{vm_id}")
            dom.destroy()  # pulled the plug
            await n.app.state.reconciler.run_once()
            shown = await vm(n, user, vm_id)
            assert shown["status"] == "stopped", shown
            assert shown["status_reason"] == "stopped outside Nefos"

            dom.undefine()  # and removed it
            report = await n.app.state.reconciler.run_once()
            assert report.replicas_changed.get(vm_id) == "error", report
            shown = await vm(n, user, vm_id)
            assert shown["status"] == "error", shown
            assert "removed outside Nefos" in shown["status_reason"]
        finally:
            conn.close()
        # Deleting it still works (the domain is gone already) and cleans up.
        r = await n.client.delete(f"{V1}/vms/{vm_id}", headers=user.headers)
        assert (await n.wait(user, r.json()["data"]["operation"]))["status"] == "succeeded"


async def test_an_orphan_domain_and_its_network_are_removed(lab: Lab) -> None:
    async with lab.app() as n:
        _, user, image_id, _ = await vm_world(n, libvirt_test_uri())
        r = await n.client.post(f"{V1}/networks", json={"name": "net"}, headers=user.headers)
        network_id = r.json()["data"]["id"]
        r = await n.client.post(
            f"{V1}/vms",
            json={"name": "lost", "image_id": image_id, "memory_mb": 128, "network_id": network_id},
            headers=user.headers,
        )
        vm_id = r.json()["data"]["vm_id"]
        assert (await n.wait(user, r.json()["data"]["operation"]))["status"] == "succeeded"
        installation = n.core.settings.installation_id
        assert vm_id in domains_of(installation)
        # Nefos forgets the VM and the network (their rows go), libvirt keeps them.
        async with n.core.db.sessionmaker() as session:
            await session.execute(delete(Vm).where(Vm.id == vm_id))
            await session.execute(delete(Network).where(Network.id == network_id))
            await session.commit()
        report = await n.app.state.reconciler.run_once()
        assert report.orphans_removed == [vm_id, f"nefos-net-{network_id}"], report
        assert domains_of(installation) == {}
        conn = libvirt.open(libvirt_test_uri())
        try:
            assert f"nefos-net-{network_id}" not in [x.name() for x in conn.listAllNetworks()]
        finally:
            conn.close()


async def test_server_killed_mid_create_converges_with_no_orphans(lab: Lab) -> None:
    url = await lab.new_url()
    async with lab.app(url, workers=1, operation_lease=2) as first:
        admin, user, image_id, host = await vm_world(first, libvirt_test_uri())
        driver = first.core.drivers.for_host(await first.host_row(host["id"]))
        made = asyncio.Event()
        original = driver.create

        async def create_then_hang(spec: Any) -> Any:
            await original(spec)
            made.set()
            await asyncio.Event().wait()  # the process "dies" here

        driver.create = create_then_hang
        r = await create_vm(first, user, image_id, "web")
        assert r.status_code == 202, r.text
        accepted = r.json()["data"]
        await asyncio.wait_for(made.wait(), 60)
        installation = first.core.settings.installation_id
        # The domain exists, defined but not started; the row still says creating.
        assert domains_of(installation) == {accepted["vm_id"]: libvirt.VIR_DOMAIN_SHUTOFF}
        assert (await vm(first, user, accepted["vm_id"]))["status"] == "creating"
    # Leaving the lifespan cancels the worker mid-handler: the operation stays
    # `running`, its heartbeat stops, as after a kill.

    async with lab.app(url, workers=1, operation_lease=2) as second:

        async def requeued() -> bool:
            await second.app.state.reconciler.run_once()
            row = await second.op_row(accepted["operation"]["id"])
            return row.status != "running" or row.attempts > 1

        await eventually(requeued, "the interrupted create is run again")
        final = await second.wait(user, accepted["operation"])
        assert final["status"] == "succeeded", final
        shown = await vm(second, user, accepted["vm_id"])
        assert shown["status"] == "running", shown
        report = await second.app.state.reconciler.run_once()
        assert report.orphans_removed == []
        assert domains_of(installation) == {accepted["vm_id"]: libvirt.VIR_DOMAIN_RUNNING}
        r = await second.client.delete(f"{V1}/vms/{accepted['vm_id']}", headers=user.headers)
        assert (await second.wait(user, r.json()["data"]["operation"]))["status"] == "succeeded"
        assert domains_of(installation) == {}
