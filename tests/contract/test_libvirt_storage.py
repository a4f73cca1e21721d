"""The libvirt driver's storage: images uploaded into the pool, root disks that
grow, internal snapshots, backups restored into new VMs, data volumes and private
networks. Checked from libvirt itself (and, for disk contents, qemu-img/qemu-io
on the host's files), past the driver; a guest boots where only a guest can tell.

Everything a test makes carries the run id in its name (or the run label), and the
module's clean-up removes what a failed test left.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from nefos.drivers.base import DriverError, InvalidSpec, InvalidState
from nefos.drivers.libvirt import LibvirtDriver, VmSpec
from tests.conftest import refresh_pool

from .conftest import RUN_ID, RUN_LABEL, libvirt_test_driver, libvirt_uri, vm_image

BOOT_SECONDS = 90
GIB = 1024**3
MIB = 1024**2
#: The tiny image's own command line (var/images/nefos-tiny/cmdline).
CMDLINE = "console=ttyS0 quiet panic=-1"


@pytest.fixture(scope="module")
def host() -> Iterator[libvirt.virConnect]:
    """libvirt itself, past the driver."""
    conn = libvirt.open(libvirt_uri())
    yield conn
    conn.close()


@pytest.fixture(scope="module")
async def vm_driver(host: libvirt.virConnect) -> AsyncIterator[LibvirtDriver]:
    driver: LibvirtDriver = libvirt_test_driver(libvirt_uri())
    yield driver
    # Whatever a failed test left: this run's domains first (they hold the rest).
    for info in await driver.list({RUN_LABEL: RUN_ID}):
        await driver.destroy(info.driver_id)
    for pool_name in ("default", driver.backup_pool):
        try:
            pool = host.storagePoolLookupByName(pool_name)
        except libvirt.libvirtError:
            continue
        refresh_pool(pool)
        for name in pool.listVolumes():
            if RUN_ID in name:
                pool.storageVolLookupByName(name).delete(0)
    for net in host.listAllNetworks(0):
        if RUN_ID in net.name():
            if net.isActive():
                net.destroy()
            net.undefine()
    await driver.close()


#: The ids of every VM spec this module made, for the final check.
SPECS_MADE: list[str] = []


def vm_spec(**overrides: Any) -> VmSpec:
    nefos_id = overrides.pop("nefos_id", f"st{uuid.uuid4().hex[:12]}")
    SPECS_MADE.append(nefos_id)
    values: dict[str, Any] = {
        "nefos_id": nefos_id,
        "project_id": "storage-project",
        "name": f"VM {nefos_id}",
        "image": vm_image(),
        "cpu": 1.0,
        "memory_mb": 128,
        "labels": {RUN_LABEL: RUN_ID},
    }
    values.update(overrides)
    return VmSpec(**values)


async def console_until(driver: LibvirtDriver, driver_id: str, needle: str) -> str:
    """The console log once ``needle`` is in it."""
    deadline = time.monotonic() + BOOT_SECONDS
    while True:
        text = await driver.logs(driver_id, tail=1000)
        if needle in text:
            return text
        if time.monotonic() > deadline:
            pytest.fail(f"{needle!r} not on the console in {BOOT_SECONDS}s:\n{text}")
        await asyncio.sleep(0.2)


def volume(host: libvirt.virConnect, name: str, pool: str = "default") -> libvirt.virStorageVol:
    p = host.storagePoolLookupByName(pool)
    refresh_pool(p)
    return p.storageVolLookupByName(name)


def volume_names(host: libvirt.virConnect, prefix: str, pool: str = "default") -> list[str]:
    p = host.storagePoolLookupByName(pool)
    refresh_pool(p)
    return sorted(v for v in p.listVolumes() if v.startswith(prefix))


def capacity(host: libvirt.virConnect, name: str, pool: str = "default") -> int:
    return int(volume(host, name, pool).info()[1])


def domain_xml(host: libvirt.virConnect, driver_id: str) -> ET.Element:
    dom = host.lookupByUUIDString(driver_id)
    return ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def disks(root: ET.Element) -> dict[str, ET.Element]:
    """A domain's disks by target dev."""
    return {str(d.find("target").get("dev")): d for d in root.findall("devices/disk")}  # type: ignore[union-attr]


def qemu_img(*args: str) -> str:
    """qemu-img on the host's files (the tests run on the libvirt host)."""
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def qemu_img_info(path: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(qemu_img("info", "--output=json", "-U", path))
    return info


async def test_an_imported_kernel_image_boots_with_a_root_disk_that_grows_but_never_shrinks(
    vm_driver: LibvirtDriver, host: libvirt.virConnect
) -> None:
    image = f"t{RUN_ID}-tiny"
    src = Path(vm_image())
    await vm_driver.import_image(image, kernel=src / "vmlinuz", initrd=src / "initrd.img")
    assert await vm_driver.has_image(image)
    assert volume_names(host, image) == [f"{image}.initrd", f"{image}.vmlinuz"]
    kernel = volume(host, f"{image}.vmlinuz")
    assert int(kernel.info()[1]) == (src / "vmlinuz").stat().st_size
    # Importing again keeps what is there (same sizes): nothing is uploaded again.
    mtime = ET.fromstring(kernel.XMLDesc(0)).findtext("target/timestamps/mtime")
    await vm_driver.import_image(image, kernel=src / "vmlinuz", initrd=src / "initrd.img")
    kernel = volume(host, f"{image}.vmlinuz")
    assert ET.fromstring(kernel.XMLDesc(0)).findtext("target/timestamps/mtime") == mtime

    cmdline = f"{CMDLINE} nefos.test-run={RUN_ID}"
    spec = vm_spec(
        image=image,
        disk_gb=1,
        kernel_cmdline=cmdline,
        user_data="#!/bin/sh\necho NEFOS-VDA-SECTORS=$(cat /sys/block/vda/size)\n",
    )
    info = await vm_driver.create(spec)
    root_name = f"nefos-{spec.nefos_id}.root.qcow2"
    xml = domain_xml(host, info.driver_id)
    assert xml.findtext("os/kernel") == kernel.path()
    assert xml.findtext("os/initrd") == volume(host, f"{image}.initrd").path()
    assert xml.findtext("os/cmdline") == cmdline
    by_dev = disks(xml)
    assert sorted(by_dev) == ["vda", "vdb"]
    assert by_dev["vda"].find("source").get("file") == volume(host, root_name).path()  # type: ignore[union-attr]
    assert by_dev["vda"].find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    # The seed is read-only (so out of snapshots: libvirt omits snapshot='no' then).
    assert by_dev["vdb"].find("readonly") is not None
    assert capacity(host, root_name) == 1 * GIB

    await vm_driver.start(info.driver_id)
    # The guest boots, and sees a 1 GiB vda.
    console = await console_until(vm_driver, info.driver_id, f"NEFOS-VDA-SECTORS={GIB // 512}")
    assert "NEFOS-READY" in console
    with pytest.raises(InvalidState):
        await vm_driver.resize(info.driver_id, disk_gb=2)  # only while stopped
    with pytest.raises(InvalidState):
        await vm_driver.delete_image(image)  # a VM boots from it
    await vm_driver.stop(info.driver_id, grace_seconds=60)

    resized = await vm_driver.resize(info.driver_id, disk_gb=2)
    assert resized.driver_id == info.driver_id
    assert capacity(host, root_name) == 2 * GIB
    with pytest.raises(InvalidSpec, match="do not shrink"):
        await vm_driver.resize(info.driver_id, disk_gb=1)
    assert capacity(host, root_name) == 2 * GIB
    await vm_driver.resize(info.driver_id, disk_gb=2)  # the same size: nothing changes

    await vm_driver.destroy(info.driver_id)
    assert volume_names(host, f"nefos-{spec.nefos_id}.") == []
    await vm_driver.delete_image(image)
    assert not await vm_driver.has_image(image)
    assert volume_names(host, image) == []
    await vm_driver.delete_image(image)  # gone already: fine


async def test_a_raw_disk_image_backs_an_overlay_of_at_least_disk_gb_and_bad_imports_are_refused(
    vm_driver: LibvirtDriver, host: libvirt.virConnect, tmp_path: Path
) -> None:
    image = f"t{RUN_ID}-raw"
    raw = tmp_path / "disk.raw"
    with raw.open("wb") as f:
        f.truncate(3 * MIB)
    await vm_driver.import_image(image, disk=raw, disk_format="raw")
    assert await vm_driver.has_image(image)
    base = volume(host, f"{image}.raw")

    big = vm_spec(image=image, disk_gb=1)
    small = vm_spec(image=image)
    no_root = vm_spec()  # the kernel-boot image directory, no disk_gb: no root disk
    infos = [await vm_driver.create(s) for s in (big, small, no_root)]
    for spec, size in ((big, GIB), (small, 3 * MIB)):
        root = volume(host, f"nefos-{spec.nefos_id}.root.qcow2")
        assert int(root.info()[1]) == size
        backing = ET.fromstring(root.XMLDesc(0)).find("backingStore")
        assert backing is not None
        assert backing.findtext("path") == base.path()
        assert backing.find("format").get("type") == "raw"  # type: ignore[union-attr]
    assert volume_names(host, f"nefos-{no_root.nefos_id}.root") == []
    with pytest.raises(InvalidSpec, match="no root disk"):
        await vm_driver.resize(infos[2].driver_id, disk_gb=1)
    with pytest.raises(InvalidSpec, match="disk image"):
        await vm_driver.create(vm_spec(image=image, kernel_cmdline=CMDLINE))

    # Imports that are refused leave nothing behind.
    backed = tmp_path / "backed.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(raw), str(backed))
    bad = f"t{RUN_ID}-bad"
    with pytest.raises(InvalidSpec, match="backing file"):
        await vm_driver.import_image(bad, disk=backed)
    with pytest.raises(InvalidSpec, match="not a qcow2"):
        await vm_driver.import_image(bad, disk=raw)  # raw bytes called qcow2
    src = Path(vm_image())
    with pytest.raises(InvalidSpec):
        await vm_driver.import_image(bad, kernel=src / "vmlinuz", disk=raw)
    with pytest.raises(InvalidSpec):
        await vm_driver.import_image(bad, kernel=tmp_path / "missing")
    with pytest.raises(InvalidSpec, match="other volumes"):
        await vm_driver.import_image(image, kernel=src / "vmlinuz")
    assert volume_names(host, bad) == []
    assert not await vm_driver.has_image(bad)

    for info in infos:
        await vm_driver.destroy(info.driver_id)
    await vm_driver.delete_image(image)
    assert volume_names(host, image) == []


def qemu_io(path: str, command: str) -> str:
    """One qemu-io command on a (stopped VM's) qcow2 file on the host."""
    return subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, path],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def holds_pattern(path: str, byte: int) -> bool:
    """Whether the disk's first 64 KiB are all ``byte``."""
    out = qemu_io(path, f"read -P {byte:#x} 0 64k")
    return "read 65536/65536 bytes" in out and "Pattern verification failed" not in out


async def test_snapshots_of_a_stopped_vm_revert_its_root_disk_and_keep_its_configuration(
    vm_driver: LibvirtDriver, host: libvirt.virConnect
) -> None:
    spec = vm_spec(disk_gb=1)
    info = await vm_driver.create(spec)
    root = volume(host, f"nefos-{spec.nefos_id}.root.qcow2").path()
    first, second = f"s1{RUN_ID}", f"s2{RUN_ID}"

    qemu_io(root, "write -P 0x41 0 64k")
    taken = await vm_driver.snapshot(info.driver_id, first)
    assert (taken.snapshot_id, taken.name, taken.state) == (first, f"nefos-snap-{first}", "shutoff")
    assert taken.created_at.tzinfo is not None
    assert await vm_driver.snapshot(info.driver_id, first) == taken  # idempotent
    qemu_io(root, "write -P 0x42 0 64k")
    await vm_driver.snapshot(info.driver_id, second)
    assert [s.snapshot_id for s in await vm_driver.list_snapshots(info.driver_id)] == [
        first,
        second,
    ]
    # Internal snapshots in the root disk; the seed (raw, read-only) has none.
    in_disk = [s["name"] for s in qemu_img_info(root).get("snapshots", [])]
    assert in_disk == [f"nefos-snap-{first}", f"nefos-snap-{second}"]

    await vm_driver.start(info.driver_id)
    with pytest.raises(InvalidState):
        await vm_driver.revert_snapshot(info.driver_id, first)
    with pytest.raises(InvalidState):
        await vm_driver.snapshot(info.driver_id, f"s3{RUN_ID}")
    await vm_driver.delete_snapshot(info.driver_id, second)  # while running, too
    assert [s.snapshot_id for s in await vm_driver.list_snapshots(info.driver_id)] == [first]
    await vm_driver.stop(info.driver_id, grace_seconds=0)

    qemu_io(root, "write -P 0x43 0 64k")
    await vm_driver.resize(info.driver_id, memory_mb=160, disk_gb=2)
    await vm_driver.revert_snapshot(info.driver_id, first)
    assert holds_pattern(root, 0x41)
    assert capacity(host, f"nefos-{spec.nefos_id}.root.qcow2") == 1 * GIB  # the size of then
    xml = domain_xml(host, info.driver_id)
    assert int(xml.findtext("memory") or 0) == 160 * 1024  # today's configuration stays
    assert [s.snapshot_id for s in await vm_driver.list_snapshots(info.driver_id)] == [first]
    with pytest.raises(InvalidSpec):
        await vm_driver.revert_snapshot(info.driver_id, second)  # deleted

    await vm_driver.delete_snapshot(info.driver_id, first)
    await vm_driver.delete_snapshot(info.driver_id, first)  # gone already: fine
    assert await vm_driver.list_snapshots(info.driver_id) == []
    assert qemu_img_info(root).get("snapshots", []) == []

    # A VM that is destroyed with a snapshot leaves neither record nor disk behind.
    await vm_driver.snapshot(info.driver_id, second)
    await vm_driver.destroy(info.driver_id)
    assert volume_names(host, f"nefos-{spec.nefos_id}.") == []
    await vm_driver.delete_snapshot(info.driver_id, second)  # the VM is gone: fine


async def test_a_vm_without_a_root_disk_has_nothing_to_snapshot(
    vm_driver: LibvirtDriver,
) -> None:
    info = await vm_driver.create(vm_spec())
    try:
        with pytest.raises(InvalidSpec, match="no disk"):
            await vm_driver.snapshot(info.driver_id, f"s{RUN_ID}")
        with pytest.raises(InvalidSpec):
            await vm_driver.snapshot(info.driver_id, "not.an.id")
    finally:
        await vm_driver.destroy(info.driver_id)


async def test_a_backup_is_a_standalone_copy_that_restores_into_a_new_vm_that_boots(
    vm_driver: LibvirtDriver, host: libvirt.virConnect, tmp_path: Path
) -> None:
    # A disk image whose first 64 KiB are "R"s, and a VM on an overlay of it that
    # holds "S"s of its own at 1 MiB: the backup must carry both, standing alone.
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "64M")
    qemu_io(str(base), "write -P 0x52 0 64k")
    image = f"t{RUN_ID}-base"
    await vm_driver.import_image(image, disk=base)
    source = await vm_driver.create(vm_spec(image=image))
    overlay = volume(host, f"nefos-{source.nefos_id}.root.qcow2").path()
    assert qemu_img_info(overlay).get("backing-filename")
    qemu_io(overlay, "write -P 0x53 1M 64k")

    backup_id = f"b{RUN_ID}"
    root_copy = f"nefos-bak-{backup_id}.vda.qcow2"
    await vm_driver.start(source.driver_id)  # no boot loader: it idles in the firmware
    with pytest.raises(InvalidState):
        await vm_driver.backup(source.driver_id, backup_id)
    await vm_driver.stop(source.driver_id, grace_seconds=0)
    made = await vm_driver.backup(source.driver_id, backup_id)
    assert made.backup_id == backup_id
    assert made.volumes == (root_copy,)
    assert made.size_bytes > 0
    assert await vm_driver.backup(source.driver_id, backup_id) == made  # idempotent
    assert made in await vm_driver.list_backups()
    copy = volume(host, root_copy, vm_driver.backup_pool).path()
    info = qemu_img_info(copy)
    assert info["format"] == "qcow2"
    assert "backing-filename" not in info  # flattened
    assert info["virtual-size"] == 64 * MIB
    assert holds_pattern(copy, 0x52)
    assert "Pattern verification failed" not in qemu_io(copy, "read -P 0x53 1M 64k")

    # Restore: a new VM (booting the kernel image) whose root disk is a copy of it.
    with pytest.raises(InvalidSpec, match="backup pool"):
        await vm_driver.create(vm_spec(root_from=f"nefos-bak-missing{RUN_ID}.vda.qcow2"))
    spec = vm_spec(
        root_from=root_copy,
        disk_gb=1,
        user_data='#!/bin/sh\necho "NEFOS-DISK=[$(head -c 8 /dev/vda)]"\n',
    )
    restored = await vm_driver.create(spec)
    root_name = f"nefos-{spec.nefos_id}.root.qcow2"
    assert capacity(host, root_name) == 1 * GIB  # max(the backup's 64 MiB, disk_gb)
    assert "backing-filename" not in qemu_img_info(volume(host, root_name).path())
    await vm_driver.start(restored.driver_id)
    await console_until(vm_driver, restored.driver_id, "NEFOS-DISK=[RRRRRRRR]")

    # The backup outlives both VMs; deleting it leaves the restored disk alone.
    await vm_driver.destroy(source.driver_id)
    await vm_driver.stop(restored.driver_id, grace_seconds=0)
    await vm_driver.delete_backup(backup_id)
    await vm_driver.delete_backup(backup_id)  # gone already: fine
    assert backup_id not in {b.backup_id for b in await vm_driver.list_backups()}
    assert volume_names(host, f"nefos-bak-{backup_id}.", vm_driver.backup_pool) == []
    assert capacity(host, root_name) == 1 * GIB
    await vm_driver.destroy(restored.driver_id)
    await vm_driver.delete_image(image)


async def test_a_vm_without_a_root_disk_has_nothing_to_back_up(vm_driver: LibvirtDriver) -> None:
    info = await vm_driver.create(vm_spec())
    try:
        with pytest.raises(InvalidSpec, match="no disk"):
            await vm_driver.backup(info.driver_id, f"b{RUN_ID}none")
    finally:
        await vm_driver.destroy(info.driver_id)


async def test_data_volumes_attach_to_a_stopped_vm_grow_and_outlive_it(
    vm_driver: LibvirtDriver, host: libvirt.virConnect
) -> None:
    first, second = f"v1{RUN_ID}", f"v2{RUN_ID}"
    made = await vm_driver.create_volume(first, size_gb=1)
    assert (made.volume_id, made.name, made.size_gb, made.attached_to) == (
        first,
        f"nefos-vol-{first}.qcow2",
        1,
        None,
    )
    assert made.path == volume(host, made.name).path()
    assert await vm_driver.create_volume(first, size_gb=1) == made  # idempotent
    with pytest.raises(InvalidSpec, match="another size"):
        await vm_driver.create_volume(first, size_gb=2)
    await vm_driver.create_volume(second, size_gb=1)

    spec = vm_spec(disk_gb=1)
    vm = await vm_driver.create(spec)
    other = await vm_driver.create(vm_spec())
    assert await vm_driver.attach_volume(vm.driver_id, first) == "vdc"  # after root and seed
    assert await vm_driver.attach_volume(vm.driver_id, first) == "vdc"  # idempotent
    assert await vm_driver.attach_volume(vm.driver_id, second) == "vdd"
    data = disks(domain_xml(host, vm.driver_id))["vdc"]
    assert data.find("source").get("file") == made.path  # type: ignore[union-attr]
    assert data.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert data.findtext("serial") == first[:20]
    assert data.find("readonly") is None
    with pytest.raises(InvalidState):
        await vm_driver.attach_volume(other.driver_id, first)  # one VM at a time
    with pytest.raises(InvalidState):
        await vm_driver.delete_volume(first)
    with pytest.raises(InvalidSpec):
        await vm_driver.attach_volume(vm.driver_id, f"missing{RUN_ID}")
    mine = {v.volume_id: v for v in await vm_driver.list_volumes() if RUN_ID in v.volume_id}
    assert {k: v.attached_to for k, v in mine.items()} == {
        first: vm.driver_id,
        second: vm.driver_id,
    }

    grown = await vm_driver.resize_volume(first, size_gb=2)
    assert grown.size_gb == 2
    assert capacity(host, made.name) == 2 * GIB
    with pytest.raises(InvalidSpec, match="do not shrink"):
        await vm_driver.resize_volume(first, size_gb=1)

    # Snapshots and backups take the attached volumes too.
    await vm_driver.snapshot(vm.driver_id, f"s{RUN_ID}")
    assert [s["name"] for s in qemu_img_info(made.path)["snapshots"]] == [f"nefos-snap-s{RUN_ID}"]
    backup = await vm_driver.backup(vm.driver_id, f"b{RUN_ID}vol")
    assert backup.volumes == tuple(
        f"nefos-bak-b{RUN_ID}vol.{dev}.qcow2" for dev in ("vda", "vdc", "vdd")
    )
    await vm_driver.delete_backup(backup.backup_id)
    # Moved to another VM, a volume is that VM's: the snapshot may not revert it.
    await vm_driver.detach_volume(vm.driver_id, first)
    assert await vm_driver.attach_volume(other.driver_id, first) == "vdb"  # after the seed
    with pytest.raises(InvalidState, match="another VM"):
        await vm_driver.revert_snapshot(vm.driver_id, f"s{RUN_ID}")
    await vm_driver.detach_volume(other.driver_id, first)
    await vm_driver.revert_snapshot(vm.driver_id, f"s{RUN_ID}")
    assert "vdc" not in disks(domain_xml(host, vm.driver_id))  # today's configuration

    await vm_driver.detach_volume(vm.driver_id, second)
    await vm_driver.detach_volume(vm.driver_id, second)  # not attached: fine
    assert "vdd" not in disks(domain_xml(host, vm.driver_id))
    # Destroying the VM detaches its volumes and keeps them, without its snapshot.
    await vm_driver.destroy(vm.driver_id)
    await vm_driver.detach_volume(vm.driver_id, first)  # the VM is gone: fine
    mine = {v.volume_id: v for v in await vm_driver.list_volumes() if RUN_ID in v.volume_id}
    assert sorted(mine) == [first, second]
    assert all(v.attached_to is None for v in mine.values())
    assert qemu_img_info(made.path).get("snapshots", []) == []
    assert mine[first].size_gb == 2

    for volume_id in (first, second):
        await vm_driver.delete_volume(volume_id)
        await vm_driver.delete_volume(volume_id)  # gone already: fine
    assert [v for v in await vm_driver.list_volumes() if RUN_ID in v.volume_id] == []
    await vm_driver.destroy(other.driver_id)


async def test_a_data_volume_plugs_into_a_running_vm_and_grows_there(
    vm_driver: LibvirtDriver, host: libvirt.virConnect
) -> None:
    volume_id = f"v3{RUN_ID}"
    made = await vm_driver.create_volume(volume_id, size_gb=1)
    spec = vm_spec(
        user_data=(
            "#!/bin/sh\n"
            "while true; do\n"
            "  for d in /sys/block/vd*; do echo NEFOS-SIZE-${d##*/}=$(cat $d/size); done\n"
            "  sleep 1\n"
            "done\n"
        )
    )
    vm = await vm_driver.create(spec)
    try:
        await vm_driver.start(vm.driver_id)
        await console_until(vm_driver, vm.driver_id, "NEFOS-SIZE-vda=")
        assert await vm_driver.attach_volume(vm.driver_id, volume_id) == "vdb"
        live = disks(ET.fromstring(host.lookupByUUIDString(vm.driver_id).XMLDesc(0)))
        assert live["vdb"].find("source").get("file") == made.path  # type: ignore[union-attr]
        assert "vdb" in disks(domain_xml(host, vm.driver_id))  # and in the configuration
        await console_until(vm_driver, vm.driver_id, f"NEFOS-SIZE-vdb={GIB // 512}")
        assert (await vm_driver.resize_volume(volume_id, size_gb=2)).size_gb == 2
        await console_until(vm_driver, vm.driver_id, f"NEFOS-SIZE-vdb={2 * GIB // 512}")

        # A booted guest lets go of it (ACPI hot-unplug) within the detach timeout.
        await vm_driver.detach_volume(vm.driver_id, volume_id)
        assert "vdb" not in disks(domain_xml(host, vm.driver_id))
        live = disks(ET.fromstring(host.lookupByUUIDString(vm.driver_id).XMLDesc(0)))
        assert sorted(live) == ["vda"]
        assert (await vm_driver.create_volume(volume_id, size_gb=2)).attached_to is None
    finally:
        await vm_driver.destroy(vm.driver_id)
    await vm_driver.delete_volume(volume_id)


def dnsmasq_installed() -> bool:
    """libvirt serves a network's DHCP with dnsmasq, when the host has it."""
    return shutil.which("dnsmasq") is not None or Path("/usr/sbin/dnsmasq").is_file()


async def test_a_private_network_carries_a_vm_and_outlives_it_but_not_its_use(
    vm_driver: LibvirtDriver, host: libvirt.virConnect
) -> None:
    network_id = f"n{RUN_ID}"
    labels = {RUN_LABEL: RUN_ID, "tier": "db"}
    made = await vm_driver.create_network(network_id, project_id="net-project", labels=labels)
    assert (made.network_id, made.name, made.cidr, made.active) == (
        network_id,
        f"nefos-net-{network_id}",
        None,
        True,
    )
    assert made.labels == {
        **labels,
        "nefos.id": network_id,
        "nefos.project": "net-project",
        "nefos.managed": "true",
    }
    assert made.bridge.startswith("nfs") and len(made.bridge) <= 15
    # libvirt's view: persistent, autostarted, isolated, with the Nefos metadata.
    net = host.networkLookupByName(made.name)
    assert net.isPersistent() and net.autostart() and net.isActive()
    root = ET.fromstring(net.XMLDesc(0))
    assert root.find("forward") is None
    assert root.find("bridge").get("name") == made.bridge  # type: ignore[union-attr]
    ns = "urn:nefos:libvirt:network:1"
    assert root.findtext(f"metadata/{{{ns}}}network/{{{ns}}}id") == network_id
    assert await vm_driver.create_network(network_id, project_id="net-project") == made
    with pytest.raises(InvalidSpec):
        await vm_driver.create_network(network_id, project_id="another-project")
    assert [n.name for n in await vm_driver.list_networks({RUN_LABEL: RUN_ID})] == [made.name]
    assert await vm_driver.list_networks({RUN_LABEL: RUN_ID, "tier": "web"}) == []

    with pytest.raises(InvalidSpec, match="no network"):
        await vm_driver.create(vm_spec(network=f"nefos-net-missing{RUN_ID}"))
    vm = await vm_driver.create(vm_spec(network=made.name))
    nics = domain_xml(host, vm.driver_id).findall("devices/interface")
    assert [(n.get("type"), n.find("source").get("network")) for n in nics] == [  # type: ignore[union-attr]
        ("network", made.name)
    ]
    await vm_driver.start(vm.driver_id)  # the NIC plugs into the network's bridge
    live = ET.fromstring(host.lookupByUUIDString(vm.driver_id).XMLDesc(0))
    assert live.find("devices/interface/source").get("bridge") == made.bridge  # type: ignore[union-attr]
    with pytest.raises(InvalidState):
        await vm_driver.delete_network(network_id)
    await vm_driver.stop(vm.driver_id, grace_seconds=0)
    with pytest.raises(InvalidState):
        await vm_driver.delete_network(network_id)  # still in its configuration
    await vm_driver.destroy(vm.driver_id)

    await vm_driver.delete_network(network_id)
    await vm_driver.delete_network(network_id)  # gone already: fine
    assert made.name not in host.listNetworks() + host.listDefinedNetworks()
    assert await vm_driver.list_networks({RUN_LABEL: RUN_ID}) == []


async def test_a_network_with_a_cidr_serves_dhcp_or_fails_leaving_nothing(
    vm_driver: LibvirtDriver, host: libvirt.virConnect
) -> None:
    for bad in ("10.0.0.1/24", "fd00::/64", "10.0.0.0/31", "not-a-cidr"):
        with pytest.raises(InvalidSpec):
            await vm_driver.create_network(f"n{RUN_ID}bad", project_id="p", cidr=bad)
    network_id = f"n{RUN_ID}dhcp"
    third = int(RUN_ID[:2], 16)  # a /24 of 10.213.x.0 that other runs are unlikely to take
    cidr = f"10.213.{third}.0/24"
    name = f"nefos-net-{network_id}"
    if not dnsmasq_installed():
        with pytest.raises(DriverError, match="dnsmasq"):
            await vm_driver.create_network(network_id, project_id="p", cidr=cidr)
        assert name not in host.listNetworks() + host.listDefinedNetworks()
        return
    made = await vm_driver.create_network(
        network_id, project_id="p", cidr=cidr, labels={RUN_LABEL: RUN_ID}
    )
    try:
        assert made.cidr == cidr and made.active
        ip = ET.fromstring(host.networkLookupByName(name).XMLDesc(0)).find("ip")
        assert ip is not None
        assert (ip.get("address"), ip.get("prefix")) == (f"10.213.{third}.1", "24")
        dhcp = ip.find("dhcp/range")
        assert dhcp is not None
        assert (dhcp.get("start"), dhcp.get("end")) == (f"10.213.{third}.2", f"10.213.{third}.254")
        assert await vm_driver.create_network(network_id, project_id="p", cidr=cidr) == made
        with pytest.raises(InvalidSpec):
            await vm_driver.create_network(network_id, project_id="p", cidr="10.214.0.0/24")
        # A guest on it gets an address by DHCP (the tiny image runs udhcpc at boot).
        spec = vm_spec(
            network=name,
            user_data=(
                "#!/bin/sh\n"
                "while true; do echo NEFOS-ADDR $(ip -4 -o addr show dev eth0); sleep 1; done\n"
            ),
        )
        vm = await vm_driver.create(spec)
        try:
            await vm_driver.start(vm.driver_id)
            await console_until(vm_driver, vm.driver_id, f"inet 10.213.{third}.")
            # The network's leases say where the guest is (not the guest's own word).
            deadline = time.monotonic() + 30
            while not (leased := await vm_driver.guest_addresses(vm.driver_id)):
                assert time.monotonic() < deadline, "no lease seen"
                await asyncio.sleep(0.5)
            [address] = leased
            assert address.startswith(f"10.213.{third}.") and address != f"10.213.{third}.1"
        finally:
            await vm_driver.destroy(vm.driver_id)
    finally:
        await vm_driver.delete_network(network_id)


async def test_the_tests_leave_no_domain_volume_backup_or_network_behind(
    vm_driver: LibvirtDriver, host: libvirt.virConnect
) -> None:
    """Last in the module: each test above cleaned up after itself (the module's
    clean-up, which would hide a leak, has not run yet)."""
    assert SPECS_MADE
    domains = {d.name() for d in host.listAllDomains(0)}
    assert [i for i in SPECS_MADE if f"nefos-{i}" in domains] == []
    pools = ["default", vm_driver.backup_pool]
    left = [
        name
        for pool in pools
        for name in volume_names(host, "", pool)
        if RUN_ID in name or any(name.startswith(f"nefos-{i}.") for i in SPECS_MADE)
    ]
    assert left == []
    assert [n.name() for n in host.listAllNetworks(0) if RUN_ID in n.name()] == []
