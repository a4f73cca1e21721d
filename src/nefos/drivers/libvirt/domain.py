"""Domain XML for Nefos VMs, built from a plan and read back: pure, no I/O.

A Nefos domain carries its identity in ``<metadata>``, in the namespace
:data:`NAMESPACE`::

    <nefos:instance xmlns:nefos="urn:nefos:libvirt:instance:1">
      <nefos:id>v1</nefos:id>
      <nefos:project>p1</nefos:project>
      <nefos:name>web-1</nefos:name>
      <nefos:image>/var/lib/nefos/images/tiny</nefos:image>
      <nefos:label key="nefos.managed">true</nefos:label>
      ...
    </nefos:instance>

The labels are the spec's ``all_labels()``, so :meth:`LibvirtDriver.list` filters
on them exactly as the docker driver filters on container labels.
"""

from __future__ import annotations

import math
import struct
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

NAMESPACE = "urn:nefos:libvirt:instance:1"
PREFIX = "nefos"
ET.register_namespace(PREFIX, NAMESPACE)

DomainType = Literal["kvm", "qemu"]

#: The CFS period a fractional CPU limit is expressed in (microseconds).
CPU_PERIOD_US = 100_000
#: The kernel command line of a kernel-boot image that names none.
DEFAULT_CMDLINE = "console=ttyS0"
_MIB = 1024**2


def _q(tag: str) -> str:
    return f"{{{NAMESPACE}}}{tag}"


@dataclass(frozen=True, slots=True)
class BootSource:
    """What a domain boots: a kernel (with initrd and command line) or a root disk."""

    kernel: str | None = None  # a path on the host
    initrd: str | None = None
    cmdline: str = DEFAULT_CMDLINE
    base_disk: str | None = None  # a disk image on the host; the domain gets an overlay
    base_format: Literal["qcow2", "raw"] = "qcow2"  # the base disk's format


@dataclass(frozen=True, slots=True)
class NefosMetadata:
    nefos_id: str
    project_id: str
    name: str
    image: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DomainPlan:
    """Everything the domain XML says, decided by the driver."""

    name: str  # the libvirt domain name, nefos-<id>
    domain_type: DomainType
    cpu: float  # cores, fractions allowed
    memory_mb: int
    boot: BootSource
    console_log: str  # host path the serial console is logged to
    seed: str | None  # host path of the NoCloud seed image (raw iso9660)
    #: Host path of the root disk (qcow2: an overlay of a disk image, a blank disk of
    #: a kernel-boot VM, or a restored copy), always the first virtio disk (vda).
    root_disk: str | None
    network: str | None  # a libvirt network, or None for a NIC on a host tap alone
    metadata: NefosMetadata

    @property
    def vcpus(self) -> int:
        return vcpus_for(self.cpu)


def vcpus_for(cpu: float) -> int:
    """A VM gets whole vCPUs: the spec's cores rounded up, at least one."""
    return max(1, math.ceil(cpu - 1e-9))


def cpu_quota_us(cpu: float) -> int | None:
    """The CFS quota (per :data:`CPU_PERIOD_US`) that caps a VM at ``cpu`` cores.

    None when ``cpu`` is a whole number: its vCPUs are the limit already.
    """
    if math.isclose(cpu, vcpus_for(cpu)):
        return None
    return max(1000, round(cpu * CPU_PERIOD_US))


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def metadata_element(md: NefosMetadata) -> ET.Element:
    root = ET.Element(_q("instance"))
    _sub(root, _q("id"), md.nefos_id)
    _sub(root, _q("project"), md.project_id)
    _sub(root, _q("name"), md.name)
    _sub(root, _q("image"), md.image)
    for key, value in sorted(md.labels.items()):
        _sub(root, _q("label"), value, key=key)
    return root


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse_metadata(xml: str) -> NefosMetadata | None:
    """The ``<nefos:instance>`` element, or None when it is not one of ours or is
    malformed. ``virDomainGetMetadata`` returns it with the namespace stripped
    (``<instance><id>...``), the domain XML with it: both are read."""
    try:
        # libvirtd's own XML, of a domain it validated: not untrusted input.
        root = ET.fromstring(xml)  # noqa: S314
    except ET.ParseError:
        return None
    if root.tag not in ("instance", _q("instance")):
        return None
    fields: dict[str, str] = {}
    labels: dict[str, str] = {}
    for child in root:
        tag = _local(child.tag)
        if tag == "label":
            key = child.get("key")
            if key:
                labels[key] = child.text or ""
        elif tag in ("id", "project", "name", "image"):
            fields[tag] = child.text or ""
    if not fields.get("id"):
        return None
    return NefosMetadata(
        nefos_id=fields["id"],
        project_id=fields.get("project", ""),
        name=fields.get("name", ""),
        image=fields.get("image", ""),
        labels=labels,
    )


def domain_xml(plan: DomainPlan) -> str:
    dom = ET.Element("domain", type=plan.domain_type)
    _sub(dom, "name", plan.name)
    _sub(dom, "metadata")  # filled in below
    _sub(dom, "memory", str(plan.memory_mb), unit="MiB")
    _sub(dom, "currentMemory", str(plan.memory_mb), unit="MiB")
    _sub(dom, "vcpu", str(plan.vcpus))
    quota = cpu_quota_us(plan.cpu)
    if quota is not None:
        # A cap on the whole domain (vCPUs and QEMU's own threads): cpu=0.5 is half a core.
        tune = _sub(dom, "cputune")
        _sub(tune, "global_period", str(CPU_PERIOD_US))
        _sub(tune, "global_quota", str(quota))

    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm")
    if plan.boot.kernel is not None:
        _sub(os_el, "kernel", plan.boot.kernel)
        if plan.boot.initrd is not None:
            _sub(os_el, "initrd", plan.boot.initrd)
        _sub(os_el, "cmdline", plan.boot.cmdline)
    else:
        _sub(os_el, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _sub(dom, "clock", offset="utc")
    # Nefos's reconciler, not libvirt, decides what runs: a guest that powers off stays off.
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")

    devices = _sub(dom, "devices")
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    if plan.root_disk is not None:
        disk = _sub(devices, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type="qcow2")
        _sub(disk, "source", file=plan.root_disk)
        _sub(disk, "target", dev=f"vd{next(letters)}", bus="virtio")
    if plan.seed is not None:
        # Read-only, and left out of snapshots (an internal snapshot needs qcow2).
        disk = _sub(devices, "disk", type="file", device="disk", snapshot="no")
        _sub(disk, "driver", name="qemu", type="raw")
        _sub(disk, "source", file=plan.seed)
        _sub(disk, "target", dev=f"vd{next(letters)}", bus="virtio")
        _sub(disk, "readonly")
    if plan.network is not None:
        nic = _sub(devices, "interface", type="network")
        _sub(nic, "source", network=plan.network)
    else:
        nic = _sub(devices, "interface", type="ethernet")
    _sub(nic, "model", type="virtio")
    # The serial console: a pty (for interactive consoles) whose output virtlogd
    # appends to console_log, size-capped and rotated by virtlogd.
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=plan.console_log, append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    balloon = _sub(devices, "memballoon", model="virtio")
    _sub(balloon, "stats", period="2")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    # libvirt keeps a metadata element only with its namespace declared on the
    # element itself; ElementTree would hoist the declaration to <domain>.
    metadata = ET.tostring(metadata_element(plan.metadata), encoding="unicode")
    return ET.tostring(dom, encoding="unicode").replace(
        "<metadata />", f"<metadata>{metadata}</metadata>", 1
    )


@dataclass(frozen=True, slots=True)
class DiskRef:
    """One ``<disk>`` of a domain's XML."""

    target: str  # vda, vdb, ...
    source: str | None  # the host file (None for a disk without a file source)
    format: str | None  # the driver type: qcow2, raw
    device: str  # disk, cdrom, ...
    readonly: bool

    @property
    def writable_file(self) -> bool:
        """A writable disk backed by a host file: what snapshots and backups copy."""
        return self.device == "disk" and not self.readonly and self.source is not None


def disks_of(xml: str) -> list[DiskRef]:
    """The disks of a domain XML, in document order."""
    # libvirtd's own XML: not untrusted input.
    root = ET.fromstring(xml)  # noqa: S314
    found = []
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        if target is None or not target.get("dev"):
            continue
        source = disk.find("source")
        driver = disk.find("driver")
        found.append(
            DiskRef(
                target=str(target.get("dev")),
                source=source.get("file") if source is not None else None,
                format=driver.get("type") if driver is not None else None,
                device=disk.get("device", "disk"),
                readonly=disk.find("readonly") is not None,
            )
        )
    return found


def networks_of(xml: str) -> list[str]:
    """The libvirt networks a domain XML's interfaces join."""
    root = ET.fromstring(xml)  # noqa: S314
    return [
        str(src.get("network"))
        for nic in root.findall("devices/interface")
        if nic.get("type") == "network"
        and (src := nic.find("source")) is not None
        and src.get("network")
    ]


def disk_xml(path: str, target: str, *, serial: str | None = None) -> str:
    """A writable qcow2 virtio data disk, for attachDeviceFlags."""
    disk = ET.Element("disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2")
    _sub(disk, "source", file=path)
    _sub(disk, "target", dev=target, bus="virtio")
    if serial:
        _sub(disk, "serial", serial)
    return ET.tostring(disk, encoding="unicode")


def snapshot_xml(name: str, snapshot_id: str, disks: list[DiskRef]) -> str:
    """An internal, disk-only snapshot of every writable file disk; the rest (the
    read-only seed) named with ``snapshot='no'``, whatever the domain XML says."""
    snap = ET.Element("domainsnapshot")
    _sub(snap, "name", name)
    _sub(snap, "description", f"Nefos snapshot {snapshot_id}")
    listed = _sub(snap, "disks")
    for disk in disks:
        _sub(listed, "disk", name=disk.target, snapshot="internal" if disk.writable_file else "no")
    return ET.tostring(snap, encoding="unicode")


def probe_xml(name: str, domain_type: DomainType, kernel: str) -> str:
    """A throwaway guest that boots ``kernel`` with no init: the kernel panics once it
    is up, and the ``panic=-1`` reboot ends the domain. Ending in time = the
    accelerator runs guests."""
    dom = ET.Element("domain", type=domain_type)
    _sub(dom, "name", name)
    _sub(dom, "memory", "256", unit="MiB")
    _sub(dom, "vcpu", "1")
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm")
    _sub(os_el, "kernel", kernel)
    _sub(os_el, "cmdline", "console=ttyS0 panic=-1 rdinit=/nefos-probe init=/nefos-probe")
    _sub(_sub(dom, "features"), "acpi")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _sub(dom, event, "destroy")
    devices = _sub(dom, "devices")
    _sub(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


def kernel_min_memory_mb(header: bytes) -> int | None:
    """The least guest memory (MiB) an x86 bzImage can boot in, from its setup header.

    The decompressed kernel is placed at ``pref_address`` (16 MiB on Debian's
    kernels) and needs ``init_size`` bytes there, so memory below their sum cannot
    even hold it: such a guest reboots in a loop. None for anything that is not a
    bzImage with boot protocol 2.10+ (the fields are then unknown).
    """
    if len(header) < 0x264 or header[0x202:0x206] != b"HdrS":
        return None
    version: int = struct.unpack_from("<H", header, 0x206)[0]
    if version < 0x020A:
        return None
    pref_address: int = struct.unpack_from("<Q", header, 0x258)[0]
    init_size: int = struct.unpack_from("<I", header, 0x260)[0]
    return math.ceil((pref_address + init_size) / _MIB)


#: Bytes of a kernel image :func:`kernel_min_memory_mb` needs.
KERNEL_HEADER_BYTES = 0x264


#: Bytes of a qcow2 file :func:`qcow2_problem` reads.
QCOW2_HEADER_BYTES = 104
_QCOW2_MAGIC = b"QFI\xfb"
_QCOW2_EXTERNAL_DATA_FILE = 1 << 2


def qcow2_problem(header: bytes) -> str | None:
    """Why a file with this header may not be a base image, or None if it may.

    It must be qcow2 (version 2 or 3), and stand alone: no backing file and no
    external data file, either of which names a file on the host that the guest
    would then read.
    """
    if len(header) < 72 or header[:4] != _QCOW2_MAGIC:
        return "not a qcow2 image"
    version: int = struct.unpack_from(">I", header, 4)[0]
    if version not in (2, 3):
        return f"qcow2 version {version} is not supported"
    backing_offset: int = struct.unpack_from(">Q", header, 8)[0]
    if backing_offset:
        return "a qcow2 image with a backing file (flatten it: qemu-img convert)"
    if version == 3:
        if len(header) < 80:
            return "a truncated qcow2 header"
        incompatible: int = struct.unpack_from(">Q", header, 72)[0]
        if incompatible & _QCOW2_EXTERNAL_DATA_FILE:
            return "a qcow2 image with an external data file"
    return None
