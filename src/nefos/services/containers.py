"""Containers (seed 004): one Nefos resource run as N engine containers.

A request changes the database only: it checks the quota, places each replica
(``Placer``: guarded ``UPDATE``s, so hosts are never overbooked), writes the
container, its replica rows and an operation in one transaction, and answers 202.
A worker then makes the engine agree (``ContainerOps``); each step first looks at
what already exists, so an operation interrupted by a crash can simply run again.

Quotas count what the project holds in the database: ``containers`` is the number
of engine containers (replicas, so a scale cannot dodge it), ``vcpus`` and
``memory_gb`` the sums of their limits.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing import metering
from nefos.billing.accounts import require_funds
from nefos.config import Settings
from nefos.db.models import (
    Api,
    Container,
    ContainerReplica,
    Host,
    Operation,
    Project,
    ServiceInstanceHealth,
    ServiceSettings,
)
from nefos.db.session import begin_write
from nefos.domain import lifecycle
from nefos.domain.access import Permission
from nefos.domain.actors import SystemActor
from nefos.domain.errors import (
    Conflict,
    NefosError,
    NotFound,
    ResourceExhausted,
    RolledBack,
    ValidationFailed,
)
from nefos.domain.image_refs import (
    BadReference,
    ImageReference,
    parse_image_reference,
    registry_listed,
)
from nefos.domain.lifecycle import ContainerStatus
from nefos.domain.paging import PageParams
from nefos.domain.units import human_rate, parse_port
from nefos.drivers.base import (
    DriverError,
    InstanceInfo,
    InstanceNotFound,
    InstanceSpec,
    InsufficientCapacity,
    PortSpec,
    Shell,
)
from nefos.events import record
from nefos.events.capture import container_event
from nefos.operations import OpContext, enqueue
from nefos.scheduler import NoValidHost, PlacementRequest
from nefos.schemas.compute import (
    ContainerCreate,
    ContainerResources,
    ContainerScale,
    ContainerUpdate,
)
from nefos.services.core import Core
from nefos.services.drivers import CONTAINER_DRIVERS
from nefos.services.endpoints import (
    mesh_mapping,
    mesh_ports,
    meshable,
    takes_traffic,
    target_port,
)
from nefos.services.hosts import (
    Unreachable,
    abandon_unreachable,
    domain_error,
    driver_call,
    probe,
)
from nefos.services.lifecycle import transition
from nefos.services.paging import fetch_page
from nefos.services.placement import Allocation, ReplicaRows
from nefos.services.principal import Principal, authorize_project
from nefos.services.quotas import check_quota

log = logging.getLogger("nefos.containers")

#: Tries at a replica's start on freshly picked host ports, when the engine finds a
#: picked port taken by something Nefos does not know of.
PORT_ATTEMPTS = 5

#: The label naming the Nefos container (resource) an engine container belongs to;
#: ``nefos.id`` is the replica's own id.
LABEL_CONTAINER = "nefos.container"
LABEL_SLOT = "nefos.slot"
#: Which Nefos made it: the reconciler reaps only its own installation's orphans,
#: so two installations (or a test harness) can share an engine.
LABEL_INSTALLATION = "nefos.installation"


def installation_id(core: Core) -> str:
    """Stable across the processes of one installation (they share the secret key)."""
    import hashlib

    if core.settings.installation_id:
        return core.settings.installation_id
    return hashlib.sha256(b"nefos-installation:" + core.settings.jwt_secret.encode()).hexdigest()[
        :16
    ]


def derive_status(desired: str, states: Sequence[str]) -> tuple[ContainerStatus, str | None]:
    """What a container with no operation in progress shows, from its replicas."""
    if not states:
        return (
            (ContainerStatus.STOPPED, None)
            if desired == "stopped"
            else (ContainerStatus.ERROR, "no replicas")
        )
    if any(s in ("missing", "error") for s in states):
        gone = sum(1 for s in states if s in ("missing", "error"))
        return ContainerStatus.ERROR, f"{gone} of {len(states)} replica(s) lost outside Nefos"
    running = sum(1 for s in states if s == "running")
    if desired == "stopped":
        return (
            (ContainerStatus.STOPPED, None)
            if running == 0
            else (ContainerStatus.RUNNING, "stop requested")
        )
    if running == len(states):
        return ContainerStatus.RUNNING, None
    if running == 0:
        return ContainerStatus.STOPPED, "exited outside Nefos"
    return ContainerStatus.DEGRADED, f"{running} of {len(states)} replica(s) running"


def _fixed_ports(container: Container, *, mesh: bool) -> list[int]:
    """The host ports the engine itself must publish on each replica's host (so one
    replica per host): every fixed port, but those the port mesh publishes when
    ``mesh`` (see ``services.endpoints``)."""
    return [
        p.host_port
        for p in map(parse_port, container.ports)
        if p.host_port and not (mesh and mesh_mapping(p))
    ]


def _request(
    container: Container, driver: str, count: int = 1, *, mesh: bool = False
) -> PlacementRequest:
    # A fixed host port can be published once per host: such replicas never share one,
    # unless the port mesh publishes it for them.
    fixed = _fixed_ports(container, mesh=mesh)
    return PlacementRequest(
        driver=driver,
        cpus=container.cpu_milli / 1000,
        memory_mb=container.memory_mb,
        disk_gb=container.storage_gb,
        count=count,
        anti_affinity_group=container.id,
        anti_affinity="hard" if fixed else None,
    )


async def mesh_everywhere(session: AsyncSession, settings: Settings, driver: str) -> bool:
    """Does the port mesh publish fixed host ports wherever a replica may go? True
    when it is on and every active host of the driver is one Nefos listens on (the
    local host of a one-host install); a fleet with a remote host keeps one replica
    per host for a fixed port."""
    if not settings.port_mesh_enabled:
        return False
    hosts = (
        await session.scalars(
            select(Host).where(Host.driver == driver, Host.status == "active", Host.enabled)
        )
    ).all()
    return bool(hosts) and all(meshable(h) for h in hosts)


def _once_per_host(container: Container, exc: NoValidHost, fixed: list[int]) -> ResourceExhausted:
    """Placement refused under the hard anti-affinity a fixed host port imposes: say
    why, and what to do instead."""
    ports = ", ".join(map(str, sorted(set(fixed))))
    hosts = exc.hosts
    return ResourceExhausted(
        f"A fixed host port ({ports}) can be published once per host, and Nefos cannot "
        f"listen on these hosts itself to share it between replicas: {hosts} host(s) can "
        f"carry {hosts} replica(s) of this container. Leave the host port out (give only "
        "the container port, e.g. '8080') to have one allocated for each replica.",
        host_ports=sorted(set(fixed)),
        hosts=hosts,
        rejections=exc.rejections,
    )


def _replica_request(replica: ContainerReplica, driver: str) -> PlacementRequest:
    return PlacementRequest(
        driver=driver,
        cpus=replica.cpu_milli / 1000,
        memory_mb=replica.memory_mb,
        disk_gb=replica.storage_gb,
        anti_affinity_group=replica.container_id,
    )


def image_reference(image: str) -> ImageReference:
    """The parsed reference, or ValidationFailed (422) saying what is wrong."""
    try:
        return parse_image_reference(image)
    except BadReference as exc:
        raise ValidationFailed(f"Invalid image reference: {exc}", image=str(exc)) from None


def _command(command: str | list[str] | None) -> list[str] | None:
    """A command as the engine takes it: a string is split as a shell would."""
    if not isinstance(command, str):
        return command
    try:
        return shlex.split(command)
    except ValueError as exc:
        raise ValidationFailed(f"command: {exc}", command=str(exc)) from None


#: What a rolling update may change: a container's spec, kept in the operation's
#: params (``previous``) so that a rollback can put it back.
SPEC = ("image", "environment", "command", "resources", "cpu_milli", "memory_mb", "storage_gb")


def spec_of(container: Container) -> dict[str, Any]:
    return {key: getattr(container, key) for key in SPEC}


def operation_url(op_id: str) -> str:
    return f"/api/v1/operations/{op_id}"


class ContainerService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    # --- reading ----------------------------------------------------------------------
    async def list_page(
        self,
        project: Project,
        page: PageParams,
        *,
        status: str | None = None,
        user_id: str | None = None,
    ) -> tuple[Sequence[Container], int]:
        where: list[Any] = [Container.project_id == project.id]
        if status:
            where.append(Container.status == status)
        if user_id:
            where.append(Container.user_id == user_id)
        return await fetch_page(
            self.session,
            Container,
            *where,
            order_by=(Container.created_at, Container.id),
            page=page,
        )

    async def not_an_apis(self, container: Container) -> None:
        """Refuse (409) a change of spec, scale or delete of an API's container made
        around the API: through ``/apis`` each is a deployment, rolled out and kept
        in the API's history."""
        api = await self.session.scalar(
            select(Api.id).where(Api.container_id == container.id, Api.deleted_at.is_(None))
        )
        if api is not None:
            raise Conflict(
                f"This container runs an API: change it with PUT /apis/{api} "
                f"(or DELETE /apis/{api})",
                api_id=api,
            )

    async def visible(
        self, principal: Principal, container_id: str, permission: Permission
    ) -> Container:
        """The container if the caller may act on it; another tenant's is NotFound."""
        container = await self.session.get(Container, container_id)
        if container is None:
            raise NotFound("Container not found", container_id=container_id)
        try:
            await authorize_project(self.session, principal, container.project_id, permission)
        except NotFound:
            raise NotFound("Container not found", container_id=container_id) from None
        return container

    async def replicas(self, container_ids: Sequence[str]) -> dict[str, list[ContainerReplica]]:
        out: dict[str, list[ContainerReplica]] = {c: [] for c in container_ids}
        if container_ids:
            rows = await self.session.scalars(
                select(ContainerReplica)
                .where(ContainerReplica.container_id.in_(container_ids))
                .order_by(ContainerReplica.slot)
            )
            for r in rows:
                out[r.container_id].append(r)
        return out

    async def _check_quota(
        self, project_id: str, add: int, cpu_milli: int, memory_mb: int, storage_gb: int = 0
    ) -> None:
        project = await self.session.get(Project, project_id)
        assert project is not None
        await require_funds(self.session, self.core.settings, project.organisation_id)
        await check_quota(
            self.session,
            project_id,
            containers=add,
            cpu_milli=add * cpu_milli,
            memory_mb=add * memory_mb,
            storage_gb=add * storage_gb,
        )

    # --- placement --------------------------------------------------------------------
    async def _place(
        self, container: Container, count: int, first_slot: int
    ) -> list[tuple[Allocation, Host]]:
        """Claim hosts for ``count`` replicas and write their rows (state pending, in
        slots from ``first_slot``): one call to the database (``Placer.allocate``)."""
        placer = self.core.placer
        last: NoValidHost | None = None
        rows = ReplicaRows(container.id, first_slot, container.generation)
        for driver in CONTAINER_DRIVERS:
            mesh = await mesh_everywhere(self.session, self.core.settings, driver)
            if mesh:
                await self._mesh_port_free(container)
            try:
                allocations = await placer.allocate(
                    self.session, _request(container, driver, count, mesh=mesh), replicas=rows
                )
            except NoValidHost as exc:
                fixed = _fixed_ports(container, mesh=mesh)
                last = exc
                if fixed and exc.rejections.get("anti-affinity"):
                    raise _once_per_host(container, exc, fixed) from exc
                continue
            hosts = {
                h.id: h
                for h in (
                    await self.session.scalars(
                        select(Host).where(Host.id.in_({a.host_id for a in allocations}))
                    )
                ).all()
            }
            return [(a, hosts[a.host_id]) for a in allocations]
        assert last is not None
        raise last

    async def _mesh_port_free(self, container: Container) -> None:
        """A fixed host port the mesh publishes is the installation's one listener on
        that port: another container naming it is a 409 (the engine would have
        refused the second binding on the host)."""
        mine = set(mesh_ports(container.ports).values())
        if not mine:
            return
        rows = await self.session.execute(
            select(Container.id, Container.ports).where(Container.id != container.id)
        )
        for _, ports in rows:
            taken = mine & {p.host_port for p in map(parse_port, ports or []) if p.host_port}
            if taken:
                port = min(taken)
                raise Conflict(
                    f"Host port {port} is published by another container", host_port=port
                )

    async def _reachable(self, hosts: Sequence[Host]) -> None:
        """Ping each chosen host before committing to it: a dead engine is a 503 now,
        with nothing made, rather than an operation that fails later."""
        for host in {h.id: h for h in hosts}.values():
            await probe(self.core, host, self.core.drivers.for_host(host).ping())

    async def _image_allowed(self, image: str, hosts: Sequence[Host]) -> None:
        """An image whose registry tenants may not pull from (``container_registries``)
        must already be on every chosen host: refused (422) before the 202, and before
        any engine connects anywhere. The pull itself is vetted again by the driver,
        the registry's addresses included (DNS may have changed since)."""
        settings = self.core.settings
        ref = image_reference(image)
        if not settings.container_image_pull or registry_listed(ref, settings.container_registries):
            return
        for host in {h.id: h for h in hosts}.values():
            driver = self.core.drivers.for_host(host)
            if not await probe(self.core, host, driver.has_image(image)):
                raise ValidationFailed(
                    f"Image {image!r} is not on the host, and its registry {ref.registry!r} "
                    "is not one tenants may pull from",
                    image="registry not allowed (see container_registries)",
                )

    async def _commit_or_undo(self) -> None:
        try:
            await self.session.commit()
        except IntegrityError as exc:
            await self.session.rollback()
            self.core.placer.invalidate()
            raise Conflict("A container with this name exists in the project") from exc

    # --- writing ----------------------------------------------------------------------
    async def create(
        self,
        principal: Principal,
        project: Project,
        body: ContainerCreate,
        *,
        also: Callable[[Container, Operation], Awaitable[None]] | None = None,
    ) -> tuple[Container, Operation]:
        """Check, place and record a container, and enqueue its ``container.create``.
        ``also`` adds rows of the caller's (an API's) in the same transaction."""
        res = body.resources
        image_reference(body.image)  # a bad reference is a 422 before anything else
        command = _command(body.command)
        policy = self.core.settings.publish_policy
        for text in body.ports:
            policy.check(parse_port(text), admin=principal.is_admin)
        await begin_write(self.session)
        try:
            if await self.session.scalar(
                select(Container.id).where(
                    Container.project_id == project.id, Container.name == body.name
                )
            ):
                raise Conflict("A container with this name exists in the project", name=body.name)
            await self._check_quota(
                project.id, body.replicas, res.cpu_milli, res.memory_mb, res.storage_gb
            )
            resources = {"cpu": res.cpu, "memory": res.memory}
            if res.storage:
                resources["storage"] = res.storage
            container = Container(
                project_id=project.id,
                user_id=principal.user_id,
                name=body.name,
                image=body.image,
                command=command,
                ports=list(body.ports),
                environment=dict(body.environment),
                resources=resources,
                cpu_milli=res.cpu_milli,
                memory_mb=res.memory_mb,
                storage_gb=res.storage_gb,
                replicas=body.replicas,
                status="creating",
                desired="running",
            )
            self.session.add(container)
            await self.session.flush()
            async with self.core.placer.lock:
                placed = await self._place(container, body.replicas, 0)
                await self._reachable([h for _, h in placed])
                await self._image_allowed(body.image, [h for _, h in placed])
                op = await enqueue(
                    self.session,
                    kind="container.create",
                    resource_type="container",
                    resource_id=container.id,
                    project_id=project.id,
                    user_id=principal.user_id,
                )
                if also is not None:
                    await also(container, op)
                await self._commit_or_undo()
        except BaseException as exc:
            await self._abandon(exc)
            raise
        self.core.workers.notify()
        return container, op

    async def _abandon(self, exc: BaseException) -> None:
        if self.session.in_transaction():
            await self.session.rollback()
        self.core.placer.invalidate()
        if isinstance(exc, IntegrityError):
            # A concurrent create took the name between our check and our insert.
            raise Conflict("A container with this name exists in the project") from exc
        if isinstance(exc, Unreachable):
            raise await abandon_unreachable(self.core, self.session, exc, "container") from exc

    async def _transition(
        self,
        principal: Principal | SystemActor,
        container: Container,
        action: str,
        params: dict[str, Any] | None = None,
    ) -> tuple[Container, Operation]:
        return await transition(
            self.core,
            self.session,
            lifecycle.CONTAINER,
            Container,
            container.id,
            principal,
            action,
            params,
        )

    async def start(
        self, principal: Principal, container: Container
    ) -> tuple[Container, Operation]:
        project = await self.session.get(Project, container.project_id)
        assert project is not None
        await require_funds(self.session, self.core.settings, project.organisation_id)
        return await self._transition(principal, container, "start")

    async def stop(
        self, principal: Principal | SystemActor, container: Container
    ) -> tuple[Container, Operation]:
        """Stop the container, for a user or for the system (billing suspension)."""
        return await self._transition(principal, container, "stop")

    async def delete(
        self, principal: Principal, container: Container
    ) -> tuple[Container, Operation]:
        return await self._transition(principal, container, "delete")

    async def scale(
        self, principal: Principal, container: Container, body: ContainerScale
    ) -> tuple[Container, Operation]:
        await begin_write(self.session)
        try:
            current = await self.session.get(Container, container.id, populate_existing=True)
            if current is None:
                raise NotFound("Container not found", container_id=container.id)
            move = lifecycle.CONTAINER.move("scale", current.status)
            old = (await self.replicas([current.id]))[current.id]
            target = body.replicas
            grow = target - len(old) if body.strategy == "rolling" else target
            new_ids: list[str] = []
            if grow > 0:
                await self._check_quota(
                    current.project_id,
                    grow,
                    current.cpu_milli,
                    current.memory_mb,
                    current.storage_gb,
                )
            async with self.core.placer.lock:
                if grow > 0:
                    first = max((r.slot for r in old), default=-1) + 1
                    placed = await self._place(current, grow, first)
                    new_ids = [a.replica_id for a, _ in placed if a.replica_id]
                    await self._reachable([h for _, h in placed])
                if body.strategy == "rolling":
                    remove = [r.id for r in sorted(old, key=lambda r: r.slot)[target:]]
                else:
                    remove = [r.id for r in old]
                op = await enqueue(
                    self.session,
                    kind="container.scale",
                    resource_type="container",
                    resource_id=current.id,
                    project_id=current.project_id,
                    user_id=principal.user_id,
                    params={
                        "from_status": current.status,
                        "from_replicas": current.replicas,
                        "strategy": body.strategy,
                        "replicas": target,
                        "add": new_ids,
                        "remove": remove,
                    },
                )
                current.replicas = target
                current.status = move.to
                await self._commit_or_undo()
        except BaseException as exc:
            await self._abandon(exc)
            raise
        self.core.workers.notify()
        return current, op

    async def update(
        self, principal: Principal, container: Container, body: ContainerUpdate
    ) -> tuple[Container, Operation | None]:
        """A rolling update to a new spec (image, environment, command, resources):
        the container row takes the new spec and the next generation at once, and the
        ``container.update`` operation replaces the replicas one at a time
        (``ContainerOps.run_update``). ``None`` for the operation when nothing would
        change (the spec is the same and every replica runs it)."""
        if body.image is not None:
            image_reference(body.image)
        command = _command(body.command) if "command" in body.model_fields_set else None
        await begin_write(self.session)
        try:
            current = await self.session.get(Container, container.id, populate_existing=True)
            if current is None:
                raise NotFound("Container not found", container_id=container.id)
            move = lifecycle.CONTAINER.move("update", current.status)
            previous = spec_of(current)
            wanted = dict(previous)
            if body.image is not None:
                wanted["image"] = body.image
            if body.environment is not None:
                wanted["environment"] = dict(body.environment)
            if "command" in body.model_fields_set:
                wanted["command"] = command
            if body.resources is not None:
                given = body.resources.model_dump(include=body.resources.model_fields_set)
                merged = ContainerResources.model_validate({**current.resources, **given})
                wanted["resources"] = {"cpu": merged.cpu, "memory": merged.memory}
                if merged.storage:
                    wanted["resources"]["storage"] = merged.storage
                wanted |= {
                    "cpu_milli": merged.cpu_milli,
                    "memory_mb": merged.memory_mb,
                    "storage_gb": merged.storage_gb,
                }
            old = (await self.replicas([current.id]))[current.id]
            if wanted == previous and all(r.generation == current.generation for r in old):
                await self.session.rollback()
                await self.session.refresh(current)
                return current, None
            # Monotonic: a replica of an update that failed without rolling back keeps
            # a generation no later spec may share.
            generation = max([current.generation, *(r.generation for r in old)]) + 1
            mesh = await mesh_everywhere(self.session, self.core.settings, "docker")
            # Where a fixed host port is published by each replica's engine, two
            # replicas may not share a host: the update replaces in place.
            surge = not _fixed_ports(current, mesh=mesh)
            await self._update_quota(current, wanted, surge=surge)
            from_generation = current.generation
            for key, value in wanted.items():
                setattr(current, key, value)
            current.generation = generation
            async with self.core.placer.lock:
                add: list[str] = []
                hosts = list((await self._hosts(old)).values())
                if surge:
                    first = max((r.slot for r in old), default=-1) + 1
                    placed = await self._place(current, 1, first)
                    add = [a.replica_id for a, _ in placed if a.replica_id]
                    hosts += [h for _, h in placed]
                    await self._reachable([h for _, h in placed])
                if wanted["image"] != previous["image"]:
                    await self._image_allowed(wanted["image"], hosts)
                op = await enqueue(
                    self.session,
                    kind="container.update",
                    resource_type="container",
                    resource_id=current.id,
                    project_id=current.project_id,
                    user_id=principal.user_id,
                    params={
                        "from_status": current.status,
                        "from_generation": from_generation,
                        "previous": previous,
                        "generation": generation,
                        "mode": "surge" if surge else "in_place",
                        "image_changed": wanted["image"] != previous["image"],
                        "add": add,
                    },
                )
                current.status = move.to
                current.status_reason = f"rolling update to generation {generation}"
                await self._commit_or_undo()
        except BaseException as exc:
            await self._abandon(exc)
            raise
        self.core.workers.notify()
        return current, op

    async def _update_quota(
        self, container: Container, wanted: dict[str, Any], *, surge: bool
    ) -> None:
        """The most the update adds to what the project holds, at its peak: one
        replica more (the surge) while the replicas move from the old size to the
        new, one at a time."""
        project = await self.session.get(Project, container.project_id)
        assert project is not None
        await require_funds(self.session, self.core.settings, project.organisation_id)
        n = container.replicas

        def extra(old: int, new: int) -> int:
            if surge:  # k new + the surge + (n - k - 1) old, at most
                return max(new, n * (new - old) + old)
            return max(0, n * (new - old))

        await check_quota(
            self.session,
            container.project_id,
            containers=1 if surge else 0,
            cpu_milli=extra(container.cpu_milli, wanted["cpu_milli"]),
            memory_mb=extra(container.memory_mb, wanted["memory_mb"]),
            storage_gb=extra(container.storage_gb, wanted["storage_gb"]),
        )

    # --- live data --------------------------------------------------------------------
    async def _hosts(self, replicas: Sequence[ContainerReplica]) -> dict[str, Host]:
        ids = {r.host_id for r in replicas}
        if not ids:
            return {}
        return {h.id: h for h in (await self.session.scalars(select(Host).where(Host.id.in_(ids))))}

    async def metrics(
        self, container: Container, replicas: Sequence[ContainerReplica]
    ) -> dict[str, Any] | None:
        running = [r for r in replicas if r.state == "running"]
        if not running:
            return None
        hosts = await self._hosts(running)

        async def one(r: ContainerReplica) -> Any:
            driver = self.core.drivers.for_host(hosts[r.host_id])
            return await asyncio.wait_for(driver.stats(r.driver_id or _engine_name(r)), 5)

        samples = await asyncio.gather(*(one(r) for r in running), return_exceptions=True)
        ok = [
            (r, s)
            for r, s in zip(running, samples, strict=True)
            if not isinstance(s, BaseException)
        ]
        if not ok:
            return None
        now = time.monotonic()
        rate = 0.0
        for r, s in ok:
            total = s.net_rx_bytes + s.net_tx_bytes
            previous = _NET_SAMPLES.get(r.id)
            if previous is not None and now > previous[0]:
                rate += max(0, total - previous[1]) / (now - previous[0])
            if len(_NET_SAMPLES) > 50_000:
                _NET_SAMPLES.clear()  # forget replicas long gone; rates restart at 0
            _NET_SAMPLES[r.id] = (now, total)
        limit_cores = container.cpu_milli / 1000 * len(ok)
        cpu_percent = sum(s.cpu_percent for _, s in ok)
        memory = sum(s.memory_bytes for _, s in ok)
        memory_limit = sum(s.memory_limit_bytes for _, s in ok) or 1
        return {
            "cpu_usage": round(cpu_percent / limit_cores if limit_cores else 0.0, 2),
            "memory_usage": round(100 * memory / memory_limit, 2),
            "network_io": human_rate(rate),
            "memory_bytes": memory,
            "net_rx_bytes": sum(s.net_rx_bytes for _, s in ok),
            "net_tx_bytes": sum(s.net_tx_bytes for _, s in ok),
            "replicas_reporting": len(ok),
        }

    async def logs(
        self,
        container: Container,
        *,
        tail: int,
        slot: int | None,
        since: datetime | None = None,
        until: datetime | None = None,
        timestamps: bool = False,
    ) -> list[dict[str, Any]]:
        """Each replica's last ``tail`` lines of output (written after ``since`` and
        not after ``until``; each line after its time with ``timestamps``)."""
        replicas = (await self.replicas([container.id]))[container.id]
        if slot is not None:
            replicas = [r for r in replicas if r.slot == slot]
            if not replicas:
                raise NotFound("No such replica", replica=slot)
        hosts = await self._hosts(replicas)
        out = []
        for r in replicas:
            if r.state == "pending":
                out.append({"replica": r.slot, "state": r.state, "logs": ""})
                continue
            driver = self.core.drivers.for_host(hosts[r.host_id])
            try:
                text = await driver.logs(
                    r.driver_id or _engine_name(r),
                    tail=tail,
                    since=since,
                    until=until,
                    timestamps=timestamps,
                )
            except InstanceNotFound:
                text = ""
            except DriverError as exc:
                raise domain_error(exc) from exc
            out.append({"replica": r.slot, "state": r.state, "logs": text})
        return out

    async def open_shell(
        self,
        container: Container,
        *,
        slot: int | None,
        command: Sequence[str],
        cols: int,
        rows: int,
    ) -> tuple[int, Shell]:
        """A terminal running ``command`` in a running replica (``slot``, or the
        lowest running one): (its slot, the terminal)."""
        replicas = (await self.replicas([container.id]))[container.id]
        if slot is not None:
            replicas = [r for r in replicas if r.slot == slot]
            if not replicas:
                raise NotFound("No such replica", replica=slot)
        running = sorted((r for r in replicas if r.state == "running"), key=lambda r: r.slot)
        if not running:
            raise Conflict(
                "The replica is not running" if slot is not None else "No replica is running",
                replica=slot,
            )
        replica = running[0]
        hosts = await self._hosts([replica])
        driver = self.core.drivers.for_host(hosts[replica.host_id])
        if not driver.capabilities.supports_shell:
            raise Conflict("This container's host offers no interactive terminal")
        try:
            shell = await driver.open_shell(
                replica.driver_id or _engine_name(replica), command, cols=cols, rows=rows
            )
        except DriverError as exc:
            raise domain_error(exc) from exc
        return replica.slot, shell


_NET_SAMPLES: dict[str, tuple[float, int]] = {}


class _ReplicaFailed(NefosError):
    """A replica of a rolling update could not be made, or did not pass in time."""

    code = "UPDATE_FAILED"


def _engine_name(replica: ContainerReplica) -> str:
    return f"nefos-{replica.id}"


# --- the operations ----------------------------------------------------------------------
class ContainerOps:
    """The worker side: make the engines agree with the rows, step by idempotent step."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def register(self) -> None:
        w = self.core.workers
        w.register("container.create", self.run_create, self.failed, self.cancel_create)
        w.register("container.start", self.run_start, self.failed, self.cancel_transition)
        w.register("container.stop", self.run_stop, self.failed, self.cancel_transition)
        w.register("container.delete", self.run_delete, self.failed, self.cancel_transition)
        w.register("container.scale", self.run_scale, self.failed, self.cancel_scale)
        w.register("container.update", self.run_update, self.failed, self.cancel_update)
        w.register("host.drain", self.run_drain, self.drain_failed, self.cancel_drain)

    # --- helpers ----------------------------------------------------------------------
    async def _load(
        self, session: AsyncSession, container_id: str
    ) -> tuple[Container | None, list[ContainerReplica], dict[str, Host]]:
        container = await session.get(Container, container_id, populate_existing=True)
        if container is None:
            return None, [], {}
        replicas = list(
            (
                await session.scalars(
                    select(ContainerReplica)
                    .where(ContainerReplica.container_id == container_id)
                    .order_by(ContainerReplica.slot)
                    .execution_options(populate_existing=True)
                )
            ).all()
        )
        ids = {r.host_id for r in replicas}
        hosts = (
            {h.id: h for h in await session.scalars(select(Host).where(Host.id.in_(ids)))}
            if ids
            else {}
        )
        return container, replicas, hosts

    async def _host_ports(
        self,
        container: Container,
        replica: ContainerReplica,
        host: Host,
        *,
        avoid: Collection[int] = (),
    ) -> dict[tuple[int, str], int]:
        """A free host port of the publishing range for each bare container port of
        the replica, on its host: not one another replica on that host publishes (or
        names as fixed), nor reserved. The engine's own pick would be an ephemeral
        port anywhere, outside what the host's firewall opens for tenants. On a host
        the port mesh serves, a fixed TCP port gets one too: Nefos listens on the
        fixed port and forwards to it."""
        mesh = self.core.settings.port_mesh_enabled and meshable(host)
        bare = [
            p
            for p in map(parse_port, container.ports)
            if p.host_port is None or (mesh and mesh_mapping(p))
        ]
        if not bare:
            return {}
        async with self.core.db.sessionmaker() as session:
            rows = (
                await session.execute(
                    select(ContainerReplica.published, Container.ports)
                    .join(Container, Container.id == ContainerReplica.container_id)
                    .where(
                        ContainerReplica.host_id == replica.host_id,
                        ContainerReplica.id != replica.id,
                    )
                )
            ).all()
        taken = {int(p["host_port"]) for published, _ in rows for p in published or []}
        taken |= {
            port
            for _, texts in rows
            for port in (parse_port(t).host_port for t in texts or [])
            if port is not None
        }
        taken |= {p.host_port for p in map(parse_port, container.ports) if p.host_port}
        taken |= set(avoid)
        policy = self.core.settings.publish_policy
        chosen: dict[tuple[int, str], int] = {}
        for p in bare:
            port = policy.pick(taken)
            if port is None:
                raise ResourceExhausted(
                    "No free host port is left in the publishing range on the host",
                    host_id=replica.host_id,
                )
            taken.add(port)
            chosen[(p.container_port, p.protocol)] = port
        return chosen

    def _spec(
        self,
        container: Container,
        replica: ContainerReplica,
        host_ports: dict[tuple[int, str], int] | None = None,
    ) -> InstanceSpec:
        ports = []
        for text in container.ports:
            p = parse_port(text)
            ports.append(
                PortSpec(
                    container_port=p.container_port,
                    protocol="udp" if p.protocol == "udp" else "tcp",
                    host_port=(host_ports or {}).get((p.container_port, p.protocol)) or p.host_port,
                    host_ip=p.host_ip or self.core.settings.container_publish_ip,
                )
            )
        return InstanceSpec(
            nefos_id=replica.id,
            project_id=container.project_id,
            name=f"{container.name}-{replica.slot}",
            image=container.image,
            command=tuple(container.command) if container.command else None,
            env=dict(container.environment),
            ports=tuple(ports),
            cpu=container.cpu_milli / 1000,
            memory_mb=container.memory_mb,
            pids_limit=self.core.settings.container_pids_limit,
            labels={
                LABEL_CONTAINER: container.id,
                LABEL_SLOT: str(replica.slot),
                LABEL_INSTALLATION: installation_id(self.core),
            },
        )

    async def _save_replica(
        self,
        replica_id: str,
        *,
        state: str,
        info: InstanceInfo | None = None,
        generation: int | None = None,
    ) -> None:
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            row = await session.get(ContainerReplica, replica_id, populate_existing=True)
            if row is not None:
                row.state = state
                if generation is not None:
                    row.generation = generation
                if info is not None:
                    row.driver_id = info.driver_id
                    row.published = [
                        {
                            "container_port": p.container_port,
                            "protocol": p.protocol,
                            "host_ip": p.host_ip,
                            "host_port": p.host_port,
                        }
                        for p in info.ports
                    ]
            await session.commit()

    async def _set_status(
        self,
        container_id: str,
        status: ContainerStatus | None = None,
        reason: str | None = None,
    ) -> None:
        """Set the status, or (``None``) derive it from the replicas' states (and show
        ``reason`` if that status has none of its own)."""
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            container = await session.get(Container, container_id, populate_existing=True)
            if container is not None:
                if status is None:
                    states = (
                        await session.scalars(
                            select(ContainerReplica.state).where(
                                ContainerReplica.container_id == container_id
                            )
                        )
                    ).all()
                    status, derived = derive_status(container.desired, list(states))
                    reason = derived or reason
                container.status = status
                container.status_reason = reason
            await session.commit()

    async def _driver_call(self, host: Host, coro: Any) -> Any:
        return await driver_call(self.core, host, coro)

    async def _ensure(
        self,
        container: Container,
        replica: ContainerReplica,
        host: Host,
        *,
        start: bool,
        first_attempt: bool = False,
    ) -> None:
        """Make the replica's engine container exist (and run, if ``start``).

        On an operation's first attempt a replica still ``pending`` cannot exist on
        the engine yet, so the look-up by name is skipped; any later attempt looks
        first (an interrupted one may have made it)."""
        driver = self.core.drivers.for_host(host)
        name = _engine_name(replica)
        try:
            if first_attempt and replica.state == "pending" and replica.driver_id is None:
                raise NotFound()
            info = await self._driver_call(host, driver.get(name))
        except NotFound:
            info = await self._make(container, replica, host, start=start)
            state = "running" if start else "created"
            # Made (again) from the container's spec: the replica runs its generation.
            await self._save_replica(
                replica.id, state=state, info=info, generation=container.generation
            )
            return
        if start:
            # No write in between: if we die here, the next attempt finds it by name.
            info = await self._driver_call(host, driver.start(info.driver_id))
            await self._save_replica(replica.id, state="running", info=info)
        else:
            await self._save_replica(replica.id, state="created", info=info)

    async def _make(
        self, container: Container, replica: ContainerReplica, host: Host, *, start: bool
    ) -> InstanceInfo:
        """Create the replica's engine container (and start it, if ``start``).

        A host port Nefos picked from the range may be taken by something Nefos does
        not know of (another installation on the host, a process of the host's own):
        the engine then refuses the start. The container is destroyed and made again
        on other ports, at most PORT_ATTEMPTS times."""
        driver = self.core.drivers.for_host(host)
        name = _engine_name(replica)
        avoid: set[int] = set()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            ports = await self._host_ports(container, replica, host, avoid=avoid)
            try:
                info: InstanceInfo = await self._driver_call(
                    host, driver.create(self._spec(container, replica, ports))
                )
            except ValidationFailed as invalid:
                # Made by an earlier, interrupted attempt between our get and create?
                try:
                    info = await self._driver_call(host, driver.get(name))
                except NotFound:
                    raise invalid from None  # no: the create's own error (bad image, ...)
                ports = {}  # not ours to re-pick
            if not start:
                return info
            try:
                started: InstanceInfo = await self._driver_call(host, driver.start(info.driver_id))
                return started
            except ResourceExhausted as exc:
                port_taken = isinstance(exc.__cause__, InsufficientCapacity)
                if not (port_taken and ports) or attempt == PORT_ATTEMPTS:
                    raise
                log.info(
                    "replica %s: host port(s) %s taken on %s; picking others",
                    replica.id,
                    sorted(ports.values()),
                    host.hostname,
                )
                await self._driver_call(host, driver.destroy(info.driver_id))
                avoid |= set(ports.values())
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _stop(self, replica: ContainerReplica, host: Host) -> None:
        driver = self.core.drivers.for_host(host)
        try:
            info = await self._driver_call(
                host, driver.stop(replica.driver_id or _engine_name(replica))
            )
        except NotFound:
            await self._save_replica(replica.id, state="missing")
            return
        await self._save_replica(replica.id, state="stopped", info=info)

    async def _remove(
        self, container: Container, replica: ContainerReplica, host: Host | None
    ) -> None:
        """Destroy the engine container, then free the allocation and the row."""
        if host is not None:
            driver = self.core.drivers.for_host(host)
            await self._driver_call(
                host, driver.destroy(replica.driver_id or _engine_name(replica))
            )
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            row = await session.get(ContainerReplica, replica.id, populate_existing=True)
            if row is not None:
                await self.core.placer.release(
                    session, row.host_id, _replica_request(row, host.driver if host else "docker")
                )
                await session.delete(row)
            await session.commit()

    # --- handlers ---------------------------------------------------------------------
    async def run_create(self, ctx: OpContext) -> dict[str, Any] | None:
        return await self._converge(ctx, start=True)

    async def run_start(self, ctx: OpContext) -> dict[str, Any] | None:
        return await self._converge(ctx, start=True)

    async def _converge(self, ctx: OpContext, *, start: bool) -> dict[str, Any] | None:
        async with self.core.db.sessionmaker() as session:
            container, replicas, hosts = await self._load(session, ctx.op.resource_id)
        if container is None:
            return {"skipped": "container no longer exists"}
        for i, r in enumerate(replicas):
            await self._ensure(
                container, r, hosts[r.host_id], start=start, first_attempt=ctx.op.attempts == 1
            )
            ctx.progress(int(100 * (i + 1) / max(1, len(replicas))))
        await self._set_status(container.id)
        return {"replicas": len(replicas)}

    async def run_stop(self, ctx: OpContext) -> dict[str, Any] | None:
        async with self.core.db.sessionmaker() as session:
            container, replicas, hosts = await self._load(session, ctx.op.resource_id)
        if container is None:
            return {"skipped": "container no longer exists"}
        for r in replicas:
            if r.state == "pending":
                continue  # never made: nothing to stop
            await self._stop(r, hosts[r.host_id])
        await self._set_status(container.id, ContainerStatus.STOPPED)
        return {"replicas": len(replicas)}

    async def run_delete(self, ctx: OpContext) -> dict[str, Any] | None:
        async with self.core.db.sessionmaker() as session:
            container, replicas, hosts = await self._load(session, ctx.op.resource_id)
        if container is None:
            return {"deleted": True}
        for r in replicas:
            await self._remove(container, r, hosts.get(r.host_id))
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            current = await session.get(
                Container, container.id, populate_existing=True, with_for_update=True
            )
            if current is not None:
                await metering.close(session, current)
            gone = await session.execute(delete(Container).where(Container.id == container.id))
            if gone.rowcount:  # type: ignore[attr-defined]
                record(session, container_event(container, container.status, "deleted"))
            await session.commit()
        return {"deleted": True}

    async def run_scale(self, ctx: OpContext) -> dict[str, Any] | None:
        params = ctx.op.params
        async with self.core.db.sessionmaker() as session:
            container, replicas, hosts = await self._load(session, ctx.op.resource_id)
        if container is None:
            return {"skipped": "container no longer exists"}
        by_id = {r.id: r for r in replicas}
        start = container.desired == "running"
        add = [by_id[i] for i in params.get("add", []) if i in by_id]
        remove = [by_id[i] for i in params.get("remove", []) if i in by_id]
        ready: int | None = None
        if params.get("strategy") == "recreate":
            # Everything old goes first, then the new replicas come up.
            await self._drain(container, remove)
            for r in remove:
                await self._remove(container, r, hosts.get(r.host_id))
            for r in add:
                await self._ensure(
                    container, r, hosts[r.host_id], start=start, first_attempt=ctx.op.attempts == 1
                )
            if start:
                ready = await self._await_ready(container, add)
        else:
            # Rolling: new replicas run, and pass their checks, before any old one is
            # removed, so the count never drops below the old one while scaling up.
            for r in add:
                await self._ensure(
                    container, r, hosts[r.host_id], start=start, first_attempt=ctx.op.attempts == 1
                )
            if start:
                ready = await self._await_ready(container, add)
            await self._drain(container, remove)
            for r in remove:
                await self._remove(container, r, hosts.get(r.host_id))
        await self._set_status(container.id)
        result: dict[str, Any] = {"replicas": params.get("replicas")}
        if ready is not None:
            result["ready"] = ready
        return result

    # --- rolling update ---------------------------------------------------------------
    async def run_update(self, ctx: OpContext) -> dict[str, Any] | None:
        """Replace the replicas, one at a time, with replicas of the container's new
        generation (Kubernetes' RollingUpdate with maxSurge 1, maxUnavailable 0; in
        place where a fixed host port forbids the surge). A new replica that cannot be
        made, or does not pass its checks within ``readiness_timeout``, rolls the
        update back: the previous spec goes back on the row and the replicas roll to
        it the same way, so the old ones serve throughout.

        Each step is read from the rows (every replica's generation, the container's)
        and a rollback is recorded in the operation's params in the same transaction
        as the spec it puts back: a worker that dies anywhere leaves a state the next
        claim finishes, or goes on rolling back."""
        params = ctx.op.params
        generation = int(params["generation"])
        reason = params.get("rollback")
        if reason is None:
            what = "the new image" if params.get("image_changed") else "the new spec"
            try:
                replaced = await self._roll(ctx, generation, what)
            except _ReplicaFailed as exc:
                reason = exc.message
                await self._begin_rollback(ctx, reason)
            else:
                await self._set_status(ctx.op.resource_id)
                return {"generation": generation, "replaced": replaced}
        await self._drop_unserving(ctx.op.resource_id, generation)
        from_generation = int(params["from_generation"])
        try:
            await self._roll(ctx, from_generation, "the previous spec")
        except _ReplicaFailed as exc:
            raise _ReplicaFailed(f"rolling back ({reason}): {exc.message}") from exc
        what = "image" if params.get("image_changed") else "spec"
        raise RolledBack(f"{reason}; the previous {what} is serving", generation=from_generation)

    async def _roll(self, ctx: OpContext, target: int, what: str) -> int:
        """Move the replicas to generation ``target`` (the container row's spec), one
        at a time; how many were replaced. Raises ``_ReplicaFailed`` when a replica of
        ``target`` cannot be placed or made, or does not pass in time."""
        surge = ctx.op.params.get("mode", "surge") == "surge"
        ready: set[str] = set()
        replaced = 0
        while True:
            async with self.core.db.sessionmaker() as session:
                container, replicas, hosts = await self._load(session, ctx.op.resource_id)
            if container is None:
                return replaced
            start = container.desired == "running"
            fresh = [r for r in replicas if r.generation == target]
            stale = [r for r in replicas if r.generation != target]
            n = container.replicas
            for i, r in enumerate(fresh, 1):
                if r.id in ready:
                    continue
                try:
                    if r.state != ("running" if start else "created"):
                        await self._ensure(container, r, hosts[r.host_id], start=start)
                    passed = await self._await_ready(container, [r]) if start else None
                except NefosError as exc:
                    raise _ReplicaFailed(
                        f"replica {i} of {what} could not be made: {exc.message}"
                    ) from exc
                if passed == 0:
                    raise _ReplicaFailed(
                        f"replica {i} of {what} did not pass its health check within "
                        f"{self.core.settings.readiness_timeout:.0f} s"
                    )
                ready.add(r.id)
            if not stale and len(fresh) >= n:
                return replaced
            if stale and (len(replicas) > n or (not surge and len(replicas) >= n)):
                # Out first: one already draining, then one that serves nothing.
                out = min(
                    stale, key=lambda r: (r.state != "terminating", r.state == "running", r.slot)
                )
                await self._drain(container, [out])
                await self._remove(container, out, hosts.get(out.host_id))
                replaced += 1
                ctx.progress(int(100 * replaced / max(1, n)))
                await self._note(
                    container.id, f"generation {target}: {len(fresh)} of {n} replica(s)"
                )
            else:
                try:
                    await self._place_one(container.id)
                except NefosError as exc:
                    raise _ReplicaFailed(
                        f"replica {len(fresh) + 1} of {what} could not be placed: {exc.message}"
                    ) from exc

    async def _place_one(self, container_id: str) -> None:
        """One more replica of the container's current generation, in a slot of its
        own, placed as a create places them (its row pending, for ``_roll`` to make)."""
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            container = await session.get(Container, container_id, populate_existing=True)
            if container is None:
                await session.commit()
                return
            top = await session.scalar(
                select(func.max(ContainerReplica.slot)).where(
                    ContainerReplica.container_id == container_id
                )
            )
            async with self.core.placer.lock:
                try:
                    await ContainerService(self.core, session)._place(
                        container, 1, 0 if top is None else top + 1
                    )
                    await session.commit()
                except BaseException:
                    await session.rollback()
                    self.core.placer.invalidate()
                    raise

    async def _begin_rollback(self, ctx: OpContext, reason: str) -> None:
        """Put the previous spec back on the container row and record the rollback in
        the operation's params, in one transaction: from here on every claim of the
        operation rolls back."""
        params = ctx.op.params
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            container = await session.get(Container, ctx.op.resource_id, populate_existing=True)
            op = await session.get(Operation, ctx.op.id, populate_existing=True)
            assert op is not None
            op.params = {**(op.params or {}), "rollback": reason}
            if container is not None:
                for key, value in params["previous"].items():
                    setattr(container, key, value)
                container.generation = int(params["from_generation"])
                container.status_reason = f"rolling back: {reason}"
                record(session, container_event(container, container.status, container.status))
            await session.commit()
        log.warning("container %s: update rolled back: %s", ctx.op.resource_id, reason)

    async def _drop_unserving(self, container_id: str, generation: int) -> None:
        """Remove the replicas of ``generation`` that take no traffic (the one that
        failed): they serve nothing, so nothing waits for them."""
        async with self.core.db.sessionmaker() as session:
            container, replicas, hosts = await self._load(session, container_id)
            if container is None:
                return
            mine = [r for r in replicas if r.generation == generation]
            checked = await session.get(ServiceSettings, container_id)
            health = {
                h.replica_id: h
                for h in await session.scalars(
                    select(ServiceInstanceHealth).where(
                        ServiceInstanceHealth.replica_id.in_([r.id for r in mine])
                    )
                )
            }
        for r in mine:
            serving = r.state == "running"
            if serving and checked is not None and checked.check:
                h = health.get(r.id)
                serving = h is not None and takes_traffic(h)
            if not serving:
                await self._remove(container, r, hosts.get(r.host_id))

    async def _note(self, container_id: str, reason: str) -> None:
        """Show a step of an operation that keeps the container's status (a
        ``container_status_update`` with the new reason)."""
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            container = await session.get(Container, container_id, populate_existing=True)
            if container is not None:
                container.status_reason = reason
                record(session, container_event(container, container.status, container.status))
            await session.commit()

    async def _await_ready(
        self, container: Container, replicas: Sequence[ContainerReplica]
    ) -> int | None:
        """Wait (at most ``readiness_timeout``) for ``replicas`` to take traffic by
        their health; how many do. Only for a service with a health check of its own
        (as Kubernetes waits only for a readiness probe): None for the others."""
        if not replicas:
            return None
        async with self.core.db.sessionmaker() as session:
            settings = await session.get(ServiceSettings, container.id)
        if settings is None or not settings.check:
            return None
        ids = [r.id for r in replicas]
        deadline = time.monotonic() + self.core.settings.readiness_timeout
        while True:
            async with self.core.db.sessionmaker() as session:
                rows = await session.scalars(
                    select(ServiceInstanceHealth).where(ServiceInstanceHealth.replica_id.in_(ids))
                )
                ready = sum(1 for h in rows if takes_traffic(h))
            if ready == len(ids) or time.monotonic() >= deadline:
                if ready < len(ids):
                    log.warning(
                        "container %s: %d of %d new replicas passed their checks in %.0f s",
                        container.id,
                        ready,
                        len(ids),
                        self.core.settings.readiness_timeout,
                    )
                return ready
            await asyncio.sleep(0.25)

    async def _drain(self, container: Container, replicas: Sequence[ContainerReplica]) -> None:
        """Take ``replicas`` out of traffic (state ``terminating``: the ingress, the
        port mesh and load tests skip them) and give what they were sent
        ``drain_seconds`` to end, before they are stopped."""
        running = [r.id for r in replicas if r.state == "running"]
        if not running:
            return
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            for row in await session.scalars(
                select(ContainerReplica).where(ContainerReplica.id.in_(running))
            ):
                row.state = "terminating"
            await session.commit()
        if target_port(container.ports or []) is not None:
            await asyncio.sleep(self.core.settings.drain_seconds)

    async def run_drain(self, ctx: OpContext) -> dict[str, Any] | None:
        """Move every replica off the host (new one up first), then remove the host."""
        host_id = ctx.op.resource_id
        async with self.core.db.sessionmaker() as session:
            drained = await session.get(Host, host_id)
            replicas = (
                await session.scalars(
                    select(ContainerReplica).where(ContainerReplica.host_id == host_id)
                )
            ).all()
        if drained is None:
            return {"skipped": "host no longer exists"}
        moved = 0
        for old in replicas:
            async with self.core.db.sessionmaker() as session:
                await begin_write(session)
                container = await session.get(Container, old.container_id)
                if container is None:
                    await session.commit()
                    continue
                async with self.core.placer.lock:
                    try:
                        mesh = await mesh_everywhere(session, self.core.settings, drained.driver)
                        (alloc,) = await self.core.placer.allocate(
                            session, _request(container, drained.driver, 1, mesh=mesh)
                        )
                    except BaseException:
                        await session.rollback()
                        self.core.placer.invalidate()
                        raise
                    top = await session.scalar(
                        select(func.max(ContainerReplica.slot)).where(
                            ContainerReplica.container_id == container.id
                        )
                    )
                    new = ContainerReplica(
                        container_id=container.id,
                        slot=(top or 0) + 1,
                        host_id=alloc.host_id,
                        cpu_milli=alloc.cpu_milli,
                        memory_mb=alloc.memory_mb,
                        storage_gb=alloc.storage_gb,
                        state="pending",
                        generation=container.generation,
                    )
                    session.add(new)
                    await session.commit()
                target = await session.get(Host, alloc.host_id)
            assert target is not None
            started = container.desired == "running" and old.state == "running"
            await self._ensure(container, new, target, start=started)
            if started:
                await self._await_ready(container, [new])
            await self._drain(container, [old])
            await self._remove(container, old, drained)
            await self._set_status(container.id)
            moved += 1
            ctx.progress(int(100 * moved / max(1, len(replicas))))
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            host = await session.get(Host, host_id)
            if host is not None:
                await session.delete(host)
            await session.commit()
        await self.core.drivers.forget(host_id)
        self.core.placer.invalidate()
        return {"moved": moved}

    async def drain_failed(self, ctx: OpContext, code: str, message: str) -> None:
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            host = await session.get(Host, ctx.op.resource_id)
            if host is not None:
                host.status = "active"
                host.last_error = f"drain failed: {message}"
            await session.commit()
        self.core.placer.invalidate()

    async def cancel_drain(self, session: AsyncSession, op: Operation) -> None:
        host = await session.get(Host, op.resource_id)
        if host is not None:
            host.status = "active"

    async def failed(self, ctx: OpContext, code: str, message: str) -> None:
        if ctx.op.kind == "container.delete":
            # The row stays so that a retried delete can finish the job.
            await self._set_status(
                ctx.op.resource_id, ContainerStatus.ERROR, f"delete failed: {message}"
            )
        elif code == RolledBack.code:
            # The previous spec serves again: the container is as it was.
            await self._set_status(ctx.op.resource_id, None, f"update rolled back: {message}")
        else:
            if ctx.op.kind in ("container.create", "container.scale", "container.update"):
                await self._drop_unmade(ctx)
            await self._set_status(ctx.op.resource_id, ContainerStatus.ERROR, f"{code}: {message}")

    async def _drop_unmade(self, ctx: OpContext) -> None:
        """A failed create (or scale-up) gives back what its replicas that never came
        up hold: their allocations and rows go, so the host's capacity is free again
        (the container stays, in ``error``, for the user to read and delete; a scale
        makes the missing replicas again). Replicas that did come up stay. An engine
        container such a replica left (made, but its start failed) is destroyed here
        or, if its host does not answer, reaped by the reconciler as an orphan."""
        async with self.core.db.sessionmaker() as session:
            container, replicas, hosts = await self._load(session, ctx.op.resource_id)
        if container is None:
            return
        if ctx.op.kind == "container.scale":
            added = set(ctx.op.params.get("add", []))
            replicas = [r for r in replicas if r.id in added]

        for r in replicas:
            if r.state != "pending":
                continue
            host = hosts.get(r.host_id)
            try:
                await self._remove(container, r, host)
            except Exception:  # the engine side is then the reconciler's (orphan reaping)
                log.warning("could not remove replica %s of a failed create", r.id, exc_info=True)
                await self._remove(container, r, None)

    # --- cancelling a pending operation (in the cancelling transaction) ---------------
    async def cancel_create(self, session: AsyncSession, op: Operation) -> None:
        # The container is locked before its replicas are removed: the order every
        # writer of their rows takes (nefos.monitoring.servicehealth.lock_live_replicas).
        container = await session.get(
            Container, op.resource_id, populate_existing=True, with_for_update=True
        )
        if container is None:
            return
        rows = (
            await session.scalars(
                select(ContainerReplica).where(ContainerReplica.container_id == container.id)
            )
        ).all()
        for r in rows:
            await self.core.placer.release(session, r.host_id, _replica_request(r, "docker"))
            await session.delete(r)
        # The replicas' rows go first: with no ORM relationship to order the two, the
        # container's DELETE could run first and its ON DELETE CASCADE take them.
        await session.flush()
        await session.delete(container)

    async def cancel_transition(self, session: AsyncSession, op: Operation) -> None:
        container = await session.get(Container, op.resource_id, populate_existing=True)
        if container is not None:
            container.status = op.params.get("from_status", container.status)
            container.desired = op.params.get("from_desired", container.desired)

    async def cancel_scale(self, session: AsyncSession, op: Operation) -> None:
        container = await session.get(Container, op.resource_id, populate_existing=True)
        if container is None:
            return
        for replica_id in op.params.get("add", []):
            r = await session.get(ContainerReplica, replica_id)
            if r is not None:
                await self.core.placer.release(session, r.host_id, _replica_request(r, "docker"))
                await session.delete(r)
        container.replicas = op.params.get("from_replicas", container.replicas)
        container.status = op.params.get("from_status", container.status)

    async def cancel_update(self, session: AsyncSession, op: Operation) -> None:
        if op.attempts:
            # It ran before (and went back to pending to retry): replicas may have
            # moved already. It finishes, or rolls back, on its own.
            raise Conflict("The update has begun; it finishes or rolls back on its own")
        container = await session.get(Container, op.resource_id, populate_existing=True)
        if container is None:
            return
        for replica_id in op.params.get("add", []):
            r = await session.get(ContainerReplica, replica_id)
            if r is not None:
                await self.core.placer.release(session, r.host_id, _replica_request(r, "docker"))
                await session.delete(r)
        for key, value in op.params.get("previous", {}).items():
            setattr(container, key, value)
        container.generation = op.params.get("from_generation", container.generation)
        container.status = op.params.get("from_status", container.status)
        container.status_reason = None


def replica_view(
    container: Container, replicas: Sequence[ContainerReplica], hosts: dict[str, Host]
) -> dict[str, Any]:
    """Each replica's published ports. A fixed port the port mesh publishes shows as
    that port (``mesh``: true), with ``instance_port`` the replica's own port of the
    range that the mesh forwards to."""
    fixed = {
        (p.container_port, p.protocol): p.host_port
        for p in map(parse_port, container.ports)
        if p.host_port
    }
    endpoints = []
    for r in replicas:
        for p in r.published or []:
            host = hosts.get(r.host_id)
            view = {**p, "replica": r.slot, "host": host.hostname if host else None}
            wanted = fixed.get((int(p.get("container_port", 0)), p.get("protocol", "tcp")))
            if wanted and p.get("host_port") and p["host_port"] != wanted:
                view.update(host_port=wanted, mesh=True, instance_port=p["host_port"])
            endpoints.append(view)
    return {
        "endpoints": endpoints,
        "replica_states": [
            {"slot": r.slot, "state": r.state, "host_id": r.host_id, "generation": r.generation}
            for r in replicas
        ],
    }
