"""Drivers under contract test: one harness per driver, the same tests for all.

To add a driver, write a ``_<name>_harness`` that yields a :class:`Harness` and
list it in ``HARNESSES``. A harness gives the tests what only it can know: an
image that serves HTTP, an image name the host lacks, a driver pointed at a dead
host, the host's own view of an instance's isolation (read from the engine or
hypervisor, not from the driver under test), and the size its instances need: a
VM's kernel needs more memory than a container, and more time to boot.

Every instance a test makes carries ``nefos.test-run=<this run>``; the harness
destroys them all at the end, whatever the tests did.
"""

from __future__ import annotations

import os
import uuid
import warnings
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nefos.drivers.base import ComputeDriver, HostUnreachable, InstanceSpec, PortSpec

ROOT = Path(__file__).resolve().parents[2]
RUN_ID = uuid.uuid4().hex[:12]
RUN_LABEL = "nefos.test-run"
HTTP_PORT = 8080
GREETING = "hello-from-nefos-contract"
PAGE = "nefos test page"


@dataclass(frozen=True)
class Isolation:
    """What the host enforces on an instance, as the host itself reports it."""

    privileged: bool
    all_capabilities_dropped: bool
    no_new_privileges: bool
    pids_limit: int | None  # None: no such limit applies (a VM's processes are its guest's)
    memory_bytes: int
    cpu: float
    host_mounts: int


@dataclass
class Harness:
    driver: ComputeDriver
    web_image: str  # serves PAGE over HTTP on HTTP_PORT
    missing_image: str
    unreachable: Callable[[], ComputeDriver]
    isolation: Callable[[str], Isolation]
    made: list[str] = field(default_factory=list)
    #: What a test instance gets unless a test says otherwise.
    cpu: float = 0.5
    memory_mb: int = 64
    #: How long an instance may take from start() to its first console output.
    boot_seconds: float = 15

    def spec(self, **overrides: Any) -> InstanceSpec:
        nefos_id = overrides.pop("nefos_id", f"t{uuid.uuid4().hex[:16]}")
        values: dict[str, Any] = {
            "nefos_id": nefos_id,
            "project_id": "contract-project",
            "name": f"contract-{nefos_id}",
            "image": self.web_image,
            # Prints a line (for logs()) then serves /www (for the HTTP check).
            "command": (
                "/bin/sh",
                "-c",
                f"echo {GREETING}; exec httpd -f -v -p {HTTP_PORT} -h /www",
            ),
            "ports": (PortSpec(HTTP_PORT),),
            "cpu": self.cpu,
            "memory_mb": self.memory_mb,
            "pids_limit": 64,
            "labels": {RUN_LABEL: RUN_ID},
        }
        values.update(overrides)
        values["labels"] = {**values["labels"], RUN_LABEL: RUN_ID}
        return InstanceSpec(**values)


def _docker_harness() -> Harness:
    import docker

    from nefos.drivers.docker import DockerDriver

    url = os.environ.get("NEFOS_TEST_DOCKER_HOST")
    if not url:
        pytest.fail(
            "NEFOS_TEST_DOCKER_HOST is not set: run `make test`, which starts Podman "
            "(scripts/bootstrap-services.sh) and sets it."
        )
    engine = docker.APIClient(base_url=url, version="1.41")

    def isolation(driver_id: str) -> Isolation:
        attrs = engine.inspect_container(driver_id)
        host = attrs["HostConfig"]
        return Isolation(
            privileged=bool(host.get("Privileged")),
            # Podman reports CapDrop as the list of defaults it dropped, Docker as
            # ["ALL"]: read what the container's main process really holds instead.
            all_capabilities_dropped=_capabilities(int(attrs["State"]["Pid"])) == (0, 0)
            and not host.get("CapAdd"),
            no_new_privileges=any(
                o.startswith("no-new-privileges") for o in host.get("SecurityOpt") or ()
            ),
            pids_limit=int(host.get("PidsLimit") or 0),
            memory_bytes=int(host.get("Memory") or 0),
            cpu=int(host.get("NanoCpus") or 0) / 1e9,
            host_mounts=len(host.get("Binds") or ()),
        )

    return Harness(
        driver=DockerDriver(url),
        web_image=os.environ.get("NEFOS_TEST_IMAGE", "localhost/nefos-busybox:test"),
        missing_image=f"localhost/nefos-no-such-image:{RUN_ID}",
        unreachable=lambda: DockerDriver("unix:///nonexistent/nefos-dead.sock", timeout=5),
        isolation=isolation,
    )


def _capabilities(pid: int) -> tuple[int, int]:
    """(effective, bounding) capability masks of a local process."""
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(status["CapEff"], 16), int(status["CapBnd"], 16)


def _sim_harness() -> Harness:
    """The simulated host (nothing runs: see nefos/drivers/sim/driver.py).

    It publishes no ports (``supports_ports`` is false), so the tests that fetch a
    page over HTTP skip; its logs quote the command a start would run, in place
    of the console output of a command that never runs.
    """
    from nefos.drivers import sim
    from nefos.drivers.sim import SimDriver

    host = f"contract-{RUN_ID}"
    dead = f"contract-dead-{RUN_ID}"

    def unreachable() -> ComputeDriver:
        sim.set_reachable(dead, False)
        return SimDriver(f"sim://{dead}")

    def isolation(driver_id: str) -> Isolation:
        # The sim host's own record of what the driver applied, read past the
        # driver. A sim instance runs no process, so it holds no privilege,
        # capability or host mount: only the limits are really checked.
        spec = sim.recorded_spec(host, driver_id)
        return Isolation(
            privileged=False,
            all_capabilities_dropped=True,
            no_new_privileges=True,
            pids_limit=spec.pids_limit,
            memory_bytes=spec.memory_mb * 1024**2,
            cpu=spec.cpu,
            host_mounts=0,
        )

    return Harness(
        driver=SimDriver(f"sim://{host}?cpus=8&memory_mb=16384&disk_gb=100"),
        # A sim host has every image but those starting "missing" or holding
        # "does-not-exist"; it serves no HTTP from any of them.
        web_image="localhost/nefos-busybox:test",
        missing_image=f"localhost/does-not-exist:{RUN_ID}",
        unreachable=unreachable,
        isolation=isolation,
    )


#: Every libvirt test driver made: the first one whose "auto" probe has run tells
#: the later ones the domain type, so the probe runs once a session.
_LIBVIRT_DRIVERS: list[Any] = []


def libvirt_test_driver(uri: str) -> Any:
    """A LibvirtDriver for the tests: domain type from NEFOS_TEST_LIBVIRT_DOMAIN_TYPE,
    else what an earlier test driver's probe found, else "auto" (it probes)."""
    from nefos.drivers.libvirt import LibvirtDriver

    setting = os.environ.get("NEFOS_TEST_LIBVIRT_DOMAIN_TYPE") or next(
        (d.domain_type for d in _LIBVIRT_DRIVERS if d.domain_type), "auto"
    )
    driver = LibvirtDriver(uri, domain_type=setting)
    _LIBVIRT_DRIVERS.append(driver)
    return driver


def libvirt_uri() -> str:
    uri = os.environ.get("NEFOS_TEST_LIBVIRT_URI")
    if not uri:
        pytest.fail(
            "NEFOS_TEST_LIBVIRT_URI is not set: run `make test`, which starts libvirtd "
            "(scripts/bootstrap-services.sh) and sets it."
        )
    return uri


def vm_image() -> str:
    """The tiny bootable image of scripts/build-vm-image.sh (a kernel-boot directory)."""
    image = os.environ.get("NEFOS_TEST_VM_IMAGE") or str(ROOT / "var" / "images" / "nefos-tiny")
    if not (Path(image) / "vmlinuz").is_file():
        pytest.fail(f"no VM image at {image}: run `make services` (scripts/build-vm-image.sh)")
    return image


def _libvirt_harness() -> Harness:
    """VMs on the local libvirtd, booting the tiny image (Debian's kernel and a
    busybox initramfs, scripts/build-vm-image.sh) under QEMU: KVM where it works,
    TCG here. The guest's init runs the spec's command (the driver hands it over
    as a ``#!/bin/sh`` user data), so GREETING reaches the serial console.

    A VM publishes no ports (``supports_ports`` is false: the HTTP tests skip) and
    has no container isolation to check (the capability checks are for
    containers); the host enforces its memory and CPU (a CFS cap on the QEMU
    process), and what QEMU runs as is read from /proc. Its kernel needs 70 MiB
    to unpack itself, so instances get 128 MiB, and 1 vCPU uncapped so that the
    boot (about 8 s under TCG) is not slowed to half speed.
    """
    import libvirt

    uri = libvirt_uri()
    image = vm_image()

    def isolation(driver_id: str) -> Isolation:
        conn = libvirt.open(uri)
        try:
            dom = conn.lookupByUUIDString(driver_id)
            root = ET.fromstring(dom.XMLDesc(0))
            name = dom.name()
        finally:
            conn.close()
        memory = root.find("memory")
        assert memory is not None and memory.text
        units = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "b": 1, "bytes": 1}
        quota, period = (
            root.findtext("cputune/global_quota"),
            root.findtext("cputune/global_period"),
        )
        cpu = int(quota) / int(period) if quota and period else float(root.findtext("vcpu") or 0)
        pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
        status = dict(
            line.split(":\t", 1)
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if ":\t" in line
        )
        return Isolation(
            # QEMU runs as an unprivileged user, and no host device is passed through.
            privileged=int(status["Uid"].split()[1]) == 0 or bool(root.findall("devices/hostdev")),
            all_capabilities_dropped=int(status["CapEff"], 16) == 0,
            no_new_privileges=status.get("NoNewPrivs", "0").strip() == "1",
            pids_limit=None,
            memory_bytes=int(memory.text) * units[memory.get("unit", "KiB")],
            cpu=cpu,
            host_mounts=len(root.findall("devices/filesystem")),
        )

    return Harness(
        driver=libvirt_test_driver(uri),
        web_image=image,
        missing_image=f"nefos-no-such-image-{RUN_ID}",
        unreachable=lambda: libvirt_test_driver(
            "qemu:///system?socket=/nonexistent/nefos-dead-libvirt.sock"
        ),
        isolation=isolation,
        cpu=1.0,
        memory_mb=128,
        boot_seconds=90,
    )


HARNESSES: dict[str, Callable[[], Harness]] = {
    "docker": _docker_harness,
    "libvirt": _libvirt_harness,
    "sim": _sim_harness,
}


@pytest.fixture(scope="session", params=sorted(HARNESSES))
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    h = HARNESSES[request.param]()
    try:
        with warnings.catch_warnings():
            # docker-py leaves a failed connect's socket to the collector.
            warnings.simplefilter("ignore", ResourceWarning)
            await h.driver.ping()
    except HostUnreachable as exc:
        pytest.fail(
            f"the {request.param} driver's host does not answer ({exc}): run `make test`, "
            "which starts it (scripts/bootstrap-services.sh)."
        )
    yield h
    for info in await h.driver.list({RUN_LABEL: RUN_ID}):
        await h.driver.destroy(info.driver_id)
    await h.driver.close()


@pytest.fixture
def driver(harness: Harness) -> ComputeDriver:
    return harness.driver
