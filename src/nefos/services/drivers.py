"""One driver object per host, made on first use from the host's driver and URI.

Services ask ``DriverManager.for_host(host)``; the manager builds the driver the
host names (``docker``, ``sim``; ``libvirt`` arrives with the VM issue), keeps it
while the host's URI stays the same, and closes it when the host goes away.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

from nefos.domain.errors import ValidationFailed
from nefos.drivers.base import ComputeDriver

#: driver name -> (module, class). Imported lazily: a platform without the docker
#: SDK (or, later, libvirt-python) still serves the hosts it can drive.
DRIVERS: dict[str, tuple[str, str]] = {
    "docker": ("nefos.drivers.docker", "DockerDriver"),
    "sim": ("nefos.drivers.sim", "SimDriver"),
}

#: What ``hypervisor_type`` a driver's hosts report when the caller names none.
HYPERVISOR_TYPES: dict[str, str] = {"docker": "docker", "sim": "sim", "libvirt": "kvm"}


class HostRef(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def driver(self) -> str: ...
    @property
    def uri(self) -> str: ...


@dataclass(frozen=True)
class _Entry:
    uri: str
    driver: ComputeDriver


def supported_driver(name: str) -> bool:
    return name in DRIVERS


def build_driver(name: str, uri: str, *, timeout: float, pull: bool = False) -> ComputeDriver:
    """A new driver for ``uri``; ``ValidationFailed`` for an unknown driver or bad URI."""
    if name not in DRIVERS:
        raise ValidationFailed(
            f"Unknown or unavailable driver {name!r}",
            driver=f"one of: {', '.join(sorted(DRIVERS))}",
        )
    module, cls_name = DRIVERS[name]
    cls = getattr(importlib.import_module(module), cls_name)
    try:
        if name == "docker":
            driver: ComputeDriver = cls(uri, timeout=timeout, pull=pull)
        else:
            driver = cls(uri)
    except Exception as exc:  # the libraries' own URL errors
        raise ValidationFailed(f"Invalid {name} URI: {exc}", uri=str(exc)) from exc
    return driver


class DriverManager:
    def __init__(self, *, timeout: float, pull_images: bool = False) -> None:
        self.timeout = timeout
        self.pull_images = pull_images
        self._drivers: dict[str, _Entry] = {}
        self._retired: list[ComputeDriver] = []

    def for_host(self, host: HostRef) -> ComputeDriver:
        entry = self._drivers.get(host.id)
        if entry is None or entry.uri != host.uri:
            if entry is not None:
                self._retired.append(entry.driver)  # closed with the manager
            entry = _Entry(
                host.uri,
                build_driver(host.driver, host.uri, timeout=self.timeout, pull=self.pull_images),
            )
            self._drivers[host.id] = entry
        return entry.driver

    async def forget(self, host_id: str) -> None:
        entry = self._drivers.pop(host_id, None)
        if entry is not None:
            await entry.driver.close()

    async def close(self) -> None:
        drivers = [e.driver for e in self._drivers.values()] + self._retired
        self._drivers, self._retired = {}, []
        for driver in drivers:
            await driver.close()
