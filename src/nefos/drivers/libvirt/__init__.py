"""The libvirt driver: virtual machines through libvirt (QEMU with KVM, or TCG)."""

from nefos.drivers.libvirt.driver import LibvirtDriver, VmSpec

__all__ = ["LibvirtDriver", "VmSpec"]
