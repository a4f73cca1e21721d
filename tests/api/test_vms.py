"""Virtual machines and images, end to end on the real libvirtd + QEMU.

Every VM here boots the tiny image (Debian's kernel and a busybox initramfs, made by
scripts/build-vm-image.sh) under QEMU; its init prints markers on the serial
console, which the tests read through ``GET /vms/{id}/console``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import subprocess
import time
from typing import Any

import httpx
import libvirt
import pytest
from sqlalchemy import select

from nefos.db.models import UsageRecord
from tests.api.test_containers import Api, assert_error
from tests.conftest import Account, libvirt_test_uri, refresh_pool, tiny_vm_image

V1 = "/api/v1"
BOOT_SECONDS = 120
USER_DATA = "#!/bin/sh\necho nefos-user-data-ran\n"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForNefosTests test@nefos"


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True)


def tiny_checksum() -> str:
    folder = tiny_vm_image()
    digest = hashlib.sha256()
    for name in ("vmlinuz", "initrd.img"):
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


async def register_tiny(api: Api, **extra: Any) -> dict[str, Any]:
    """The tiny image, registered from its folder by a platform admin, imported."""
    body = {
        "name": "tiny",
        "os_type": "busybox",
        "os_version": "1",
        "path": str(tiny_vm_image()),
        "checksum": f"sha256:{tiny_checksum()}",
        **extra,
    }
    data = await api.call("POST", "/images", 202, json=body)
    op = await api.wait(data["operation"])
    assert op["status"] == "succeeded", op
    image: dict[str, Any] = await api.call("GET", f"/images/{data['image_id']}")
    return image


async def console_until(api: Api, vm_id: str, needle: str, count: int = 1) -> str:
    deadline = time.monotonic() + BOOT_SECONDS
    while True:
        data = await api.call("GET", f"/vms/{vm_id}/console?tail=2000")
        text: str = data["console"]
        if text.count(needle) >= count:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} x{count} not on the console:\n{text}")
        await asyncio.sleep(0.3)


def between(text: str, begin: str, end: str) -> str:
    lines = text.splitlines()
    start = len(lines) - 1 - lines[::-1].index(begin)
    stop = lines.index(end, start)
    return "\n".join(lines[start + 1 : stop])


def nefos_leftovers(vm_ids: list[str]) -> dict[str, list[str]]:
    """What libvirt still has of these VMs: domains and pool volumes by name."""
    conn = libvirt.open(libvirt_test_uri())
    try:
        domains = [d.name() for d in conn.listAllDomains() if d.name()[6:] in vm_ids]
        pool = conn.storagePoolLookupByName("default")
        refresh_pool(pool)
        volumes = [v for v in pool.listVolumes() if any(i in v for i in vm_ids)]
        return {"domains": domains, "volumes": volumes}
    finally:
        conn.close()


def domain_xml(vm_id: str) -> str:
    conn = libvirt.open(libvirt_test_uri())
    try:
        return str(conn.lookupByName(f"nefos-{vm_id}").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    finally:
        conn.close()


def is_subsequence(wanted: list[str], got: list[str]) -> bool:
    it = iter(got)
    return all(any(x == w for x in it) for w in wanted)


async def test_vm_lifecycle_end_to_end(
    client: httpx.AsyncClient,
    app: Any,
    admin: Account,
    register: Any,
    libvirt_host: dict[str, Any],
) -> None:
    # Every status change is told on the event bus (what /ws clients receive).
    told = app.state.core.events.subscribe(lambda e: e.type == "vm_status_changed")
    admin_api = Api(client, admin)
    image = await register_tiny(admin_api)
    assert image["status"] == "active" and image["public"] is True
    assert image["format"] == "kernel" and image["checksum"] == tiny_checksum()
    assert image["kernel_cmdline"] == "console=ttyS0 quiet panic=-1"

    user = await register()
    api = Api(client, user)
    # Seed 003's body, matched to the image by os_type/os_version, plus cloud-init.
    body = {
        "name": "vm-001",
        "os_type": "busybox",
        "os_version": "1",
        "cpu_cores": 1,
        "memory_gb": 0.125,
        "storage_gb": 1,
        "user_data": USER_DATA,
        "ssh_keys": [KEY],
    }
    r = await client.post("/api/v1/vms", json=body, headers=user.headers)
    assert r.status_code == 202, r.text
    data = r.json()["data"]
    vm = data["vm"]
    assert vm["status"] == "creating" and vm["image_id"] == image["id"]
    assert vm["memory_mb"] == 128 and vm["host_id"] == libvirt_host["id"]
    assert vm["has_user_data"] is True and vm["ssh_keys"] == [KEY]
    assert r.headers["location"] == data["operation"]["url"]
    op = await api.wait(data["operation"])
    assert op["status"] == "succeeded", op
    assert op["kind"] == "vm.create" and op["resource_type"] == "vm"
    vm_id = vm["id"]
    got = await api.call("GET", f"/vms/{vm_id}")
    assert got["status"] == "running", got

    # The guest booted and read its seed: user data byte for byte, the key.
    console = await console_until(api, vm_id, "NEFOS-READY")
    assert between(console, "NEFOS-USER-DATA-BEGIN", "NEFOS-USER-DATA-END") == USER_DATA.rstrip()
    assert KEY in between(console, "NEFOS-SSH-KEYS-BEGIN", "NEFOS-SSH-KEYS-END")
    await console_until(api, vm_id, "nefos-user-data-ran")

    # The host counts it; the quota usage too.
    host = await admin_api.call("GET", f"/resources/hosts/{libvirt_host['id']}")
    assert host["used"]["instances"] == 1 and host["used"]["cpu_cores"] == 1
    quotas = await api.call("GET", f"/projects/{user.project_id}/quotas")
    assert quotas["usage"]["instances"] == 1 and quotas["usage"]["storage_gb"] == 1

    # Resizing a running VM is refused, saying why; a shrinking disk always.
    refusal = assert_error(
        await client.put(f"{V1}/vms/{vm_id}", json={"cpu_cores": 2}, headers=user.headers),
        409,
        "CONFLICT",
    )["error"]
    assert refusal["details"] == {"status": "running"}, refusal
    assert refusal["message"] == "Stop the VM before resizing it (it is running)"
    assert_error(
        await client.put(f"{V1}/vms/{vm_id}", json={"storage_gb": 0}, headers=user.headers),
        422,
        "VALIDATION_ERROR",
    )

    # Graceful stop: the guest's own poweroff ran.
    await api.act("POST", f"/vms/{vm_id}/stop", {"timeout": 60})
    assert (await api.call("GET", f"/vms/{vm_id}"))["status"] == "stopped"
    console = await console_until(api, vm_id, "NEFOS-POWEROFF")

    # Resize while stopped: the domain has the new sizes, the root disk grew.
    resized = await api.act(
        "PUT", f"/vms/{vm_id}", {"cpu_cores": 2, "memory_mb": 192, "storage_gb": 2}
    )
    assert resized["vm"]["status"] == "resizing"
    got = await api.call("GET", f"/vms/{vm_id}")
    assert (got["status"], got["cpu_cores"], got["memory_mb"], got["storage_gb"]) == (
        "stopped",
        2,
        192,
        2,
    )
    xml = domain_xml(vm_id)
    assert ">2</vcpu>" in xml and "196608" in xml  # 192 MiB in KiB
    host = await admin_api.call("GET", f"/resources/hosts/{libvirt_host['id']}")
    assert host["used"]["cpu_cores"] == 2

    # Start again: it boots a second time; reboot asks the guest.
    await api.act("POST", f"/vms/{vm_id}/start")
    await console_until(api, vm_id, "NEFOS-READY", count=2)
    await api.act("POST", f"/vms/{vm_id}/reboot")
    await console_until(api, vm_id, "NEFOS-READY", count=3)

    # Seed 001's alias lists it; the list filters by status.
    listed = await api.call("GET", "/compute/instances/")
    assert [v["id"] for v in listed["items"]] == [vm_id]
    assert (await api.call("GET", "/vms?status_filter=stopped"))["items"] == []
    await api.call("GET", "/vms", 422, params={"status": "bogus"})
    assert (await api.call("GET", "/vms?skip=0&limit=10"))["pagination"]["total"] == 1

    # The image is in use: it stays.
    assert_error(
        await client.delete(f"{V1}/images/{image['id']}", headers=admin.headers),
        409,
        "CONFLICT",
    )

    await api.act("DELETE", f"/vms/{vm_id}")
    await api.call("GET", f"/vms/{vm_id}", 404)
    assert nefos_leftovers([vm_id]) == {"domains": [], "volumes": []}
    host = await admin_api.call("GET", f"/resources/hosts/{libvirt_host['id']}")
    assert host["used"]["instances"] == 0 and host["used"]["cpu_cores"] == 0

    # The events told the whole life, in order, each naming the VM's project.
    await asyncio.sleep(0.5)  # the bus's pump hands on what the last commit published
    events = []
    while (event := told.get_nowait()) is not None:
        events.append(event)
    told.close()
    mine = [e for e in events if e.data["vm_id"] == vm_id]
    assert all(e.project_id == user.project_id and e.organisation_id for e in mine)
    statuses = [e.data["status"] for e in mine]
    lifecycle = ["creating", "running", "stopping", "stopped", "resizing", "stopped"]
    lifecycle += ["starting", "running", "rebooting", "running", "deleting", "deleted"]
    assert is_subsequence(lifecycle, statuses), statuses

    # Metered from the same lifecycle: spans back to back from creation to deletion,
    # compute billed while running (1 vCPU, then 2 after the resize), storage always.
    async with app.state.core.db.sessionmaker() as session:
        spans = (
            await session.scalars(
                select(UsageRecord)
                .where(UsageRecord.resource_id == vm_id)
                .order_by(UsageRecord.started_at)
            )
        ).all()
    assert spans and all(a.ended_at == b.started_at for a, b in itertools.pairwise(spans))
    running = [(r.cpu_milli, r.memory_mb) for r in spans if r.state == "running"]
    assert (1000, 128) in running and (2000, 192) in running
    assert {r.storage_gb for r in spans} <= {1, 2} and spans[-1].storage_gb == 2

    # Now the image goes, from the pool too.
    data = await admin_api.act("DELETE", f"/images/{image['id']}")
    await admin_api.call("GET", f"/images/{image['id']}", 404)
    conn = libvirt.open(libvirt_test_uri())
    try:
        pool = conn.storagePoolLookupByName("default")
        refresh_pool(pool)
        assert not [v for v in pool.listVolumes() if image["id"] in v]
    finally:
        conn.close()


async def test_vm_requests_that_cannot_be_met_make_nothing(
    client: httpx.AsyncClient, admin: Account, register: Any, libvirt_host: dict[str, Any]
) -> None:
    user = await register()
    api = Api(client, user)

    async def refused(body: dict[str, Any], status: int, code: str) -> dict[str, Any]:
        return assert_error(
            await client.post(f"{V1}/vms", json=body, headers=user.headers), status, code
        )

    # No image for seed 003's example OS: a clear 422, nothing made.
    seed = {
        "name": "vm-001",
        "os_type": "ubuntu",
        "os_version": "22.04",
        "cpu_cores": 2,
        "memory_gb": 4,
        "storage_gb": 20,
    }
    body = await refused(seed, 422, "VALIDATION_ERROR")
    assert "ubuntu 22.04" in body["error"]["message"]
    image = await register_tiny(Api(client, admin))
    tiny = {**seed, "os_type": "busybox", "os_version": "1", "memory_gb": 0.125}
    # Bigger than the host: RESOURCE_EXHAUSTED; over the quota: the same, named.
    await refused({**tiny, "cpu_cores": 256}, 409, "RESOURCE_EXHAUSTED")
    await api.call("PUT", f"/projects/{user.project_id}/quotas", json={"instances": 0})
    body = await refused(tiny, 409, "RESOURCE_EXHAUSTED")
    assert body["error"]["details"]["quota"] == "instances"
    await api.call("PUT", f"/projects/{user.project_id}/quotas", json={"instances": 5})
    # Too little memory for the image: refused before anything is made, naming the
    # image as the user knows it and the least it needs (never raised silently).
    floor = image["min_memory_mb"]
    assert isinstance(floor, int) and floor > 64
    body = await refused({**tiny, "memory_gb": 0.001}, 422, "VALIDATION_ERROR")
    need = body["error"]["details"]["memory_gb"]
    assert need.startswith("Image 'busybox 1' needs at least 0.") and need.endswith(" GB of memory")
    assert float(need.split()[-4]) * 1024 >= floor
    assert "nefos-img" not in body["error"]["message"]
    body = await refused({**tiny, "memory_gb": None, "memory_mb": 64}, 422, "VALIDATION_ERROR")
    assert body["error"]["details"]["memory_mb"] == (
        f"Image 'busybox 1' needs at least {floor} MiB of memory"
    )
    # Bad input.
    await refused({**tiny, "ssh_keys": ["not a key"]}, 422, "VALIDATION_ERROR")
    await refused({**tiny, "image_id": "nope"}, 422, "VALIDATION_ERROR")
    await refused({"name": "x"}, 422, "VALIDATION_ERROR")
    assert (await api.call("GET", "/vms"))["items"] == []

    # A user cannot register an image from a server path; another tenant's VM is 404.
    assert_error(
        await client.post(
            f"{V1}/images",
            json={"name": "mine", "path": str(tiny_vm_image())},
            headers=user.headers,
        ),
        403,
        "FORBIDDEN",
    )
    data = await api.call("POST", "/vms", 202, json={**tiny, "image_id": image["id"]})
    other = Api(client, await register())
    await other.call("GET", f"/vms/{data['vm_id']}", 404)
    await other.call("POST", f"/vms/{data['vm_id']}/stop", 404)
    await api.wait(data["operation"])
    # A resize below the image's floor is refused the same way.
    body = assert_error(
        await client.put(
            f"{V1}/vms/{data['vm_id']}", json={"memory_gb": 0.001}, headers=user.headers
        ),
        422,
        "VALIDATION_ERROR",
    )
    assert body["error"]["details"]["memory_gb"].startswith("Image 'busybox 1' needs at least")
    await api.act("DELETE", f"/vms/{data['vm_id']}")


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
async def test_disk_images_upload_and_checksum(
    client: httpx.AsyncClient, register: Any, libvirt_host: dict[str, Any], tmp_path: Any, fmt: str
) -> None:
    """A project uploads a disk image; a wrong checksum fails the import and leaves
    no image behind; a qcow2 with a backing file is refused."""
    user = await register()
    api = Api(client, user)
    if fmt == "raw":
        content = b"\0" * (1024 * 1024)
    else:
        disk = tmp_path / "disk.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", str(disk), "1G")
        content = disk.read_bytes()
    good = hashlib.sha256(content).hexdigest()

    async def upload(checksum: str) -> dict[str, Any]:
        r = await client.post(
            f"{V1}/images/upload",
            data={"name": f"disk-{fmt}", "os_type": "blank", "checksum": checksum},
            files={"disk": (f"disk.{fmt}", content)},
            headers=user.headers,
        )
        assert r.status_code == 202, r.text
        data: dict[str, Any] = r.json()["data"]
        return data

    data = await upload("0" * 64)
    op = await api.wait(data["operation"])
    assert op["status"] == "failed" and op["error"]["code"] == "VALIDATION_ERROR", op
    assert "Checksum mismatch" in op["error"]["message"]
    got = await api.call("GET", f"/images/{data['image_id']}")
    assert got["status"] == "error"
    await api.call("DELETE", f"/images/{data['image_id']}", 202)

    data = await upload(good)
    op = await api.wait(data["operation"])
    assert op["status"] == "succeeded", op
    got = await api.call("GET", f"/images/{data['image_id']}")
    assert (got["status"], got["format"], got["checksum"]) == ("active", fmt, good)
    assert got["public"] is False and got["project_id"] == user.project_id
    assert got["min_disk_gb"] == 1

    if fmt == "qcow2":
        overlay = tmp_path / "overlay.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(disk), str(overlay))
        backed = overlay.read_bytes()
        r = await client.post(
            f"{V1}/images/upload",
            data={"name": "backed"},
            files={"disk": ("b.qcow2", backed)},
            headers=user.headers,
        )
        op = await api.wait(r.json()["data"]["operation"])
        assert op["status"] == "failed" and "backing file" in op["error"]["message"], op


#: Each boot reads a counter from the first bytes of the root disk, adds one, writes it
#: back and prints it: the console then shows what state the disk was in.
COUNTER = (
    "#!/bin/sh\n"
    "n=$(head -c 8 /dev/vda | tr -dc 0-9)\n"
    "n=$(( ${n:-0} + 1 ))\n"
    "printf 'GEN%05d' $n | dd of=/dev/vda conv=notrunc 2>/dev/null\n"
    "sync\n"
    "echo DISK-GEN:$n\n"
)


def libvirt_names(ids: list[str]) -> list[str]:
    """Every domain, volume (instance and backup pools) and network naming one of ids."""
    conn = libvirt.open(libvirt_test_uri())
    try:
        names = [d.name() for d in conn.listAllDomains()]
        for pool in conn.listAllStoragePools():
            if pool.isActive():
                refresh_pool(pool)
                names += pool.listVolumes()
        names += [n.name() for n in conn.listAllNetworks()]
        return sorted(n for n in names if any(i in n for i in ids))
    finally:
        conn.close()


async def test_snapshots_backups_volumes_and_networks_end_to_end(
    client: httpx.AsyncClient, admin: Account, register: Any, libvirt_host: dict[str, Any]
) -> None:
    image = await register_tiny(Api(client, admin))
    user = await register()
    api = Api(client, user)
    network = await api.call(
        "POST", "/networks", 201, json={"name": "backend", "cidr": "10.77.0.0/24"}
    )
    assert network["cidr"] == "10.77.0.0/24" and network["status"] == "active"
    body = {
        "name": "db-1",
        "image_id": image["id"],
        "memory_mb": 128,
        "storage_gb": 1,
        "user_data": COUNTER,
        "network_id": network["id"],
    }
    data = await api.act("POST", "/vms", body)
    vm_id = data["vm_id"]
    await console_until(api, vm_id, "DISK-GEN:1")
    assert f"nefos-net-{network['id']}" in domain_xml(vm_id)
    assert_error(
        await client.delete(f"{V1}/networks/{network['id']}", headers=user.headers),
        409,
        "CONFLICT",
    )

    # Snapshots and backups need the VM stopped.
    assert_error(
        await client.post(f"{V1}/vms/{vm_id}/snapshots", json={}, headers=user.headers),
        409,
        "CONFLICT",
    )
    await api.act("POST", f"/vms/{vm_id}/stop", {"timeout": 30})
    snap = (await api.act("POST", f"/vms/{vm_id}/snapshots", {"name": "gen-1"}))["snapshot"]
    got = await api.call("GET", f"/snapshots/{snap['id']}")
    assert (got["status"], got["name"], got["vm_id"]) == ("available", "gen-1", vm_id)
    assert [s["id"] for s in (await api.call("GET", f"/vms/{vm_id}/snapshots"))["items"]] == [
        snap["id"]
    ]

    # A volume made for the VM is attached to it; it grows, and stays while attached.
    vol = (await api.act("POST", "/volumes", {"name": "data", "size_gb": 1, "vm_id": vm_id}))[
        "volume"
    ]
    got = await api.call("GET", f"/volumes/{vol['id']}")
    assert (got["status"], got["vm_id"]) == ("in-use", vm_id)
    assert got["device"].startswith("vd") and got["device"] != "vda"  # vda: the root disk
    assert f"nefos-vol-{vol['id']}" in domain_xml(vm_id)
    await api.act("POST", f"/volumes/{vol['id']}/resize", {"size_gb": 2})
    assert (await api.call("GET", f"/volumes/{vol['id']}"))["size_gb"] == 2
    assert_error(
        await client.delete(f"{V1}/volumes/{vol['id']}", headers=user.headers), 409, "CONFLICT"
    )
    quotas = await api.call("GET", f"/projects/{user.project_id}/quotas")
    assert quotas["usage"]["storage_gb"] == 3  # the root disk and the volume

    # Boot 2 moves the disk on; reverting to the snapshot brings it back.
    await api.act("POST", f"/vms/{vm_id}/start")
    await console_until(api, vm_id, "DISK-GEN:2")
    await api.act("POST", f"/vms/{vm_id}/stop", {"timeout": 30})
    await api.act("POST", f"/snapshots/{snap['id']}/restore")
    await api.act("POST", f"/vms/{vm_id}/start")
    await console_until(api, vm_id, "DISK-GEN:2", count=2)
    await api.act("POST", f"/vms/{vm_id}/stop", {"timeout": 30})

    # A backup, restored into a second VM: its disk is the first VM's of then.
    backup = (await api.act("POST", "/backups", {"vm_id": vm_id, "name": "nightly"}))["backup"]
    got = await api.call("GET", f"/backups/{backup['id']}")
    assert got["status"] == "available" and got["size_bytes"] > 0
    listed = await api.call("GET", "/compute/backups/")
    assert [b["id"] for b in listed["items"]] == [backup["id"]]
    restored = await api.act(
        "POST", f"/backups/{backup['id']}/restore", {"name": "db-2", "user_data": COUNTER}
    )
    restored_id = restored["vm_id"]
    assert (await api.call("GET", f"/vms/{restored_id}"))["status"] == "running"
    await console_until(api, restored_id, "DISK-GEN:3")

    # Clean up through the API: nothing of any of it is left in libvirt.
    await api.act("POST", f"/volumes/{vol['id']}/detach")
    assert (await api.call("GET", f"/volumes/{vol['id']}"))["status"] == "available"
    await api.act("DELETE", f"/volumes/{vol['id']}")
    await api.act("DELETE", f"/snapshots/{snap['id']}")
    for vm in (vm_id, restored_id):
        await api.act("DELETE", f"/vms/{vm}")
    await api.act("DELETE", f"/backups/{backup['id']}")
    await api.act("DELETE", f"/networks/{network['id']}")
    await api.call("GET", f"/networks/{network['id']}", 404)
    ids = [vm_id, restored_id, vol["id"], backup["id"], network["id"], snap["id"]]
    assert libvirt_names(ids) == []
