"""What only the libvirt driver does: a real guest (the tiny image of
scripts/build-vm-image.sh) reads its NoCloud seed, stops gracefully on the ACPI
button, resizes while stopped, reboots; and the driver's bookkeeping in libvirt
(metadata, pool volumes, other people's domains) is checked from libvirt itself.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from typing import Any

import libvirt
import pytest

from nefos.drivers.base import (
    LABEL_ID,
    DriverError,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
    InvalidSpec,
    InvalidState,
)
from nefos.drivers.libvirt import LibvirtDriver, VmSpec
from tests.conftest import refresh_pool

from .conftest import RUN_ID, RUN_LABEL, libvirt_test_driver, libvirt_uri, vm_image

BOOT_SECONDS = 90


@pytest.fixture(scope="module")
async def vm_driver() -> AsyncIterator[LibvirtDriver]:
    driver: LibvirtDriver = libvirt_test_driver(libvirt_uri())
    yield driver
    for info in await driver.list({RUN_LABEL: RUN_ID}):
        await driver.destroy(info.driver_id)
    await driver.close()


@pytest.fixture(scope="module")
def host() -> Iterator[libvirt.virConnect]:
    """libvirt itself, past the driver."""
    conn = libvirt.open(libvirt_uri())
    yield conn
    conn.close()


def vm_spec(**overrides: Any) -> VmSpec:
    nefos_id = overrides.pop("nefos_id", f"vm{uuid.uuid4().hex[:12]}")
    values: dict[str, Any] = {
        "nefos_id": nefos_id,
        "project_id": "vm-project",
        "name": f"VM {nefos_id}",
        "image": vm_image(),
        "cpu": 1.0,
        "memory_mb": 128,
        "labels": {RUN_LABEL: RUN_ID},
    }
    values.update(overrides)
    return VmSpec(**values)


async def console_until(
    driver: LibvirtDriver, driver_id: str, needle: str, *, count: int = 1
) -> str:
    """The console log once ``needle`` is in it ``count`` times."""
    deadline = time.monotonic() + BOOT_SECONDS
    while True:
        text = await driver.logs(driver_id, tail=1000)
        if text.count(needle) >= count:
            return text
        if time.monotonic() > deadline:
            pytest.fail(f"{needle!r} x{count} not on the console in {BOOT_SECONDS}s:\n{text}")
        await asyncio.sleep(0.2)


def between(text: str, begin: str, end: str) -> str:
    """The lines between the last ``begin`` marker line and the ``end`` after it."""
    lines = text.splitlines()
    start = len(lines) - 1 - lines[::-1].index(begin)
    stop = lines.index(end, start)
    return "\n".join(lines[start + 1 : stop])


def pool_volumes(host: libvirt.virConnect, nefos_id: str) -> list[str]:
    pool = host.storagePoolLookupByName("default")
    refresh_pool(pool)
    return [v for v in pool.listVolumes() if v.startswith(f"nefos-{nefos_id}.")]


async def test_a_guest_reads_its_seed_stops_gracefully_resizes_and_reboots(
    vm_driver: LibvirtDriver, host: libvirt.virConnect
) -> None:
    user_data = (
        f"#!/bin/sh\n# nefos user data for run {RUN_ID}\necho nefos-user-data-ran-as-$(id -u)\n"
    )
    keys = (
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyOne one@example",
        "ssh-rsa AAAAB3Nza two@x",
    )
    spec = vm_spec(name="Seed Reader", user_data=user_data, ssh_keys=keys)
    info = await vm_driver.create(spec)
    assert info.state is InstanceState.STOPPED
    assert vm_driver.domain_type in ("kvm", "qemu")
    assert sorted(pool_volumes(host, spec.nefos_id)) == [
        f"nefos-{spec.nefos_id}.console.log",
        f"nefos-{spec.nefos_id}.seed.iso",
    ]

    started = time.monotonic()
    await vm_driver.start(info.driver_id)
    # NEFOS-READY is the line after the seed's: waiting for it sees the seed whole.
    console = await console_until(vm_driver, info.driver_id, "NEFOS-READY seed-reader ")
    booted = time.monotonic() - started
    # The guest printed the seed it mounted: user data byte for byte, the keys, its name.
    assert between(console, "NEFOS-USER-DATA-BEGIN", "NEFOS-USER-DATA-END") == user_data.rstrip(
        "\n"
    )
    assert between(console, "NEFOS-SSH-KEYS-BEGIN", "NEFOS-SSH-KEYS-END").splitlines() == list(keys)
    assert "NEFOS-READY seed-reader" in console
    # ... and ran the script user data, as cloud-init would.
    await console_until(vm_driver, info.driver_id, "nefos-user-data-ran-as-0")

    # Stop presses the ACPI power button: the guest shuts itself down within the grace.
    stopping = time.monotonic()
    stopped = await vm_driver.stop(info.driver_id, grace_seconds=60)
    assert stopped.state is InstanceState.STOPPED
    assert time.monotonic() - stopping < 60
    assert "NEFOS-POWEROFF" in await vm_driver.logs(info.driver_id, tail=50)
    dom = host.lookupByUUIDString(info.driver_id)
    assert dom.state()[1] == libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN  # the guest's own, not destroyed

    # Resize: while stopped only.
    resized = await vm_driver.resize(info.driver_id, cpu=1.5, memory_mb=160)
    assert resized.state is InstanceState.STOPPED
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert root.findtext("vcpu") == "2"
    assert root.findtext("cputune/global_quota") == "150000"
    assert int(root.findtext("memory") or 0) == 160 * 1024  # KiB

    await vm_driver.start(info.driver_id)
    with pytest.raises(InvalidState):
        await vm_driver.resize(info.driver_id, memory_mb=192)
    await console_until(vm_driver, info.driver_id, "NEFOS-READY", count=2)
    # A soft reboot is the guest's own (ACPI); the console log keeps every boot.
    await vm_driver.reboot(info.driver_id)
    await console_until(vm_driver, info.driver_id, "NEFOS-READY", count=3)
    assert (await vm_driver.get(info.driver_id)).state is InstanceState.RUNNING

    await vm_driver.destroy(info.driver_id)
    with pytest.raises(libvirt.libvirtError):
        host.lookupByUUIDString(info.driver_id)
    assert pool_volumes(host, spec.nefos_id) == []
    print(f"boot to user data: {booted:.1f}s ({vm_driver.domain_type})")


async def test_a_plain_spec_command_runs_as_user_data_with_its_env(
    vm_driver: LibvirtDriver,
) -> None:
    spec = InstanceSpec(
        nefos_id=f"vm{uuid.uuid4().hex[:12]}",
        project_id="vm-project",
        name="cmd",
        image=vm_image(),
        command=("/bin/sh", "-c", 'echo "greeting=$GREETING"'),
        env={"GREETING": "hello from env; $(not expanded)"},
        memory_mb=128,
        labels={RUN_LABEL: RUN_ID},
    )
    info = await vm_driver.create(spec)
    try:
        await vm_driver.start(info.driver_id)
        await console_until(vm_driver, info.driver_id, "greeting=hello from env; $(not expanded)\n")
    finally:
        await vm_driver.destroy(info.driver_id)


async def test_memory_below_what_the_kernel_needs_is_invalid_spec_and_leaves_nothing(
    vm_driver: LibvirtDriver, host: libvirt.virConnect
) -> None:
    spec = vm_spec(memory_mb=64)
    with pytest.raises(InvalidSpec, match="needs at least"):
        await vm_driver.create(spec)
    assert await vm_driver.list({LABEL_ID: spec.nefos_id}) == []
    assert pool_volumes(host, spec.nefos_id) == []


async def test_user_data_and_a_command_together_are_invalid_spec(
    vm_driver: LibvirtDriver,
) -> None:
    spec = vm_spec(user_data="#!/bin/sh\ntrue\n", command=("true",))
    with pytest.raises(InvalidSpec, match="not both"):
        await vm_driver.create(spec)
    assert await vm_driver.list({LABEL_ID: spec.nefos_id}) == []


async def test_a_domain_without_nefos_metadata_is_not_ours_and_is_left_alone(
    vm_driver: LibvirtDriver, host: libvirt.virConnect
) -> None:
    name = f"nefos-foreign-{RUN_ID}"
    dom = host.defineXML(
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    try:
        for ref in (dom.UUIDString(), name):
            with pytest.raises(InstanceNotFound):
                await vm_driver.get(ref)
            await vm_driver.destroy(ref)  # "gone" from Nefos's view; nothing is touched
        assert dom.UUIDString() not in {i.driver_id for i in await vm_driver.list()}
        assert host.lookupByName(name).UUIDString() == dom.UUIDString()
    finally:
        dom.undefine()


async def test_the_domain_xml_carries_the_nefos_metadata(
    vm_driver: LibvirtDriver, host: libvirt.virConnect
) -> None:
    spec = vm_spec(labels={RUN_LABEL: RUN_ID, "tier": "web"})
    info = await vm_driver.create(spec)
    try:
        xml = host.lookupByUUIDString(info.driver_id).XMLDesc(0)
        ns = "urn:nefos:libvirt:instance:1"
        root = ET.fromstring(xml)
        instance = root.find(f"metadata/{{{ns}}}instance")
        assert instance is not None
        assert instance.findtext(f"{{{ns}}}id") == spec.nefos_id
        assert instance.findtext(f"{{{ns}}}project") == "vm-project"
        labels = {el.get("key"): el.text for el in instance.findall(f"{{{ns}}}label")}
        assert labels == {**spec.all_labels()}
        found = await vm_driver.list({"tier": "web", RUN_LABEL: RUN_ID})
        assert [i.driver_id for i in found] == [info.driver_id]
    finally:
        await vm_driver.destroy(info.driver_id)


async def console_reads_until(console: Any, needle: bytes, seconds: float = BOOT_SECONDS) -> bytes:
    """What the interactive console printed, once ``needle`` is in it."""
    seen = b""
    async with asyncio.timeout(seconds):
        while needle not in seen:
            chunk = await console.read()
            if not chunk:
                pytest.fail(f"the console ended before {needle!r}:\n{seen!r}")
            seen += chunk
    return seen


async def test_the_serial_console_is_interactive_one_at_a_time_and_ends_with_the_vm(
    vm_driver: LibvirtDriver,
) -> None:
    spec = vm_spec(name="Console")
    info = await vm_driver.create(spec)
    try:
        with pytest.raises(InvalidState):  # not running
            await vm_driver.open_console(info.driver_id)
        await vm_driver.start(info.driver_id)
        await console_until(vm_driver, info.driver_id, "NEFOS-READY")
        first = await vm_driver.open_console(info.driver_id)
        # The guest's shell on ttyS0 runs what is typed; the answer is computed in it.
        await first.write(b"echo console-$((6*7))\n")
        await console_reads_until(first, b"console-42")
        assert await first.exit_code() is None
        # A second one is refused while the first is open, unless it takes over.
        with pytest.raises(InvalidState):
            await vm_driver.open_console(info.driver_id)
        second = await vm_driver.open_console(info.driver_id, force=True)
        async with asyncio.timeout(30):
            while await first.read():
                pass
        with pytest.raises(DriverError):
            await first.write(b"echo too late\n")
        await first.close()
        await second.write(b"echo second-$((7*7))\n")
        await console_reads_until(second, b"second-49")
        # The VM stopping ends the console.
        await vm_driver.stop(info.driver_id, grace_seconds=0)
        async with asyncio.timeout(30):
            while await second.read():
                pass
        await second.close()
        await second.close()  # idempotent
    finally:
        await vm_driver.destroy(info.driver_id)
    with pytest.raises(InstanceNotFound):
        await vm_driver.open_console(info.driver_id)
