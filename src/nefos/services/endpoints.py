"""Where a service's traffic may go: its routable instances, its ingress name, its
endpoint URL, and which of its ports the port mesh publishes.

A *service* is a container (its instances are its replicas) or a VM that declares
a ``service_port`` (its one instance is the VM). A replica is *routable* when its row
is ``running``, has a host port published for the service's target port (its first
TCP port), and its health takes traffic (passing or warning, not in maintenance:
``services/discovery.py``, ``monitoring/servicehealth.py``); a VM when it is
running, its address on its network is known, and its health takes traffic.
Everything that routes (the HTTP ingress, a load test; the port mesh for
containers) asks only this module.

Nothing here takes an address from a caller: every upstream is an address Nefos
recorded for an instance of that service (the engine's published port on the host
it placed a replica on; the address a VM's network leased it, which the health
checker vetted against the network's subnet).

The *port mesh*: a fixed host port (``"31080:8080"``) of a container whose replicas
run on a host Nefos can listen on (:func:`meshable`: the engine is a local unix
socket or a loopback address) is not published by the replicas themselves -- each
publishes an ephemeral port of the range -- but by Nefos, which listens on the fixed
port and balances connections over them (``gateway/mesh.py``). Several replicas then
share one host, as Docker Swarm's routing mesh lets them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.config import Settings
from nefos.db.models import (
    Api,
    Container,
    ContainerReplica,
    Host,
    Listing,
    ServiceInstanceHealth,
    Vm,
)
from nefos.domain.health import Health
from nefos.domain.publishing import dial_address, local_engine
from nefos.domain.units import PortMapping, parse_port

#: The replica state whose published ports take traffic.
ROUTABLE_STATE = "running"
_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})  # noqa: S104 - compared, not bound
_LABEL_UNSAFE = re.compile(r"[^a-z0-9-]+")
_PREFIX = re.compile(r"^[0-9a-f]{8}$")
#: A DNS label holds 63 characters: the name part keeps what fits before "-1a2b3c4d".
_NAME_ROOM = 63 - 9


@dataclass(frozen=True, slots=True)
class Upstream:
    """One routable instance: the replica's id and where its target port answers."""

    instance_id: str
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class MeshPort:
    """A fixed host port the port mesh publishes for a container, and where to."""

    service_id: str
    host_port: int
    container_port: int
    upstreams: tuple[Upstream, ...]


# --- names and URLs -------------------------------------------------------------------
def host_label(name: str, service_id: str) -> str:
    """``web_App.1`` of ``1a2b3c4d-...`` -> ``web-app-1-1a2b3c4d``: one DNS label."""
    slug = _LABEL_UNSAFE.sub("-", name.lower()).strip("-")[:_NAME_ROOM].strip("-")
    return f"{slug or 'svc'}-{service_id[:8]}"


def endpoint_url(settings: Settings, name: str, service_id: str) -> str:
    """The service's stable endpoint on the ingress (host form), e.g.
    ``http://web-app-1a2b3c4d.apps.localhost:8000/``. Scheme and port are those of
    ``NEFOS_PUBLIC_URL`` when it is set (a proxy in front on 443, say), else http and
    ``NEFOS_PORT``."""
    scheme, port = "http", settings.port
    if settings.public_url:
        parts = urlsplit(settings.public_url)
        scheme = parts.scheme or "http"
        port = parts.port or (443 if scheme == "https" else 80)
    default = (scheme, port) in (("http", 80), ("https", 443))
    where = settings.apps_domain if default else f"{settings.apps_domain}:{port}"
    return f"{scheme}://{host_label(name, service_id)}.{where}/"


def label_of_host(host: str, apps_domain: str) -> str | None:
    """The service label of a ``Host`` header under the apps domain, or None."""
    host = host.lower()
    if host.startswith("["):
        return None
    host = host.rpartition(":")[0] if ":" in host else host
    suffix = "." + apps_domain
    if not host.endswith(suffix):
        return None
    label = host[: -len(suffix)]
    return label if label and "." not in label else None


async def find_by_label(session: AsyncSession, label: str) -> str | None:
    """The id of the service a label (``name-1a2b3c4d``) names, or None."""
    slug, _, prefix = label.rpartition("-")
    if not slug or not _PREFIX.match(prefix):
        return None
    for kind in (Container, Vm):
        query = select(kind.id, kind.name).where(kind.id.like(f"{prefix}%"))
        if kind is Vm:
            query = query.where(Vm.service_port.is_not(None))
        for service_id, name in await session.execute(query):
            if host_label(name, service_id) == label:
                return str(service_id)
    return None


async def is_api_container(session: AsyncSession, service_id: str) -> bool:
    """Is this service the container of an API on sale (a published listing)? Its
    calls go through the API gateway only: the key, the plan's limits and the price
    come first. An API not on sale is its creator's service like any other."""
    found = await session.scalar(
        select(Api.id)
        .join(Listing, Listing.api_id == Api.id)
        .where(
            Api.container_id == service_id,
            Api.deleted_at.is_(None),
            Listing.status == "published",
        )
        .limit(1)
    )
    return found is not None


# --- hosts Nefos can listen on --------------------------------------------------------
def meshable(host: Host) -> bool:
    """Can Nefos listen on this host's addresses itself? True for the local host of a
    one-host install: a docker host whose engine is a unix socket (on this machine,
    or Nefos could not open it) or a TCP address on loopback. A remote engine's host
    is another machine: Nefos cannot listen there."""
    return host.driver == "docker" and local_engine(host.uri)


def mesh_mapping(mapping: PortMapping) -> bool:
    """Is this mapping one the mesh publishes (where the host is meshable)? A fixed
    TCP host port on the public address. A mapping naming a host address (an
    admin's) or UDP is published by the engine as before."""
    return mapping.host_port is not None and mapping.host_ip is None and mapping.protocol == "tcp"


def mesh_ports(ports: Iterable[str]) -> dict[int, int]:
    """Container port -> fixed host port, of the mappings the mesh would publish."""
    out: dict[int, int] = {}
    for text in ports:
        p = parse_port(text)
        if mesh_mapping(p):
            assert p.host_port is not None
            out[p.container_port] = p.host_port
    return out


def target_port(ports: Iterable[str]) -> int | None:
    """The container port the ingress sends a service's HTTP to: its first TCP port."""
    for text in ports:
        p = parse_port(text)
        if p.protocol == "tcp":
            return p.container_port
    return None


def _address(host: Host, published_ip: str | None) -> str:
    return dial_address(published_ip, host.ip_address, host.uri, host.hostname)


def routable(
    replicas: Sequence[ContainerReplica],
    hosts: dict[str, Host],
    container_port: int,
    health: dict[str, ServiceInstanceHealth],
) -> list[Upstream]:
    """The replicas' upstreams for ``container_port`` (pure: rows in, upstreams out):
    running, and taking traffic by their health (:func:`takes_traffic`)."""
    out = []
    for r in replicas:
        host = hosts.get(r.host_id)
        if r.state != ROUTABLE_STATE or host is None or not takes_traffic(health.get(r.id)):
            continue
        for p in r.published or []:
            if (
                int(p.get("container_port", 0)) == container_port
                and p.get("protocol", "tcp") == "tcp"
                and p.get("host_port")
            ):
                out.append(Upstream(r.id, _address(host, p.get("host_ip")), int(p["host_port"])))
                break
    return out


def takes_traffic(health: ServiceInstanceHealth | None) -> bool:
    """Passing (or warning: alive, shedding load) and not in maintenance. A replica
    not checked yet takes none: a new instance receives traffic once it passes."""
    return (
        health is not None
        and not health.maintenance
        and health.status in (Health.PASSING.value, Health.WARNING.value)
    )


async def _replicas_and_hosts(
    session: AsyncSession, container_ids: Sequence[str]
) -> tuple[dict[str, list[ContainerReplica]], dict[str, Host], dict[str, ServiceInstanceHealth]]:
    by_container: dict[str, list[ContainerReplica]] = {c: [] for c in container_ids}
    if not container_ids:
        return by_container, {}, {}
    rows = await session.scalars(
        select(ContainerReplica)
        .where(
            ContainerReplica.container_id.in_(container_ids),
            ContainerReplica.state == ROUTABLE_STATE,
        )
        .order_by(ContainerReplica.slot)
    )
    for r in rows:
        by_container[r.container_id].append(r)
    host_ids = {r.host_id for rs in by_container.values() for r in rs}
    hosts = (
        {h.id: h for h in await session.scalars(select(Host).where(Host.id.in_(host_ids)))}
        if host_ids
        else {}
    )
    ids = [r.id for rs in by_container.values() for r in rs]
    health = (
        {
            h.instance_id: h
            for h in await session.scalars(
                select(ServiceInstanceHealth).where(ServiceInstanceHealth.instance_id.in_(ids))
            )
        }
        if ids
        else {}
    )
    return by_container, hosts, health


def vm_upstream(vm: Vm, health: ServiceInstanceHealth | None) -> Upstream | None:
    """A VM service's one upstream, if it takes traffic now (pure)."""
    if (
        vm.status != ROUTABLE_STATE
        or not vm.ip_address
        or not vm.service_port
        or not takes_traffic(health)
    ):
        return None
    return Upstream(vm.id, vm.ip_address, vm.service_port)


async def _vm_service(session: AsyncSession, service_id: str) -> Vm | None:
    vm = await session.get(Vm, service_id)
    return vm if vm is not None and vm.service_port is not None else None


async def upstreams(session: AsyncSession, service_id: str) -> list[Upstream] | None:
    """The routable instances of a service for its target port; None if there is no
    such service (``[]``: it exists, nothing routable now)."""
    ports = await session.scalar(select(Container.ports).where(Container.id == service_id))
    if ports is None:
        vm = await _vm_service(session, service_id)
        if vm is None:
            return None
        up = vm_upstream(vm, await session.get(ServiceInstanceHealth, vm.id))
        return [up] if up else []
    port = target_port(ports)
    if port is None:
        return []
    replicas, hosts, health = await _replicas_and_hosts(session, [service_id])
    return routable(replicas[service_id], hosts, port, health)


async def held(session: AsyncSession, service_id: str) -> list[Upstream]:
    """Every address a replica of the service holds now, whatever its state or health:
    a port stays the replica's (no other container is given it) until the replica's
    row is gone."""
    ports = await session.scalar(select(Container.ports).where(Container.id == service_id))
    if ports is None:
        vm = await _vm_service(session, service_id)
        if vm is None or not vm.ip_address or not vm.service_port:
            return []
        return [Upstream(vm.id, vm.ip_address, vm.service_port)]
    port = target_port(ports)
    if port is None:
        return []
    rows = (
        await session.execute(
            select(ContainerReplica, Host)
            .join(Host, Host.id == ContainerReplica.host_id)
            .where(ContainerReplica.container_id == service_id)
        )
    ).all()
    out = []
    for replica, host in rows:
        for p in replica.published or []:
            if int(p.get("container_port", 0)) == port and p.get("host_port"):
                out.append(
                    Upstream(replica.id, _address(host, p.get("host_ip")), int(p["host_port"]))
                )
    return out


async def mesh_table(session: AsyncSession) -> list[MeshPort]:
    """Every fixed host port the mesh publishes now, with its upstreams: the ports of
    containers that have (or had) a replica on a meshable host. Read on each pass of
    the mesh's holder."""
    placed = (
        await session.execute(
            select(ContainerReplica.container_id, ContainerReplica.host_id).distinct()
        )
    ).all()
    host_ids = {h for _, h in placed}
    hosts = (
        {h.id: h for h in await session.scalars(select(Host).where(Host.id.in_(host_ids)))}
        if host_ids
        else {}
    )
    on_mesh = {cid for cid, host_id in placed if host_id in hosts and meshable(hosts[host_id])}
    wanted: dict[str, dict[int, int]] = {}
    if on_mesh:
        rows = await session.execute(
            select(Container.id, Container.ports).where(Container.id.in_(on_mesh))
        )
        for cid, ports in rows:
            fixed = mesh_ports(ports or [])
            if fixed:
                wanted[cid] = fixed
    replicas, hosts, health = await _replicas_and_hosts(session, list(wanted))
    out = []
    for cid, fixed in wanted.items():
        for container_port, host_port in fixed.items():
            ups = tuple(routable(replicas[cid], hosts, container_port, health))
            out.append(MeshPort(cid, host_port, container_port, ups))
    return out
