"""Hosts: the compute endpoints Nefos places work on (seed 003's "resources").

Registering a host connects to it through its driver and reads its real capacity;
a host that answers is ``active``, one that does not is ``offline`` and gets no new
work. ``check`` (run every ``host_check_interval`` seconds) moves hosts between the
two, re-reading the capacity when one comes back. Deleting a host that still
carries instances is refused unless it is drained first: ``drain`` marks it
``draining`` (no new work) and enqueues a ``host.drain`` operation that moves each
replica to another host and then removes the host.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import ContainerReplica, Host, Operation, Vm
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.errors import (
    Conflict,
    ImagePullFailed,
    NefosError,
    NotFound,
    ResourceExhausted,
    ServiceUnavailable,
    ValidationFailed,
)
from nefos.domain.paging import PageParams
from nefos.drivers.base import DriverError, HostCapacity, HostUnreachable, ImageNotFound
from nefos.operations import Retry, enqueue
from nefos.schemas.compute import HostCreate
from nefos.services.core import Core
from nefos.services.drivers import HYPERVISOR_TYPES, build_driver, supported_driver
from nefos.services.paging import fetch_page

log = logging.getLogger("nefos.hosts")

T = TypeVar("T")

ACTIVE = "active"
OFFLINE = "offline"
DRAINING = "draining"

_LIBVIRT_TYPES = {"kvm", "qemu", "xen", "lxc"}
_DOCKER_TYPES = {"docker", "podman"}


@dataclass(frozen=True)
class Probe:
    ok: bool
    capacity: HostCapacity | None = None
    error: str | None = None


LIBVIRT_SOCKETS = ("/run/libvirt/libvirt-sock", "/var/run/libvirt/libvirt-sock")


def local_libvirt_candidates(configured: str | None) -> list[str]:
    """libvirt URIs `nefos serve` looks for: the setting, else the system daemon's."""
    if configured:
        return [configured]
    if any(Path(p).exists() for p in LIBVIRT_SOCKETS):
        return ["qemu:///system"]
    return []


def local_docker_candidates(configured: str | None) -> list[str]:
    """Engine sockets `nefos serve` looks for, in order."""
    if configured:
        return [configured]
    out = []
    if os.environ.get("DOCKER_HOST"):
        out.append(os.environ["DOCKER_HOST"])
    for path in ("/run/podman/podman.sock", "/var/run/docker.sock"):
        if Path(path).exists():
            out.append(f"unix://{path}")
    return out


class HostService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    # --- reading ----------------------------------------------------------------------
    async def list_page(self, page: PageParams) -> tuple[Sequence[Host], int]:
        return await fetch_page(self.session, Host, order_by=(Host.created_at, Host.id), page=page)

    async def get(self, host_id: str) -> Host:
        host = await self.session.get(Host, host_id)
        if host is None:
            raise NotFound("Host not found", host_id=host_id)
        return host

    async def stats(self) -> dict[str, Any]:
        hosts = (await self.session.scalars(select(Host))).all()
        total_cpu = sum(h.cpu_cores for h in hosts)
        total_mem = sum(h.memory_mb for h in hosts)
        total_disk = sum(h.storage_gb for h in hosts)
        used_cpu = sum(h.used_cpu_milli for h in hosts) / 1000
        used_mem = sum(h.used_memory_mb for h in hosts)
        used_disk = sum(h.used_storage_gb for h in hosts)
        shares = [
            used_cpu / total_cpu if total_cpu else 0.0,
            used_mem / total_mem if total_mem else 0.0,
        ]
        by_driver: dict[str, int] = {}
        for h in hosts:
            by_driver[h.driver] = by_driver.get(h.driver, 0) + 1
        row = (
            await self.session.execute(
                select(
                    func.count(ContainerReplica.id),
                    func.coalesce(func.sum(ContainerReplica.cpu_milli), 0),
                    func.coalesce(func.sum(ContainerReplica.memory_mb), 0),
                    func.coalesce(func.sum(ContainerReplica.storage_gb), 0),
                )
            )
        ).one()
        running = await self.session.scalar(
            select(func.count(ContainerReplica.id)).where(ContainerReplica.state == "running")
        )
        vm_row = (
            await self.session.execute(
                select(
                    func.count(Vm.id),
                    func.coalesce(func.sum(Vm.cpu_cores), 0),
                    func.coalesce(func.sum(Vm.memory_mb), 0),
                    func.coalesce(func.sum(Vm.storage_gb), 0),
                )
            )
        ).one()
        vms_running = await self.session.scalar(
            select(func.count(Vm.id)).where(Vm.status == "running")
        )
        return {
            "total_hosts": len(hosts),
            "active_hosts": sum(1 for h in hosts if h.status == ACTIVE and h.enabled),
            "total_cpu_cores": total_cpu,
            "total_memory_gb": round(total_mem / 1024, 2),
            "total_storage_gb": total_disk,
            "used_cpu_cores": round(used_cpu, 3),
            "used_memory_gb": round(used_mem / 1024, 2),
            "used_storage_gb": used_disk,
            "utilization_percentage": round(100 * sum(shares) / len(shares), 1),
            "by_class": {
                "containers": {
                    "count": row[0],
                    "running": running or 0,
                    "cpu_cores": row[1] / 1000,
                    "memory_gb": round(row[2] / 1024, 2),
                    "storage_gb": row[3],
                },
                "vms": {
                    "count": vm_row[0],
                    "running": vms_running or 0,
                    "cpu_cores": float(vm_row[1]),
                    "memory_gb": round(vm_row[2] / 1024, 2),
                    "storage_gb": vm_row[3],
                },
            },
            "by_driver": by_driver,
        }

    # --- registering ------------------------------------------------------------------
    async def probe(self, driver_name: str, uri: str) -> Probe:
        if not supported_driver(driver_name):
            return Probe(False, error=f"The {driver_name} driver is not available in this release")
        driver = build_driver(
            driver_name,
            uri,
            timeout=self.core.settings.host_timeout,
            options=self.core.drivers.options,
        )
        try:
            await asyncio.wait_for(driver.ping(), self.core.settings.host_timeout)
            capacity = await asyncio.wait_for(driver.capacity(), self.core.settings.host_timeout)
            return Probe(True, capacity)
        except (DriverError, TimeoutError, OSError) as exc:
            return Probe(False, error=str(exc) or type(exc).__name__)
        finally:
            await driver.close()

    async def register(self, body: HostCreate) -> Host:
        driver_name, uri = _endpoint(body)
        if await self.session.scalar(select(Host.id).where(Host.hostname == body.hostname)):
            raise Conflict("A host with this hostname exists", hostname=body.hostname)
        if supported_driver(driver_name):
            # A malformed URI is a 422 now.
            build_driver(driver_name, uri, timeout=1, options=self.core.drivers.options)
        probe = await self.probe(driver_name, uri)
        now = utcnow()
        host = Host(
            hostname=body.hostname,
            ip_address=body.ip_address,
            driver=driver_name,
            uri=uri,
            hypervisor_type=body.hypervisor_type or HYPERVISOR_TYPES.get(driver_name, driver_name),
            enabled=body.enabled,
            max_instances=body.max_instances,
            status=ACTIVE if probe.ok else OFFLINE,
            last_error=probe.error,
            last_seen_at=now if probe.ok else None,
            cpu_cores=body.cpu_cores or 0,
            memory_mb=round((body.memory_gb or 0) * 1024),
            storage_gb=body.storage_gb or 0,
        )
        if probe.capacity is not None:
            _apply_capacity(host, probe.capacity, body.storage_gb)
        await begin_write(self.session)
        self.session.add(host)
        try:
            await self.session.commit()
        except IntegrityError as exc:
            await self.session.rollback()
            raise Conflict("A host with this hostname exists", hostname=body.hostname) from exc
        self.core.placer.invalidate()
        return host

    async def register_local(self) -> list[Host]:
        """Register the local engine socket and the local libvirt as hosts, once each;
        the hosts registered (or found registered), none if nothing answers."""
        s = self.core.settings
        found = []
        for driver, name, uris in (
            ("docker", "local", local_docker_candidates(s.local_docker_uri)),
            ("libvirt", "local-libvirt", local_libvirt_candidates(s.local_libvirt_uri)),
        ):
            host = await self._register_first(driver, name, uris)
            if host is not None:
                found.append(host)
        return found

    async def _register_first(self, driver: str, name: str, uris: list[str]) -> Host | None:
        if not supported_driver(driver):
            return None
        for uri in uris:
            existing = await self.session.scalar(select(Host).where(Host.uri == uri))
            if existing is not None:
                return existing
            probe = await self.probe(driver, uri)
            if not probe.ok:
                log.info("no %s host answers on %s: %s", driver, uri, probe.error)
                continue
            if await self.session.scalar(select(Host.id).where(Host.hostname == name)):
                name = f"{name}-{abs(hash(uri)) % 10_000}"
            body = HostCreate(
                hostname=name,
                driver=driver,
                uri=uri,
                ip_address="127.0.0.1",
            )
            return await self.register(body)
        return None

    # --- removing ---------------------------------------------------------------------
    async def delete(self, host_id: str, *, drain: bool, user_id: str) -> Operation | None:
        """Remove an empty host now (None), or start draining it (the operation)."""
        await begin_write(self.session)
        host = await self.session.get(Host, host_id, populate_existing=True)
        if host is None:
            raise NotFound("Host not found", host_id=host_id)
        replicas = await self.session.scalar(
            select(func.count(ContainerReplica.id)).where(ContainerReplica.host_id == host_id)
        )
        vms = await self.session.scalar(select(func.count(Vm.id)).where(Vm.host_id == host_id))
        if vms:
            # A VM's disks live in this host's pool: it cannot be moved by a drain.
            raise Conflict(
                f"The host carries {vms} virtual machine(s); delete them first",
                vms=vms,
            )
        if not replicas:
            await self.session.delete(host)
            await self.session.commit()
            await self.core.drivers.forget(host_id)
            self.core.placer.invalidate()
            return None
        if not drain:
            raise Conflict(
                f"The host carries {replicas} instance(s); delete with ?drain=true to move "
                "them to other hosts first",
                instances=replicas,
            )
        host.status = DRAINING
        op = await enqueue(
            self.session,
            kind="host.drain",
            resource_type="host",
            resource_id=host.id,
            project_id=None,
            user_id=user_id,
        )
        await self.session.commit()
        self.core.placer.invalidate()
        self.core.workers.notify()
        return op

    # --- health -----------------------------------------------------------------------
    async def check(self, host: Host) -> bool:
        """Ping one host and record the result; True if its status changed."""
        if host.status == DRAINING:
            return False
        if not supported_driver(host.driver):
            return False
        seen_status, seen_at = host.status, host.updated_at
        driver = self.core.drivers.for_host(host)
        try:
            await asyncio.wait_for(driver.ping(), self.core.settings.host_timeout)
            capacity = (
                await asyncio.wait_for(driver.capacity(), self.core.settings.host_timeout)
                if host.status != ACTIVE
                else None
            )
            ok, error = True, None
        except (DriverError, TimeoutError, OSError) as exc:
            ok, error, capacity = False, str(exc) or type(exc).__name__, None
        await begin_write(self.session)
        current = await self.session.get(Host, host.id, populate_existing=True)
        if (
            current is None
            or current.status == DRAINING
            or (current.status, current.updated_at) != (seen_status, seen_at)
        ):
            # Changed while we pinged (marked offline by a failing operation, say):
            # that newer word stands; the next check looks again.
            await self.session.commit()
            return False
        before = current.status
        current.status = ACTIVE if ok else OFFLINE
        current.last_error = error
        if ok:
            current.last_seen_at = utcnow()
        if capacity is not None:
            _apply_capacity(current, capacity, None)
        await self.session.commit()
        if before != current.status:
            log.warning(
                "host %s is now %s%s",
                current.hostname,
                current.status,
                f": {error}" if error else "",
            )
            self.core.placer.invalidate()
            return True
        return False

    async def mark_offline(self, host_id: str, error: str) -> None:
        await begin_write(self.session)
        host = await self.session.get(Host, host_id, populate_existing=True)
        marked = host is not None and host.status == ACTIVE
        if marked:
            assert host is not None
            host.status = OFFLINE
            host.last_error = error
            self.core.placer.invalidate()
        await self.session.commit()
        if marked:
            assert host is not None
            # Why a host left placement, for its operators (the engine's own text: the
            # log is the platform's, never a tenant's).
            log.warning("host %s is now offline: %s", host.hostname, error)

    async def check_all(self) -> list[str]:
        """Check every host; the ids of those whose status changed."""
        hosts = (await self.session.scalars(select(Host))).all()
        changed = []
        for host in hosts:
            if await self.check(host):
                changed.append(host.id)
        return changed


#: What tenants are told for each driver error code: the engine's own text (Podman's
#: JSON, a resolver's address, a Python exception's repr) is no tenant's business.
_PLAIN: dict[str, tuple[type[NefosError], str]] = {
    "SERVICE_UNAVAILABLE": (ServiceUnavailable, "The host does not answer; try again later"),
    "NOT_FOUND": (NotFound, "The instance is not on its host"),
    "VALIDATION_ERROR": (ValidationFailed, "The host refused the instance's specification"),
    "RESOURCE_EXHAUSTED": (
        ResourceExhausted,
        "The host has no room for it (a host port or its memory is taken)",
    ),
    "CONFLICT": (Conflict, "The instance cannot do that in its current state"),
}


def domain_error(exc: DriverError) -> NefosError:
    """The domain error a driver error stands for (drivers name its code), with a
    plain message and a stable code; the driver's raw text rides along as
    ``engine_message`` (the server log and platform admins see it, tenants never).
    Every driver error a service raises goes through here."""
    err: NefosError
    if isinstance(exc, ImageNotFound):
        name = f"Image {exc.image!r}" if exc.image else "The image"
        err = ImagePullFailed(
            f"{name} is not on the host and could not be pulled from its registry",
            image=exc.image,
        )
    else:
        cls, message = _PLAIN.get(exc.code, (NefosError, "The host could not do it"))
        err = cls(message)
    err.engine_message = exc.message
    log.info("driver error %s (%s): %s", type(exc).__name__, err.code, exc.message)
    return err


class Unreachable(Exception):
    """A host chosen for a request did not pass the request's own check (:func:`probe`).
    ``refused``: its engine refused the connection or failed (the host is marked
    offline); else it was only slow to answer (the request is a 503 and the host
    checker, on ``NEFOS_HOST_TIMEOUT``, judges the host)."""

    def __init__(self, host_id: str, error: str, *, refused: bool) -> None:
        super().__init__(error)
        self.host_id = host_id
        self.error = error
        self.refused = refused


async def probe(core: Core, host: Host, call: Awaitable[T]) -> T:
    """Await a driver call a request makes on a host it chose, before committing to
    it (a ping, an image's presence): bounded by 3 s (or ``NEFOS_HOST_TIMEOUT`` if
    less). A host that does not answer is :class:`Unreachable`: refused (the engine
    refused the connection or is gone) when the driver says so, else slow; a slow
    answer is no proof that a host is dead (a loaded engine, a busy machine), so only
    a refusal or an error marks it offline (:func:`abandon_unreachable`)."""
    timeout = min(3.0, core.settings.host_timeout)
    try:
        return await asyncio.wait_for(call, timeout)
    except TimeoutError as exc:
        raise Unreachable(host.id, f"no answer within {timeout:g} s", refused=False) from exc
    except HostUnreachable as exc:
        raise Unreachable(host.id, exc.message, refused=not exc.slow) from exc
    except (DriverError, OSError) as exc:
        # Refused, or an answer that is no engine's: the host fails its check.
        raise Unreachable(host.id, str(exc) or type(exc).__name__, refused=True) from exc


async def abandon_unreachable(
    core: Core, session: AsyncSession, exc: Unreachable, what: str
) -> ServiceUnavailable:
    """The 503 for a request whose host failed :func:`probe` (the session's
    transaction rolled back already); a refusing host is marked offline first."""
    if exc.refused:
        await HostService(core, session).mark_offline(exc.host_id, exc.error)
    unavailable = ServiceUnavailable(f"The host chosen for this {what} does not answer; try again")
    unavailable.engine_message = exc.error  # platform admins only
    return unavailable


async def driver_call(core: Core, host: Host, call: Awaitable[T]) -> T:
    """Await a driver call made by an operation: an unreachable host is marked
    offline (unless it was only slow: the host checker judges that) and the operation
    retried later (``Retry``); any other driver error becomes the domain error it
    stands for."""
    try:
        return await call
    except HostUnreachable as exc:
        if not exc.slow:
            # Refused or gone: offline now. Only slow (a loaded engine): the operation
            # waits and retries; the host checker judges the host.
            async with core.db.sessionmaker() as session:
                await HostService(core, session).mark_offline(host.id, exc.message)
        raise Retry(
            "The host does not answer; the operation will be retried",
            engine_message=f"host {host.hostname} is unreachable: {exc.message}",
        ) from exc
    except DriverError as exc:
        raise domain_error(exc) from exc


def _apply_capacity(host: Host, capacity: HostCapacity, declared_disk: int | None) -> None:
    host.cpu_cores = capacity.cpus
    host.memory_mb = capacity.memory_mb
    if capacity.disk_gb is not None:
        host.storage_gb = capacity.disk_gb
    elif declared_disk is not None:
        host.storage_gb = declared_disk


def _endpoint(body: HostCreate) -> tuple[str, str]:
    """The driver and URI of a new host, from the body or from its hypervisor type."""
    driver: str | None = body.driver
    kind = (body.hypervisor_type or "").lower()
    if driver is None:
        if kind in _LIBVIRT_TYPES:
            driver = "libvirt"
        elif kind in _DOCKER_TYPES:
            driver = "docker"
        elif kind == "sim":
            driver = "sim"
        elif body.uri:
            driver = _driver_of_uri(body.uri)
    if driver is None:
        raise ValidationFailed(
            "Name the host's driver, or a hypervisor_type that implies one",
            driver="one of: docker, libvirt, sim",
        )
    uri = body.uri
    if uri is None:
        if not body.ip_address:
            raise ValidationFailed("Give the host's uri or its ip_address", uri="required")
        ip = body.ip_address
        uri = {
            "libvirt": f"qemu+ssh://root@{ip}/system",
            "docker": f"tcp://{ip}:2376",
            "sim": f"sim://{body.hostname}",
        }[driver]
    expected = {
        "docker": ("unix://", "tcp://", "ssh://", "http://", "https://"),
        "libvirt": ("qemu", "xen", "lxc", "test://"),
        "sim": ("sim://",),
    }[driver]
    if not uri.startswith(expected):
        raise ValidationFailed(
            f"A {driver} host's uri starts with one of: {', '.join(expected)}", uri=uri[:100]
        )
    return driver, uri


def _driver_of_uri(uri: str) -> str | None:
    if uri.startswith(("unix://", "tcp://")):
        return "docker"
    if uri.startswith("qemu"):
        return "libvirt"
    if uri.startswith("sim://"):
        return "sim"
    return None
