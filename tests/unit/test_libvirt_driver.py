"""The libvirt driver's mapping of libvirt's errors, states and stats, and its
settings; no libvirtd needed (libvirt-python only)."""

from __future__ import annotations

import libvirt
import pytest

from nefos.drivers.base import (
    DriverError,
    HostUnreachable,
    ImageNotFound,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
    InsufficientCapacity,
    InvalidSpec,
    InvalidState,
)
from nefos.drivers.libvirt import LibvirtDriver, VmSpec
from nefos.drivers.libvirt.driver import _vm_fields, state_of, stats_from, translate


def error(code: int, domain: int, message: str) -> libvirt.libvirtError:
    exc = libvirt.libvirtError(message)
    exc.err = (code, domain, message, 2, None, None, None, 0, 0)
    return exc


@pytest.mark.parametrize(
    ("code", "domain", "message", "creating", "expected"),
    [
        (
            libvirt.VIR_ERR_SYSTEM_ERROR,
            libvirt.VIR_FROM_RPC,
            "Failed to connect socket to '/run/libvirt/libvirt-sock': No such file or directory",
            False,
            HostUnreachable,
        ),
        (
            libvirt.VIR_ERR_INTERNAL_ERROR,
            libvirt.VIR_FROM_RPC,
            "client socket is closed",
            False,
            HostUnreachable,
        ),
        (
            libvirt.VIR_ERR_OPERATION_TIMEOUT,
            libvirt.VIR_FROM_QEMU,
            "cannot acquire state change lock",
            False,
            HostUnreachable,
        ),
        (
            libvirt.VIR_ERR_NO_DOMAIN,
            libvirt.VIR_FROM_QEMU,
            "Domain not found",
            False,
            InstanceNotFound,
        ),
        (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_FROM_STORAGE, "no vol", True, ImageNotFound),
        (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_FROM_STORAGE, "no vol", False, DriverError),
        (
            libvirt.VIR_ERR_OPERATION_FAILED,
            libvirt.VIR_FROM_DOMAIN,
            "operation failed: domain 'nefos-x' already exists with uuid 1",
            True,
            InvalidSpec,
        ),
        (
            libvirt.VIR_ERR_INTERNAL_ERROR,
            libvirt.VIR_FROM_QEMU,
            "qemu unexpectedly closed the monitor: cannot set up guest memory 'pc.ram': "
            "Cannot allocate memory",
            False,
            InsufficientCapacity,
        ),
        (libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_FROM_DOMAIN, "bad xml", True, InvalidSpec),
        (
            libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
            libvirt.VIR_FROM_QEMU,
            "unsupported configuration: domain type 'kvm' is not supported",
            True,
            InvalidSpec,
        ),
        (
            libvirt.VIR_ERR_OPERATION_INVALID,
            libvirt.VIR_FROM_QEMU,
            "domain is not running",
            False,
            InvalidState,
        ),
        (
            libvirt.VIR_ERR_INTERNAL_ERROR,
            libvirt.VIR_FROM_QEMU,
            "something else",
            False,
            DriverError,
        ),
    ],
)
def test_libvirt_errors_map_to_the_driver_error_tree(
    code: int, domain: int, message: str, creating: bool, expected: type[DriverError]
) -> None:
    err = translate(error(code, domain, message), "i-1", creating=creating)
    assert type(err) is expected
    assert err.instance_id == "i-1"
    assert message in err.message


@pytest.mark.parametrize(
    ("state", "reason", "expected"),
    [
        (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED, InstanceState.RUNNING),
        (libvirt.VIR_DOMAIN_BLOCKED, 0, InstanceState.RUNNING),
        (libvirt.VIR_DOMAIN_SHUTDOWN, 0, InstanceState.RUNNING),
        (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER, InstanceState.PAUSED),
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN, InstanceState.STOPPED),
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN, InstanceState.STOPPED),
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_FAILED, InstanceState.STOPPED),
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED, InstanceState.ERROR),
        (libvirt.VIR_DOMAIN_CRASHED, 0, InstanceState.ERROR),
        (libvirt.VIR_DOMAIN_PMSUSPENDED, 0, InstanceState.PAUSED),
        (99, 0, InstanceState.ERROR),
    ],
)
def test_domain_states(state: int, reason: int, expected: InstanceState) -> None:
    assert state_of(state, reason) is expected


def test_stats_use_the_guests_own_memory_figures() -> None:
    raw = {
        "balloon.maximum": 131072,
        "balloon.available": 94780,
        "balloon.unused": 65000,
        "balloon.disk_caches": 2856,
        "balloon.rss": 237756,  # QEMU's own memory included: more than the VM has
        "net.count": 2,
        "net.0.rx.bytes": 700,
        "net.0.tx.bytes": 2000,
        "net.1.rx.bytes": 26,
        "net.1.tx.bytes": 778,
    }
    stats = stats_from(raw, 0, (1_000_000_000, 10.0), (1_500_000_000, 11.0))
    assert stats.memory_limit_bytes == 128 * 1024**2
    assert stats.memory_bytes == (94780 - 65000 - 2856) * 1024
    assert stats.memory_percent == pytest.approx(stats.memory_bytes / (128 * 1024**2) * 100)
    assert stats.cpu_percent == pytest.approx(50.0)
    assert (stats.net_rx_bytes, stats.net_tx_bytes) == (726, 2778)


def test_stats_without_a_balloon_driver_fall_back_to_qemus_memory_capped() -> None:
    raw = {"balloon.maximum": 131072, "balloon.rss": 237756}
    stats = stats_from(raw, 0, (0, 1.0), (0, 1.0))
    assert stats.memory_bytes == stats.memory_limit_bytes == 128 * 1024**2
    assert stats.cpu_percent == 0.0
    assert (stats.net_rx_bytes, stats.net_tx_bytes) == (0, 0)


def test_vm_fields_come_from_a_vm_spec_or_default_to_none() -> None:
    base = {"nefos_id": "v1", "project_id": "p", "name": "n", "image": "tiny"}
    assert _vm_fields(InstanceSpec(**base)) == (None, ())
    spec = VmSpec(**base, user_data="#cloud-config\n", ssh_keys=("k1", "k2"))
    assert _vm_fields(spec) == ("#cloud-config\n", ("k1", "k2"))


@pytest.mark.parametrize("uri", ["", "http://example.com", "docker:///x", "/var/run/sock"])
def test_a_uri_that_is_not_libvirt_qemu_is_refused(uri: str) -> None:
    with pytest.raises(ValueError, match="not a libvirt QEMU URI"):
        LibvirtDriver(uri)


def test_the_domain_type_setting_is_checked_and_auto_is_unresolved_until_probed() -> None:
    with pytest.raises(ValueError, match="domain_type"):
        LibvirtDriver("qemu:///system", domain_type="xen")  # type: ignore[arg-type]
    assert LibvirtDriver("qemu:///system").domain_type is None
    assert LibvirtDriver("qemu:///system", domain_type="qemu").domain_type == "qemu"
    assert LibvirtDriver("qemu+ssh://root@h/system").local is False
    assert LibvirtDriver("qemu:///system").local is True


async def test_a_dead_socket_is_host_unreachable_at_once() -> None:
    driver = LibvirtDriver("qemu:///system?socket=/nonexistent/nefos-unit.sock")
    with pytest.raises(HostUnreachable, match="nefos-unit.sock"):
        await driver.ping()
    await driver.close()
