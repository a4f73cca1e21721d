"""One driver object per host, made on first use from the host's driver and URI.

Services ask ``DriverManager.for_host(host)``; the manager builds the driver the
host names (``docker``, ``libvirt``, ``sim``), keeps it
while the host's URI stays the same, and closes it when the host goes away.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from nefos.domain.errors import ValidationFailed
from nefos.drivers.base import ComputeDriver

#: driver name -> (module, class). Imported lazily: a platform without the docker
#: SDK (or, later, libvirt-python) still serves the hosts it can drive.
DRIVERS: dict[str, tuple[str, str]] = {
    "docker": ("nefos.drivers.docker", "DockerDriver"),
    "libvirt": ("nefos.drivers.libvirt", "LibvirtDriver"),
    "sim": ("nefos.drivers.sim", "SimDriver"),
}

#: Which drivers run containers and which run VMs (placement asks by kind).
CONTAINER_DRIVERS = ("docker",)
VM_DRIVERS = ("libvirt",)

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
    """Is the driver known and its library importable here?"""
    if name not in DRIVERS:
        return False
    try:
        importlib.import_module(DRIVERS[name][0])
    except ImportError:
        return False
    return True


#: Driver name -> keyword arguments its constructor takes besides the URI.
DriverOptions = Mapping[str, Mapping[str, Any]]


def build_driver(
    name: str, uri: str, *, timeout: float, options: DriverOptions | None = None
) -> ComputeDriver:
    """A new driver for ``uri``; ``ValidationFailed`` for an unknown driver or bad URI.

    ``options[name]`` are the driver's own settings (the docker driver's ``pull``,
    the libvirt driver's ``domain_type``, ``pool``, ...)."""
    if name not in DRIVERS:
        raise ValidationFailed(
            f"Unknown or unavailable driver {name!r}",
            driver=f"one of: {', '.join(sorted(DRIVERS))}",
        )
    module, cls_name = DRIVERS[name]
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except ImportError as exc:
        raise ValidationFailed(
            f"The {name} driver is not installed here ({exc})", driver=name
        ) from exc
    kwargs = dict((options or {}).get(name, {}))
    if name != "sim":
        kwargs["timeout"] = timeout
    try:
        driver: ComputeDriver = cls(uri, **kwargs)
    except Exception as exc:  # the libraries' own URL errors
        raise ValidationFailed(f"Invalid {name} URI: {exc}", uri=str(exc)) from exc
    return driver


class DriverManager:
    def __init__(self, *, timeout: float, options: DriverOptions | None = None) -> None:
        self.timeout = timeout
        self.options: dict[str, Mapping[str, Any]] = dict(options or {})
        self._drivers: dict[str, _Entry] = {}
        self._retired: list[ComputeDriver] = []

    def for_host(self, host: HostRef) -> ComputeDriver:
        entry = self._drivers.get(host.id)
        if entry is None or entry.uri != host.uri:
            if entry is not None:
                self._retired.append(entry.driver)  # closed with the manager
            entry = _Entry(
                host.uri,
                build_driver(host.driver, host.uri, timeout=self.timeout, options=self.options),
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
