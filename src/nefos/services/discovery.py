"""Services: what a tenant runs, found by what it is, with its health (seed 004).

A service is a container with its replicas (its id is the container's), or a VM
that declares a ``service_port`` (its id is the VM's; the VM is its one instance).
Nothing registers itself: the instances are the replica and VM rows Nefos keeps as
it places, scales and deletes, so an instance removed or lost leaves its service at
once, and their health is what the checker (``nefos.monitoring.servicehealth``) last
wrote. The tenant's own word on a service (version, tags, metadata, its health
check) is a ``services`` row, the defaults while there is none.

A list answers with an ``index``, a fingerprint of what it shows: a client that
passes it back (``?index=N&wait=30s``) is answered when the list differs (a
blocking query, as Consul's), or when the wait is over.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import (
    Container,
    ContainerReplica,
    Host,
    Project,
    ServiceInstanceHealth,
    ServiceSettings,
    Vm,
)
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.access import Permission
from nefos.domain.errors import NotFound, ValidationFailed
from nefos.domain.health import (
    CheckSpec,
    Health,
    check_from_dict,
    clip,
    default_check,
    effective,
    service_health,
)
from nefos.domain.publishing import dial_address
from nefos.domain.units import parse_port
from nefos.events import Event, EventType, make, record
from nefos.schemas.services import Maintenance, ServiceUpdate
from nefos.services.core import Core
from nefos.services.principal import Principal, authorize_project

#: Services one list reads at most (a project's containers are bounded by its quota).
LIST_LIMIT = 5000
#: Longest a blocking query waits; and how often it looks again without an event.
MAX_WAIT = 300.0
POLL = 2.0
#: What may change a list: its events (a change of settings is seen by the poll).
_WATCHED = frozenset(
    {
        EventType.SERVICE_HEALTH.value,
        EventType.CONTAINER_STATUS.value,
        EventType.VM_STATUS.value,
    }
)

_REPLICA_STATES = {"pending": "starting", "created": "starting"}
_VM_STATES = {
    "creating": "starting",
    "starting": "starting",
    "rebooting": "starting",
    "deleting": "terminating",
}


def _url(address: str | None, port: int | None) -> str | None:
    if not address or not port:
        return None
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


@dataclass
class InstanceView:
    """One instance: a container replica, or a VM (its service's one instance)."""

    id: str
    slot: int
    engine_state: str  # the replica's state or the VM's status, as Nefos records it
    driver_id: str | None
    host: Host | None
    health: ServiceInstanceHealth | None
    endpoint: str | None

    @classmethod
    def of_replica(
        cls, r: ContainerReplica, host: Host | None, health: ServiceInstanceHealth | None
    ) -> InstanceView:
        endpoint = None
        for p in r.published or []:
            if p.get("protocol", "tcp") == "tcp" and p.get("host_port"):
                address = dial_address(
                    p.get("host_ip"),
                    host.ip_address if host else None,
                    host.uri if host else "",
                )
                endpoint = _url(address, int(p["host_port"]))
                if endpoint:
                    break
        return cls(r.id, r.slot, r.state, r.driver_id, host, health, endpoint)

    @classmethod
    def of_vm(cls, vm: Vm, host: Host | None, health: ServiceInstanceHealth | None) -> InstanceView:
        endpoint = _url(vm.ip_address, vm.service_port) if vm.status == "running" else None
        return cls(vm.id, 0, vm.status, vm.driver_id, host, health, endpoint)

    @property
    def running(self) -> bool:
        return self.engine_state == "running"

    @property
    def state(self) -> str:
        return _REPLICA_STATES.get(self.engine_state) or _VM_STATES.get(
            self.engine_state, self.engine_state
        )

    @property
    def status(self) -> Health:
        if self.health is None:
            return Health.CRITICAL
        return effective(self.health.status, self.health.maintenance)


@dataclass
class ServiceView:
    """A service: a container (``container``) or a VM with a service port (``vm``)."""

    container: Container | None
    vm: Vm | None
    settings: ServiceSettings | None
    instances: list[InstanceView] = field(default_factory=list)

    @property
    def _what(self) -> Container | Vm:
        what = self.container or self.vm
        assert what is not None
        return what

    @property
    def id(self) -> str:
        return self._what.id

    @property
    def kind(self) -> str:
        return "container" if self.container is not None else "vm"

    @property
    def name(self) -> str:
        return self._what.name

    @property
    def project_id(self) -> str:
        return self._what.project_id

    @property
    def created_at(self) -> datetime:
        return self._what.created_at

    @property
    def cpu_limit(self) -> float:
        """The cores each instance may use (the scale of its cpu_usage)."""
        if self.container is not None:
            return self.container.cpu_milli / 1000 or 1.0
        return float(self.vm.cpu_cores) if self.vm is not None else 1.0

    @property
    def ports(self) -> list[int]:
        """The TCP ports a check may reach: the container's, or the VM's service port."""
        if self.container is not None:
            return tcp_ports(self.container.ports or [])
        return [self.vm.service_port] if self.vm and self.vm.service_port else []

    @property
    def version(self) -> str:
        return self.settings.version if self.settings else "1.0.0"

    @property
    def tags(self) -> list[str]:
        return list(self.settings.tags) if self.settings else []

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.settings.meta) if self.settings else {}

    @property
    def check(self) -> CheckSpec:
        if self.settings is not None and self.settings.check:
            return check_from_dict(self.settings.check)
        return default_check(bool(self.ports))

    @property
    def health(self) -> Health:
        return service_health(i.status for i in self.instances)

    @property
    def passing(self) -> int:
        return sum(1 for i in self.instances if i.status is Health.PASSING)


def tcp_ports(ports: Iterable[str]) -> list[int]:
    """The container ports of a container's TCP mappings, in order."""
    return [m.container_port for m in map(parse_port, ports) if m.protocol == "tcp"]


@dataclass(frozen=True)
class ServiceFilter:
    health: str | None = None
    name: str | None = None
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, s: ServiceView) -> bool:
        return (
            (self.health is None or s.health.value == self.health)
            and (self.name is None or s.name == self.name)
            and all(t in s.tags for t in self.tags)
            and all(s.metadata.get(k) == v for k, v in self.metadata.items())
        )


def fingerprint(services: Iterable[ServiceView]) -> int:
    """A number that changes when anything a list shows changes (a blocking query's
    index): positive, below 2**53 so JSON clients keep it exact."""
    digest = hashlib.blake2b(digest_size=8)
    for s in services:
        digest.update(
            json.dumps(
                [
                    s.id,
                    s.name,
                    s.version,
                    s.tags,
                    s.metadata,
                    s.check.as_dict(),
                    [(i.id, i.state, i.status.value, i.endpoint) for i in s.instances],
                ],
                sort_keys=True,
            ).encode()
        )
    return int.from_bytes(digest.digest(), "big") >> 12 or 1


class ServiceRegistry:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    # --- reading ----------------------------------------------------------------------
    async def views(
        self, containers: Sequence[Container], vms: Sequence[Vm] = ()
    ) -> list[ServiceView]:
        """The services of these containers and VMs, in that order, with their
        settings, instances, hosts and health."""
        ids = [c.id for c in containers] + [v.id for v in vms]
        if not ids:
            return []
        settings = {
            s.id: s
            for s in await self.session.scalars(
                select(ServiceSettings).where(ServiceSettings.id.in_(ids))
            )
        }
        replicas = (
            list(
                await self.session.scalars(
                    select(ContainerReplica)
                    .where(ContainerReplica.container_id.in_([c.id for c in containers]))
                    .order_by(ContainerReplica.container_id, ContainerReplica.slot)
                )
            )
            if containers
            else []
        )
        health = {
            h.instance_id: h
            for h in await self.session.scalars(
                select(ServiceInstanceHealth).where(ServiceInstanceHealth.service_id.in_(ids))
            )
        }
        host_ids = {r.host_id for r in replicas} | {v.host_id for v in vms}
        hosts = (
            {h.id: h for h in await self.session.scalars(select(Host).where(Host.id.in_(host_ids)))}
            if host_ids
            else {}
        )
        out = {c.id: ServiceView(c, None, settings.get(c.id)) for c in containers}
        for r in replicas:
            out[r.container_id].instances.append(
                InstanceView.of_replica(r, hosts.get(r.host_id), health.get(r.id))
            )
        for v in vms:
            out[v.id] = ServiceView(
                None,
                v,
                settings.get(v.id),
                [InstanceView.of_vm(v, hosts.get(v.host_id), health.get(v.id))],
            )
        return [out[i] for i in ids]

    async def search(self, project: Project, where: ServiceFilter) -> list[ServiceView]:
        """The project's services (containers, then VMs with a service port, each
        oldest first), those ``where`` keeps."""
        containers = list(
            await self.session.scalars(
                select(Container)
                .where(Container.project_id == project.id)
                .order_by(Container.created_at, Container.id)
                .limit(LIST_LIMIT)
            )
        )
        vms = list(
            await self.session.scalars(
                select(Vm)
                .where(Vm.project_id == project.id, Vm.service_port.is_not(None))
                .order_by(Vm.created_at, Vm.id)
                .limit(LIST_LIMIT)
            )
        )
        return [s for s in await self.views(containers, vms) if where(s)]

    async def watch(
        self, project: Project, where: ServiceFilter, index: int, wait: float
    ) -> list[ServiceView]:
        """The list once its fingerprint differs from ``index``, or when ``wait`` is
        over (then as it is). Wakes on the project's events, and every ``POLL`` s."""
        deadline = time.monotonic() + min(max(wait, 0.0), MAX_WAIT)

        def accept(event: Event) -> bool:
            return event.project_id == project.id and event.type in _WATCHED

        with self.core.events.subscribe(accept, maxsize=64) as sub:
            while True:
                services = await self.search(project, where)
                # A read must not keep a transaction (and on SQLite a snapshot) open
                # while it waits; the rows read stay as read (a rollback expires what
                # the session holds).
                self.session.expunge_all()
                await self.session.rollback()
                left = deadline - time.monotonic()
                if fingerprint(services) != index or left <= 0:
                    return services
                try:
                    await asyncio.wait_for(sub.get(), min(left, POLL))
                    await asyncio.sleep(0.05)  # let a burst of changes land together
                    while sub.get_nowait() is not None:
                        pass
                except TimeoutError:
                    pass

    async def visible(
        self, principal: Principal, service_id: str, permission: Permission
    ) -> Container | Vm:
        """The service's container or VM if the caller may act on it; else NotFound
        (another tenant's, a VM that declares no port, and a missing id alike)."""
        found: Container | Vm | None = await self.session.get(Container, service_id)
        if found is None:
            vm = await self.session.get(Vm, service_id)
            found = vm if vm is not None and vm.service_port is not None else None
        if found is not None:
            try:
                await authorize_project(self.session, principal, found.project_id, permission)
                return found
            except NotFound:
                pass
        raise NotFound("Service not found", service_id=service_id)

    async def view(self, what: Container | Vm) -> ServiceView:
        if isinstance(what, Container):
            return (await self.views([what]))[0]
        return (await self.views([], [what]))[0]

    async def get(self, principal: Principal, service_id: str) -> ServiceView:
        return await self.view(await self.visible(principal, service_id, Permission.COMPUTE_READ))

    # --- writing ----------------------------------------------------------------------
    async def update(
        self, principal: Principal, service_id: str, body: ServiceUpdate
    ) -> ServiceView:
        await begin_write(self.session)
        what = await self.visible(principal, service_id, Permission.COMPUTE_WRITE)
        is_vm = isinstance(what, Vm)
        row = await self.session.get(ServiceSettings, what.id)
        if row is None:
            row = ServiceSettings.default(what.id, vm=is_vm)
            self.session.add(row)
        if body.version is not None:
            row.version = body.version
        if body.tags is not None:
            row.tags = list(dict.fromkeys(body.tags))
        if body.metadata is not None:
            row.meta = dict(body.metadata)
        if body.check is not None:
            if isinstance(what, Vm):
                _vm_checkable(body.check.type)
            else:
                _reachable(body.check.type, body.check.port, what.ports or [])
            row.check = body.check.model_dump(mode="json")
        row.updated_at = utcnow()
        await self.session.commit()
        return await self.view(what)

    async def maintenance(
        self, principal: Principal, service_id: str, instance_id: str, body: Maintenance
    ) -> ServiceView:
        await begin_write(self.session)
        what = await self.visible(principal, service_id, Permission.COMPUTE_WRITE)
        is_vm = isinstance(what, Vm)
        if is_vm:
            known = instance_id == what.id
        else:
            replica = await self.session.get(ContainerReplica, instance_id)
            known = replica is not None and replica.container_id == what.id
        if not known:
            raise NotFound("Instance not found", instance_id=instance_id)
        row = await self.session.get(ServiceInstanceHealth, instance_id)
        at = utcnow()
        if row is None:
            row = ServiceInstanceHealth.unchecked(instance_id, what.id, at, vm=is_vm)
            self.session.add(row)
        before = effective(row.status, row.maintenance)
        row.maintenance = body.enabled
        row.maintenance_reason = clip(body.reason) if body.enabled and body.reason else None
        after = effective(row.status, row.maintenance)
        if after is not before:
            stamp = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            note = row.maintenance_reason or ("maintenance" if body.enabled else "back in service")
            row.transitions = [
                *list(row.transitions or [])[-19:],
                {"at": stamp, "from": before.value, "to": after.value, "output": note},
            ]
            row.changed_at = at
            record(
                self.session,
                make(
                    EventType.SERVICE_HEALTH,
                    {
                        "service_id": what.id,
                        "instance_id": instance_id,
                        "from": before.value,
                        "to": after.value,
                        "output": note,
                    },
                    project_id=what.project_id,
                ),
            )
        await self.session.commit()
        return await self.view(what)


def _vm_checkable(kind: str) -> None:
    """A VM is checked over its network (http, tcp) or by running (none): Nefos runs
    no command inside a guest."""
    if kind == "exec":
        raise ValidationFailed(
            "check: an exec check runs a command inside a container; a VM's service is "
            "checked with http, tcp or none",
            check="exec on a VM",
        )


def _reachable(kind: str, port: int | None, ports: Sequence[str]) -> None:
    """An http or tcp check reaches a TCP port the container publishes: one it never
    could would cut every instance from traffic (a 422, not a service down)."""
    if kind not in ("http", "tcp"):
        return
    tcp = tcp_ports(ports)
    if not tcp:
        raise ValidationFailed(
            f"check: a {kind} check needs a TCP port, and the container publishes none; "
            "use an exec check, or none",
            check="no TCP port",
        )
    if port is not None and port not in tcp:
        raise ValidationFailed(
            f"check: port {port} is not one of the container's TCP ports "
            f"({', '.join(map(str, tcp))})",
            check=f"port {port}",
        )


def parse_metadata_filters(query: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``metadata.team=frontend`` query parameters -> ``{"team": "frontend"}``."""
    return {k.removeprefix("metadata."): v for k, v in query if k.startswith("metadata.")}
