"""The SDK's snapshots, backups, volumes and networks against a live server and the
real libvirtd + QEMU (two VM boots: the first VM, and the one a backup restores).

The first VM runs the API tests' COUNTER user data, which bumps a generation
number on its root disk at each boot: the VM restored from its backup, given the
same script, prints the next generation, so the backup carried the disk."""

from __future__ import annotations

import uuid

import pytest

from nefos.schemas.compute import OperationRef
from nefos.schemas.vms import (
    BackupAccepted,
    BackupPublic,
    NetworkPublic,
    SnapshotAccepted,
    SnapshotPublic,
    VmAccepted,
    VolumeAccepted,
    VolumePublic,
)
from nefos.sdk import (
    Client,
    ConflictError,
    NotFoundError,
    Page,
    ValidationError,
)
from tests.api.test_vms import COUNTER, libvirt_names
from tests.sdk.conftest import (
    BACKUPS,
    VOLUMES,
    WAIT,
    console_until,
    delete_image,
    register_tiny,
    track,
    unique,
)


def _stopped_vm(c: Client, image_id: str, network_id: str) -> str:
    """A VM with a 1 GB disk on the network, booted once (DISK-GEN:1) and stopped."""
    accepted = c.vms.create(
        unique("vm"),
        image_id=image_id,
        memory_mb=128,
        storage_gb=1,
        user_data=COUNTER,
        network_id=network_id,
    )
    c.operations.wait(accepted, **WAIT)
    console_until(c, accepted.vm_id, "DISK-GEN:1")
    c.operations.wait(c.vms.stop(accepted.vm_id, timeout=30), **WAIT)
    return accepted.vm_id


@pytest.mark.timeout(900)
def test_snapshots_volumes_backups_and_networks(admin_client, new_user, libvirt):
    image = register_tiny(admin_client)
    c = new_user()

    network = c.networks.create(unique("net"), cidr="10.78.0.0/24")
    assert isinstance(network, NetworkPublic)
    assert (network.cidr, network.status) == ("10.78.0.0/24", "active")
    assert c.networks.get(network.id) == network
    listed = c.networks.list()
    assert isinstance(listed, Page) and [n.id for n in listed.items] == [network.id]
    with pytest.raises(ValidationError):
        c.networks.create(unique("net"), cidr="10.0.0.0/30")

    vm_id = _stopped_vm(c, image.id, network.id)
    with pytest.raises(ConflictError):  # a VM is on it
        c.networks.delete(network.id)

    # A snapshot of the stopped VM, then back to it.
    key = uuid.uuid4().hex
    snapping = c.snapshots.create(
        vm_id, name="gen-1", description="first boot", idempotency_key=key
    )
    assert isinstance(snapping, SnapshotAccepted) and snapping.snapshot.status == "creating"
    op = c.operations.wait(snapping, **WAIT)
    assert (op.kind, op.resource_id) == ("snapshot.create", snapping.snapshot_id)
    # The same request under the same key is answered as the first time, not made again.
    again = c.snapshots.create(vm_id, name="gen-1", description="first boot", idempotency_key=key)
    assert again == snapping
    with pytest.raises(ValidationError):  # the key, with another request
        c.snapshots.create(vm_id, name="gen-2", idempotency_key=key)
    snap = c.snapshots.get(snapping.snapshot_id)
    assert isinstance(snap, SnapshotPublic)
    assert (snap.name, snap.vm_id, snap.status, snap.description) == (
        "gen-1",
        vm_id,
        "available",
        "first boot",
    )
    assert [s.id for s in c.snapshots.list(vm_id=vm_id).items] == [snap.id]
    assert c.snapshots.list(status="error").items == []
    reverting = c.snapshots.restore(snap.id)
    assert reverting.snapshot.status == "reverting"
    assert c.operations.wait(reverting, **WAIT).kind == "snapshot.revert"
    assert c.snapshots.get(snap.id).status == "available"
    assert c.vms.get(vm_id).status == "stopped"

    # A volume made for the VM is attached to it; it grows, detaches and goes.
    creating = c.volumes.create(unique("data"), size_gb=1, vm_id=vm_id)
    assert isinstance(creating, VolumeAccepted)
    volume_id = track(creating.volume_id, VOLUMES)
    c.operations.wait(creating, **WAIT)
    volume = c.volumes.get(volume_id)
    assert isinstance(volume, VolumePublic)
    assert (volume.status, volume.vm_id, volume.size_gb) == ("in-use", vm_id, 1)
    assert volume.device is not None and volume.device.startswith("vd") and volume.device != "vda"
    assert [v.id for v in c.volumes.list(vm_id=vm_id).items] == [volume_id]
    with pytest.raises(ConflictError):  # attached
        c.volumes.delete(volume_id)
    with pytest.raises(ConflictError):
        c.volumes.attach(volume_id, vm_id)
    c.operations.wait(c.volumes.resize(volume_id, 2), **WAIT)
    assert c.volumes.get(volume_id).size_gb == 2
    with pytest.raises(ValidationError):  # it only grows
        c.volumes.resize(volume_id, 1)
    detaching = c.volumes.detach(volume_id)
    assert c.operations.wait(detaching, **WAIT).kind == "volume.detach"
    volume = c.volumes.get(volume_id)
    assert (volume.status, volume.vm_id) == ("available", None)
    assert c.volumes.list(status="available").items == [volume]
    assert c.operations.wait(c.volumes.delete(volume_id), **WAIT).kind == "volume.delete"
    with pytest.raises(NotFoundError):
        c.volumes.get(volume_id)

    # A backup, restored into a second VM: it boots the first one's disk.
    backing = c.backups.create(vm_id, name="nightly")
    assert isinstance(backing, BackupAccepted) and backing.backup.status == "creating"
    backup_id = track(backing.backup_id, BACKUPS)
    assert c.operations.wait(backing, **WAIT).kind == "backup.create"
    backup = c.backups.get(backup_id)
    assert isinstance(backup, BackupPublic)
    assert (backup.name, backup.vm_id, backup.status) == ("nightly", vm_id, "available")
    assert (backup.image_id, backup.storage_gb, backup.memory_mb) == (image.id, 1, 128)
    assert backup.size_bytes > 0
    assert [b.id for b in c.backups.list(vm_id=vm_id).items] == [backup_id]
    restoring = c.backups.restore(
        backup_id, name=unique("restored"), memory_mb=160, user_data=COUNTER
    )
    assert isinstance(restoring, VmAccepted) and restoring.vm.status == "creating"
    restored_id = restoring.vm_id
    assert c.operations.wait(restoring, **WAIT).kind == "vm.create"
    restored = c.vms.get(restored_id)
    assert (restored.status, restored.memory_mb, restored.storage_gb) == ("running", 160, 1)
    # The user data runs after NEFOS-READY, and the console echoes its text
    # ("echo DISK-GEN:$n") first: wait for the generation it printed. The first
    # VM's disk went on from generation 1; a wrong disk times out showing the console.
    console_until(c, restored_id, "DISK-GEN:2")
    with pytest.raises(ConflictError):  # it runs
        c.snapshots.create(restored_id)
    with pytest.raises(ConflictError):
        c.backups.create(restored_id)

    # Clean up: the VMs (their snapshots go with them), the backup, the network.
    for vm in (vm_id, restored_id):
        c.operations.wait(c.vms.delete(vm), **WAIT)
    with pytest.raises(NotFoundError):
        c.snapshots.get(snap.id)
    assert c.backups.get(backup_id).vm_id is None  # a backup outlives its VM
    assert c.operations.wait(c.backups.delete(backup_id), **WAIT).kind == "backup.delete"
    deleting = c.networks.delete(network.id)
    assert isinstance(deleting, OperationRef)
    assert c.operations.wait(deleting, **WAIT).kind == "network.delete"
    for get, item in (
        (c.backups.get, backup_id),
        (c.networks.get, network.id),
        (c.vms.get, vm_id),
        (c.vms.get, restored_id),
    ):
        with pytest.raises(NotFoundError):
            get(item)
    for listing in (c.snapshots.list, c.backups.list, c.volumes.list, c.networks.list, c.vms.list):
        assert listing().items == []
    ids = [vm_id, restored_id, volume_id, backup_id, network.id, snap.id]
    assert libvirt_names(ids) == []
    delete_image(admin_client, image.id)


def test_storage_requests_that_cannot_be_met(new_user, libvirt):
    c = new_user()
    missing = str(uuid.uuid4())
    for call in (
        c.snapshots.get,
        c.snapshots.restore,
        c.snapshots.delete,
        c.backups.get,
        c.backups.delete,
        c.volumes.get,
        c.volumes.detach,
        c.volumes.delete,
        c.networks.get,
        c.networks.delete,
    ):
        with pytest.raises(NotFoundError):
            call(missing)
    with pytest.raises(NotFoundError):
        c.snapshots.create(missing)
    with pytest.raises(NotFoundError):
        c.backups.create(missing)
    with pytest.raises(NotFoundError):
        c.backups.restore(missing, name="x")
    with pytest.raises(ValidationError):
        c.volumes.create(unique("big"), size_gb=0)
    with pytest.raises(ValidationError):
        c.networks.create(unique("net"), cidr="not-a-network")

    # A volume of its own (on the host with the most room), attached to nothing.
    creating = c.volumes.create(unique("spare"), size_gb=1)
    volume_id = track(creating.volume_id, VOLUMES)
    c.operations.wait(creating, **WAIT)
    assert c.volumes.get(volume_id).status == "available"
    with pytest.raises(ConflictError):  # attached to nothing
        c.volumes.detach(volume_id)
    with pytest.raises(NotFoundError):
        c.volumes.attach(volume_id, missing)

    # Another tenant sees none of it.
    other = new_user()
    with pytest.raises(NotFoundError):
        other.volumes.get(volume_id)
    assert other.volumes.list().items == []

    c.operations.wait(c.volumes.delete(volume_id), **WAIT)
    assert c.volumes.list().items == []
    with pytest.raises(NotFoundError):
        c.volumes.get(volume_id)
