"""The SDK's VMs and images against a live server and the real libvirtd + QEMU.

The guests boot the tiny image (scripts/build-vm-image.sh): its init prints markers
on the serial console, read here through ``client.vms.console``. The test libvirtd
is registered on the shared live server only if it is not there yet, and removed
again at the end of the module, with whatever domains and pool images are left.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path

import pytest

from nefos.schemas.vms import ImageAccepted, ImagePublic, VmAccepted, VmPublic
from nefos.sdk import (
    ConflictError,
    NotFoundError,
    OperationFailedError,
    Page,
    PermissionDeniedError,
    Terminal,
    ValidationError,
)
from tests.conftest import tiny_vm_image
from tests.sdk.conftest import (
    KEY,
    USER_DATA,
    WAIT,
    between,
    console_until,
    delete_image,
    register_tiny,
    tiny_checksum,
    track,
    unique,
)


def read_until(term: Terminal, needle: bytes, seconds: float = 60) -> bytes:
    """What the terminal showed, once ``needle`` is in it."""
    seen = b""
    deadline = time.monotonic() + seconds
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} within {seconds} s: {seen!r}"
        chunk = term.recv(timeout=left)
        assert chunk is not None, f"the terminal ended before {needle!r}: {seen!r}"
        seen += chunk
    return seen


# --- a VM's whole life -----------------------------------------------------------------
@pytest.mark.timeout(900)
def test_vm_lifecycle_on_libvirt(admin_client, new_user, libvirt):
    image = register_tiny(admin_client)
    assert isinstance(image, ImagePublic)
    assert (image.status, image.format, image.public) == ("active", "kernel", True)
    assert image.checksum == tiny_checksum()

    c = new_user()
    assert image.id in [i.id for i in c.images.list(kind="vm", os_type="busybox").items]
    name = unique("vm")
    accepted = c.vms.create(
        name,
        image_id=image.id,
        memory_mb=128,
        storage_gb=1,
        user_data=USER_DATA,
        ssh_keys=[KEY],
        idempotency_key=uuid.uuid4().hex,
    )
    assert isinstance(accepted, VmAccepted)
    assert accepted.vm.status == "creating" and accepted.vm.name == name
    assert (accepted.vm.memory_mb, accepted.vm.host_id) == (128, libvirt.id)
    assert accepted.vm.has_user_data and accepted.vm.ssh_keys == [KEY]
    vm_id = accepted.vm_id
    op = c.operations.wait(accepted, **WAIT)
    assert (op.kind, op.resource_id, op.status) == ("vm.create", vm_id, "succeeded")
    vm = c.vms.get(vm_id)
    assert isinstance(vm, VmPublic) and vm.status == "running"

    # The guest booted and read its seed: the user data byte for byte, the key.
    console = console_until(c, vm_id, "NEFOS-READY")
    assert between(console, "NEFOS-USER-DATA-BEGIN", "NEFOS-USER-DATA-END") == USER_DATA.rstrip()
    assert KEY in between(console, "NEFOS-SSH-KEYS-BEGIN", "NEFOS-SSH-KEYS-END")
    assert len(c.vms.console(vm_id, tail=3).splitlines()) <= 3

    # The serial console, interactive: typed into the guest's shell, answered there.
    with c.vms.attach_console(vm_id) as first:
        assert first.info == {"vm_id": vm_id, "forced": False}
        first.send("echo sdk-$((6*7))\n")
        assert b"sdk-42" in read_until(first, b"sdk-42")
        with pytest.raises(ConflictError) as busy:  # one console at a time
            c.vms.attach_console(vm_id).__enter__()
        assert busy.value.details == {"console": "busy"}
        with c.vms.attach_console(vm_id, force=True) as second:  # takes it over
            while first.recv(timeout=30) is not None:
                pass
            assert first.closed and first.exit_code is None
            second.send(b"echo sdk-$((7*7))\n")
            read_until(second, b"sdk-49")
    with pytest.raises(NotFoundError):
        new_user().vms.attach_console(vm_id).__enter__()

    page = c.vms.list()
    assert isinstance(page, Page) and [v.id for v in page.items] == [vm_id]
    assert c.vms.list(status="stopped").items == []
    assert c.vms.list(skip=1).items == [] and c.vms.list(skip=0).pagination.total == 1

    # Another tenant sees nothing of it.
    other = new_user()
    with pytest.raises(NotFoundError):
        other.vms.get(vm_id)
    with pytest.raises(NotFoundError):
        other.vms.stop(vm_id)
    assert other.vms.list().items == []

    # Resizing a running VM is refused; a rename is not, and is done at once.
    with pytest.raises(ConflictError):
        c.vms.resize(vm_id, cpu_cores=2)
    renamed = c.vms.update(vm_id, name=f"{name}-b")
    assert isinstance(renamed, VmPublic) and renamed.name == f"{name}-b"
    # A service port needs a network with a subnet (this VM is on none).
    with pytest.raises(ValidationError) as no_network:
        c.vms.update(vm_id, service_port=8080)
    assert "network" in no_network.value.message
    assert c.vms.get(vm_id).service_port is None

    # A graceful stop: the guest's own poweroff ran.
    stopping = c.vms.stop(vm_id, timeout=60)
    assert stopping.vm.status == "stopping"
    assert c.operations.wait(stopping, **WAIT).kind == "vm.stop"
    assert c.vms.get(vm_id).status == "stopped"
    console_until(c, vm_id, "NEFOS-POWEROFF")

    resized = c.vms.resize(vm_id, cpu_cores=2, memory_gb=0.1875, storage_gb=2)
    assert isinstance(resized, VmAccepted) and resized.vm.status == "resizing"
    assert c.operations.wait(resized, **WAIT).kind == "vm.resize"
    vm = c.vms.get(vm_id)
    assert (vm.status, vm.cpu_cores, vm.memory_mb, vm.storage_gb) == ("stopped", 2, 192, 2)
    with pytest.raises(ValidationError):  # the disk only grows
        c.vms.resize(vm_id, storage_gb=1)

    c.operations.wait(c.vms.start(vm_id), **WAIT)
    assert c.vms.get(vm_id).status == "running"
    console_until(c, vm_id, "NEFOS-READY", count=2)

    # The image is in use: it stays.
    with pytest.raises(ConflictError):
        admin_client.images.delete(image.id)

    kinds = [o.kind for o in c.operations.list(resource_id=vm_id).items]
    assert kinds == ["vm.start", "vm.resize", "vm.stop", "vm.create"]
    deleting = c.vms.delete(vm_id)
    assert deleting.vm.status == "deleting"
    c.operations.wait(deleting, **WAIT)
    with pytest.raises(NotFoundError):
        c.vms.get(vm_id)

    assert delete_image(admin_client, image.id).kind == "image.delete"
    with pytest.raises(NotFoundError):
        admin_client.images.get(image.id)


# --- images ------------------------------------------------------------------------------
def test_a_project_uploads_a_raw_disk_image(new_user, libvirt, tmp_path: Path):
    c = new_user()
    content = b"\0" * (1024 * 1024)
    disk = tmp_path / "disk.raw"
    disk.write_bytes(content)
    good = hashlib.sha256(content).hexdigest()

    # A wrong checksum fails the import, with the operation's error.
    bad = c.images.upload(unique("bad"), disk=disk, os_type="blank", checksum="0" * 64)
    track(bad.image_id)
    with pytest.raises(OperationFailedError) as info:
        c.operations.wait(bad, **WAIT)
    assert info.value.code == "VALIDATION_ERROR" and "Checksum mismatch" in info.value.message
    assert c.images.get(bad.image_id).status == "error"
    delete_image(c, bad.image_id)

    name = unique("blank")
    accepted = c.images.upload(name, disk=disk, os_type="blank", checksum=f"sha256:{good}")
    assert isinstance(accepted, ImageAccepted) and accepted.operation is not None
    image_id = track(accepted.image_id)
    c.operations.wait(accepted, **WAIT)
    image = c.images.get(image_id)
    assert (image.name, image.status, image.format, image.checksum) == (name, "active", "raw", good)
    assert image.public is False and image.project_id == c.auth.me().default_project_id
    assert image.size_bytes == len(content)
    assert image_id in [i.id for i in c.images.list(kind="vm", status="active").items]
    assert image_id not in [i.id for i in c.images.list(kind="container").items]

    other = new_user()
    with pytest.raises(NotFoundError):
        other.images.get(image_id)
    assert image_id not in [i.id for i in other.images.list().items]

    assert delete_image(c, image_id).status == "succeeded"
    with pytest.raises(NotFoundError):
        c.images.get(image_id)


def test_image_and_vm_requests_that_cannot_be_met(new_user, libvirt, tmp_path: Path):
    c = new_user()
    # A server path is for platform admins; public images too.
    with pytest.raises(PermissionDeniedError):
        c.images.register(unique("mine"), path=str(tiny_vm_image()))
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"\0" * 4096)
    with pytest.raises(PermissionDeniedError):
        c.images.upload(unique("pub"), disk=disk, public=True)
    with pytest.raises(ValidationError):  # neither a disk nor a kernel
        c.images.upload(unique("empty"))
    with pytest.raises(ValidationError):
        c.images.register(unique("both"), path="/x", kernel_path="/y")

    # A container image reference is registered at once: nothing to wait for.
    ref = c.images.register(unique("web"), kind="container", reference="nginx:alpine")
    assert ref.operation is None and ref.image.kind == "container"
    assert ref.image.status == "active" and ref.image.public is False
    with pytest.raises(ValueError):
        c.operations.wait(ref)
    assert c.images.delete(ref.image_id) is None
    with pytest.raises(NotFoundError):
        c.images.get(ref.image_id)

    with pytest.raises(ValidationError) as no_image:  # no image matches
        c.vms.create(unique("vm"), os_type="no-such-os", memory_mb=64)
    assert "no-such-os" in no_image.value.message
    with pytest.raises(ValidationError):  # no image and no os_type
        c.vms.create(unique("vm"))
    with pytest.raises(ValidationError):
        c.vms.create(unique("vm"), os_type="busybox", memory_gb=1, memory_mb=1024)
    with pytest.raises(ValidationError):
        c.vms.create(unique("vm"), os_type="busybox", ssh_keys=["not a key"])
    missing = str(uuid.uuid4())
    for call in (c.vms.get, c.vms.start, c.vms.delete, c.images.get):
        with pytest.raises(NotFoundError):
            call(missing)
    assert c.vms.list().items == []
