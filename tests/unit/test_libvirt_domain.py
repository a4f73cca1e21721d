"""The libvirt driver's pure parts: domain XML, Nefos metadata, the kernel's memory
floor, and the NoCloud seed's files. No libvirtd needed."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET

import pytest

from nefos.drivers.libvirt.domain import (
    NAMESPACE,
    BootSource,
    DomainPlan,
    NefosMetadata,
    cpu_quota_us,
    domain_xml,
    kernel_min_memory_mb,
    parse_metadata,
    probe_xml,
    vcpus_for,
)
from nefos.drivers.libvirt.seed import command_script, hostname_for, meta_data

MD = NefosMetadata(
    nefos_id="v1",
    project_id="p1",
    name="web & <db>",
    image="/images/tiny",
    labels={"nefos.id": "v1", "nefos.managed": "true", "tier": 'a"b'},
)


def plan(**overrides: object) -> DomainPlan:
    values: dict[str, object] = {
        "name": "nefos-v1",
        "domain_type": "qemu",
        "cpu": 0.5,
        "memory_mb": 128,
        "boot": BootSource(kernel="/k/vmlinuz", initrd="/k/initrd.img", cmdline="console=ttyS0"),
        "console_log": "/pool/nefos-v1.console.log",
        "seed": "/pool/nefos-v1.seed.iso",
        "root_disk": None,
        "network": None,
        "metadata": MD,
    }
    values.update(overrides)
    return DomainPlan(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cpu", "vcpus", "quota"),
    [(0.25, 1, 25000), (0.5, 1, 50000), (1.0, 1, None), (1.5, 2, 150000), (2.0, 2, None)],
)
def test_cpu_becomes_whole_vcpus_and_a_cap_when_fractional(
    cpu: float, vcpus: int, quota: int | None
) -> None:
    assert vcpus_for(cpu) == vcpus
    assert cpu_quota_us(cpu) == quota


def test_domain_xml_for_a_kernel_boot() -> None:
    root = ET.fromstring(domain_xml(plan()))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "nefos-v1"
    assert root.find("memory") is not None and root.findtext("memory") == "128"
    assert root.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert root.findtext("vcpu") == "1"
    assert root.findtext("cputune/global_period") == "100000"
    assert root.findtext("cputune/global_quota") == "50000"
    assert root.findtext("os/kernel") == "/k/vmlinuz"
    assert root.findtext("os/initrd") == "/k/initrd.img"
    assert root.findtext("os/cmdline") == "console=ttyS0"
    assert root.findtext("on_poweroff") == "destroy"
    [seed] = root.findall("devices/disk")
    assert seed.find("source").get("file") == "/pool/nefos-v1.seed.iso"  # type: ignore[union-attr]
    assert seed.find("readonly") is not None
    assert root.find("devices/interface").get("type") == "ethernet"  # type: ignore[union-attr]
    log = root.find("devices/serial/log")
    assert log is not None and log.get("file") == "/pool/nefos-v1.console.log"
    assert log.get("append") == "on"
    assert root.find("devices/memballoon/stats") is not None


def test_domain_xml_for_a_disk_image_with_a_network() -> None:
    p = plan(
        cpu=2.0,
        boot=BootSource(base_disk="/pool/base.qcow2"),
        root_disk="/pool/nefos-v1.root.qcow2",
        network="isolated-1",
    )
    root = ET.fromstring(domain_xml(p))
    assert root.find("cputune") is None
    assert root.find("os/kernel") is None
    assert root.find("os/boot").get("dev") == "hd"  # type: ignore[union-attr]
    disks = root.findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb"]  # type: ignore[union-attr]
    assert disks[0].find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    nic = root.find("devices/interface")
    assert nic is not None and nic.get("type") == "network"
    assert nic.find("source").get("network") == "isolated-1"  # type: ignore[union-attr]


def test_metadata_declares_its_namespace_on_itself_and_round_trips() -> None:
    xml = domain_xml(plan())
    # libvirt keeps a metadata element only if the element declares its namespace.
    assert f'<metadata><nefos:instance xmlns:nefos="{NAMESPACE}">' in xml
    instance = ET.fromstring(xml).find(f"metadata/{{{NAMESPACE}}}instance")
    assert instance is not None
    assert parse_metadata(ET.tostring(instance, encoding="unicode")) == MD


def test_metadata_as_libvirt_returns_it_without_its_namespace() -> None:
    # virDomainGetMetadata strips the namespace off the element it returns.
    raw = (
        "<instance>\n  <id>v1</id>\n  <project>p1</project>\n  <name>web</name>\n"
        '  <image>tiny</image>\n  <label key="nefos.managed">true</label>\n</instance>'
    )
    md = parse_metadata(raw)
    assert md == NefosMetadata("v1", "p1", "web", "tiny", {"nefos.managed": "true"})


@pytest.mark.parametrize(
    "raw",
    ["", "<instance/>", "<other><id>x</id></other>", "<instance><id></id></instance>", "<oops"],
)
def test_metadata_that_is_not_ours_is_none(raw: str) -> None:
    assert parse_metadata(raw) is None


def test_the_probe_guest_ends_itself() -> None:
    root = ET.fromstring(probe_xml("nefos-kvm-probe-1", "kvm", "/k/vmlinuz"))
    assert root.get("type") == "kvm"
    assert "panic=-1" in (root.findtext("os/cmdline") or "")
    assert root.find("os/initrd") is None
    assert {root.findtext(e) for e in ("on_poweroff", "on_reboot", "on_crash")} == {"destroy"}


def _bzimage_header(version: int, pref_address: int, init_size: int) -> bytes:
    header = bytearray(0x300)
    header[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", header, 0x206, version)
    struct.pack_into("<Q", header, 0x258, pref_address)
    struct.pack_into("<I", header, 0x260, init_size)
    return bytes(header)


def test_the_kernel_memory_floor_comes_from_the_bzimage_header() -> None:
    # Debian 12's cloud kernel: loaded at 16 MiB, 51.47 MiB to unpack into.
    assert kernel_min_memory_mb(_bzimage_header(0x020F, 0x1000000, 53968896)) == 68
    assert kernel_min_memory_mb(_bzimage_header(0x0209, 0x1000000, 53968896)) is None
    assert kernel_min_memory_mb(b"\x7fELF" + bytes(0x300)) is None
    assert kernel_min_memory_mb(b"short") is None


def test_meta_data_is_plain_yaml_a_shell_can_read() -> None:
    text = meta_data(instance_id="v1", hostname="web-1", ssh_keys=["ssh-ed25519 AAA a@b", "k2"])
    assert text == (
        'instance-id: "v1"\n'
        'local-hostname: "web-1"\n'
        "public-keys:\n"
        '  - "ssh-ed25519 AAA a@b"\n'
        '  - "k2"\n'
    )
    assert "public-keys" not in meta_data(instance_id="v1", hostname="h", ssh_keys=[])


def test_a_command_becomes_a_shell_script_with_its_env_quoted() -> None:
    script = command_script(["/bin/sh", "-c", "echo $A"], {"A": "x'y $(z)", "B_2": ""})
    assert script == ("#!/bin/sh\nexport A='x'\"'\"'y $(z)'\nexport B_2=''\n/bin/sh -c 'echo $A'\n")
    with pytest.raises(ValueError, match="not a shell variable name"):
        command_script(["true"], {"NOT-OK": "1"})


@pytest.mark.parametrize(
    ("name", "expected"),
    [("Web Server #1", "web-server-1"), ("---", "nefos-x"), ("a" * 80, "a" * 63), ("ok", "ok")],
)
def test_hostnames_are_rfc1123_labels(name: str, expected: str) -> None:
    assert hostname_for(name, "nefos-x") == expected
