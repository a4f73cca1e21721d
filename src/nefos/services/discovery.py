"""Services: what a tenant runs, found by what it is, with its health (seed 004).

A service is a container with its replicas; its id is the container's. Nothing
registers itself: the instances are the replica rows Nefos keeps as it places,
scales and deletes, so a replica removed or lost leaves its service at once, and
their health is what the checker (``nefos.monitoring.servicehealth``) last wrote.
The tenant's own word on a service (version, tags, metadata, its health check)
is a ``service_settings`` row, the defaults while there is none.

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

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import (
    Container,
    ContainerReplica,
    Host,
    Project,
    ServiceInstanceHealth,
    ServiceSettings,
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
_WATCHED = frozenset({EventType.SERVICE_HEALTH.value, EventType.CONTAINER_STATUS.value})

_REPLICA_STATES = {"pending": "starting", "created": "starting"}


@dataclass
class InstanceView:
    replica: ContainerReplica
    host: Host | None
    health: ServiceInstanceHealth | None

    @property
    def state(self) -> str:
        return _REPLICA_STATES.get(self.replica.state, self.replica.state)

    @property
    def status(self) -> Health:
        if self.health is None:
            return Health.CRITICAL
        return effective(self.health.status, self.health.maintenance)

    @property
    def endpoint(self) -> str | None:
        for p in self.replica.published or []:
            if p.get("protocol", "tcp") == "tcp" and p.get("host_port"):
                address = dial_address(
                    p.get("host_ip"),
                    self.host.ip_address if self.host else None,
                    self.host.uri if self.host else "",
                )
                if address:
                    host = f"[{address}]" if ":" in address else address
                    return f"http://{host}:{p['host_port']}"
        return None


@dataclass
class ServiceView:
    container: Container
    settings: ServiceSettings | None
    instances: list[InstanceView] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.container.id

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
        return default_check(bool(self.container.ports))

    @property
    def health(self) -> Health:
        return service_health(i.status for i in self.instances)

    @property
    def passing(self) -> int:
        return sum(1 for i in self.instances if i.status is Health.PASSING)


@dataclass(frozen=True)
class ServiceFilter:
    health: str | None = None
    name: str | None = None
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, s: ServiceView) -> bool:
        return (
            (self.health is None or s.health.value == self.health)
            and (self.name is None or s.container.name == self.name)
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
                    s.container.name,
                    s.version,
                    s.tags,
                    s.metadata,
                    s.check.as_dict(),
                    [(i.replica.id, i.state, i.status.value) for i in s.instances],
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
    async def views(self, containers: Sequence[Container]) -> list[ServiceView]:
        ids = [c.id for c in containers]
        if not ids:
            return []
        settings = {
            s.id: s
            for s in await self.session.scalars(
                select(ServiceSettings).where(ServiceSettings.id.in_(ids))
            )
        }
        replicas = list(
            await self.session.scalars(
                select(ContainerReplica)
                .where(ContainerReplica.container_id.in_(ids))
                .order_by(ContainerReplica.container_id, ContainerReplica.slot)
            )
        )
        health = {
            h.replica_id: h
            for h in await self.session.scalars(
                select(ServiceInstanceHealth).where(ServiceInstanceHealth.container_id.in_(ids))
            )
        }
        host_ids = {r.host_id for r in replicas}
        hosts = (
            {h.id: h for h in await self.session.scalars(select(Host).where(Host.id.in_(host_ids)))}
            if host_ids
            else {}
        )
        out = {c.id: ServiceView(c, settings.get(c.id)) for c in containers}
        for r in replicas:
            out[r.container_id].instances.append(
                InstanceView(r, hosts.get(r.host_id), health.get(r.id))
            )
        return [out[c.id] for c in containers]

    async def search(self, project: Project, where: ServiceFilter) -> list[ServiceView]:
        containers = list(
            await self.session.scalars(
                select(Container)
                .where(Container.project_id == project.id)
                .order_by(Container.created_at, Container.id)
                .limit(LIST_LIMIT)
            )
        )
        return [s for s in await self.views(containers) if where(s)]

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
    ) -> Container:
        """The service's container if the caller may act on it; else NotFound."""
        container = await self.session.get(Container, service_id)
        if container is not None:
            try:
                await authorize_project(self.session, principal, container.project_id, permission)
                return container
            except NotFound:
                pass
        raise NotFound("Service not found", service_id=service_id)

    async def get(self, principal: Principal, service_id: str) -> ServiceView:
        container = await self.visible(principal, service_id, Permission.COMPUTE_READ)
        return (await self.views([container]))[0]

    # --- writing ----------------------------------------------------------------------
    async def update(
        self, principal: Principal, service_id: str, body: ServiceUpdate
    ) -> ServiceView:
        await begin_write(self.session)
        container = await self.visible(principal, service_id, Permission.COMPUTE_WRITE)
        row = await self.session.get(ServiceSettings, container.id)
        if row is None:
            row = ServiceSettings(id=container.id, version="1.0.0", tags=[], meta={})
            self.session.add(row)
        if body.version is not None:
            row.version = body.version
        if body.tags is not None:
            row.tags = list(dict.fromkeys(body.tags))
        if body.metadata is not None:
            row.meta = dict(body.metadata)
        if body.check is not None:
            _reachable(body.check.type, body.check.port, container.ports or [])
            row.check = body.check.model_dump(mode="json")
        row.updated_at = utcnow()
        await self.session.commit()
        return await self.get(principal, service_id)

    async def maintenance(
        self, principal: Principal, service_id: str, instance_id: str, body: Maintenance
    ) -> ServiceView:
        await begin_write(self.session)
        container = await self.visible(principal, service_id, Permission.COMPUTE_WRITE)
        replica = await self.session.get(ContainerReplica, instance_id)
        if replica is None or replica.container_id != container.id:
            raise NotFound("Instance not found", instance_id=instance_id)
        row = await self.session.get(ServiceInstanceHealth, replica.id)
        at = utcnow()
        if row is None:
            row = ServiceInstanceHealth.unchecked(replica.id, container.id, at)
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
                        "service_id": container.id,
                        "instance_id": replica.id,
                        "from": before.value,
                        "to": after.value,
                        "output": note,
                    },
                    project_id=container.project_id,
                ),
            )
        await self.session.commit()
        return await self.get(principal, service_id)


def _reachable(kind: str, port: int | None, ports: Sequence[str]) -> None:
    """An http or tcp check reaches a TCP port the container publishes: one it never
    could would cut every instance from traffic (a 422, not a service down)."""
    if kind not in ("http", "tcp"):
        return
    tcp = [m.container_port for m in map(parse_port, ports) if m.protocol == "tcp"]
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
