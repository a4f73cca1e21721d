"""The libvirt driver: virtual machines through libvirt (QEMU with KVM, or TCG)."""

from nefos.drivers.base import BackupInfo, NetworkInfo, SnapshotInfo, VolumeInfo
from nefos.drivers.libvirt.driver import LibvirtDriver, VmSpec, domain_name

__all__ = [
    "BackupInfo",
    "LibvirtDriver",
    "NetworkInfo",
    "SnapshotInfo",
    "VmSpec",
    "VolumeInfo",
    "domain_name",
]
