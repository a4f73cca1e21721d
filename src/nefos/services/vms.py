"""Virtual machines (seeds 000, 001, 003): one libvirt domain per VM.

A request changes the database only: it checks the quota, places the VM
(``Placer``: a guarded ``UPDATE`` of the host, so hosts are never overbooked),
writes the VM and an operation in one transaction, and answers 202. A worker then
makes libvirt agree (``VmOps``); each step first looks at what already exists
(the domain is found by its name, ``nefos-<vm id>``), so an operation interrupted
by a crash can simply run again.

Sizes. A VM's row holds the sizes it should have; a resize (``PUT``) swaps the
allocation on its host in the request's transaction (refused when the host has no
room), and the ``vm.resize`` operation changes the domain. CPU and memory change
while the VM is stopped; the root disk only grows.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing import metering
from nefos.billing.accounts import require_funds
from nefos.db.models import (
    Host,
    Image,
    Network,
    Operation,
    Project,
    ServiceInstanceHealth,
    ServiceSettings,
    Vm,
    Volume,
)
from nefos.db.session import begin_write
from nefos.domain import lifecycle
from nefos.domain.access import Permission
from nefos.domain.actors import SystemActor
from nefos.domain.errors import (
    Conflict,
    NotFound,
    ResourceExhausted,
    ServiceUnavailable,
    ValidationFailed,
)
from nefos.domain.lifecycle import VmStatus
from nefos.domain.paging import PageParams
from nefos.drivers.base import (
    DriverError,
    HostUnreachable,
    InstanceInfo,
    InstanceState,
    InvalidState,
    Shell,
)
from nefos.drivers.libvirt import VmSpec, domain_name
from nefos.events import record
from nefos.events.capture import vm_event
from nefos.operations import OpContext, enqueue
from nefos.scheduler import NoValidHost, PlacementRequest
from nefos.schemas.vms import VmCreate, VmStop, VmUpdate
from nefos.services.containers import LABEL_INSTALLATION, installation_id, operation_url
from nefos.services.core import Core
from nefos.services.drivers import VM_DRIVERS
from nefos.services.hosts import (
    Unreachable,
    abandon_unreachable,
    domain_error,
    driver_call,
    probe,
)
from nefos.services.images import (
    ImageService,
    ensure_on_host,
    label,
    min_memory_mb,
    pool_image_name,
)
from nefos.services.lifecycle import transition
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal, authorize_project
from nefos.services.quotas import check_quota

log = logging.getLogger("nefos.vms")

#: The label naming the Nefos VM a domain is (``nefos.id`` says it too).
LABEL_VM = "nefos.vm"

#: Statuses a VM settles in; every other one is an operation in progress.
#: The statuses the reconciler may correct: no operation is under way.
SETTLED = lifecycle.VM.settled


def network_name(network_id: str) -> str:
    """The libvirt network a Nefos network is on each host."""
    return f"nefos-net-{network_id}"


def network_labels(core: Core, network: Network) -> dict[str, str]:
    """The labels a network carries on each host (the reconciler reads them)."""
    return {"nefos.network": network.id, LABEL_INSTALLATION: installation_id(core)}


#: The least memory of any VM (MiB), whatever its image.
MIN_MEMORY_MB = 64


def check_sizes(
    core: Core, image: Image, *, memory_mb: int, storage_gb: int, memory_field: str
) -> None:
    """Refuse (422, naming the field, the image as its users know it, and the least
    that works) a VM smaller than its image needs: a size is never raised silently,
    and a VM that could not boot is never accepted only to fail later.
    ``memory_field`` is the field the caller gave (``memory_gb`` or ``memory_mb``)."""
    image_floor = min_memory_mb(core, image) or 0
    floor = max(MIN_MEMORY_MB, image_floor)
    if memory_mb < floor:
        who = f"Image {label(image)!r} needs" if image_floor >= floor else "A VM needs"
        if memory_field == "memory_mb":
            least = f"{floor} MiB"
        else:  # in the field's unit, rounded up so that the size named is enough
            least = f"{math.ceil(floor * 100 / 1024) / 100:g} GB"
        message = f"{who} at least {least} of memory"
        raise ValidationFailed(message, **{memory_field: message})
    if storage_gb < image.min_disk_gb:
        message = f"Image {label(image)!r} needs a disk of at least {image.min_disk_gb} GB"
        raise ValidationFailed(message, storage_gb=message)


def vm_request(vm: Vm, driver: str = "libvirt") -> PlacementRequest:
    return PlacementRequest(
        driver=driver, cpus=vm.cpu_cores, memory_mb=vm.memory_mb, disk_gb=vm.storage_gb
    )


def sized(driver: str, cpu_cores: int, memory_mb: int, storage_gb: int) -> PlacementRequest:
    return PlacementRequest(driver=driver, cpus=cpu_cores, memory_mb=memory_mb, disk_gb=storage_gb)


def vm_public(vm: Vm) -> dict[str, Any]:
    return {
        "id": vm.id,
        "name": vm.name,
        "project_id": vm.project_id,
        "user_id": vm.user_id,
        "host_id": vm.host_id,
        "image_id": vm.image_id,
        "os_type": vm.os_type,
        "os_version": vm.os_version,
        "flavor": vm.flavor,
        "cpu_cores": vm.cpu_cores,
        "memory_gb": round(vm.memory_mb / 1024, 3),
        "memory_mb": vm.memory_mb,
        "storage_gb": vm.storage_gb,
        "ip_address": vm.ip_address,
        "network_id": vm.network_id,
        "service_port": vm.service_port,
        "ssh_keys": list(vm.ssh_keys or []),
        "has_user_data": bool(vm.user_data),
        "status": vm.status,
        "status_reason": vm.status_reason,
        "created_at": vm.created_at,
        "updated_at": vm.updated_at,
    }


def op_ref(op: Operation) -> dict[str, str]:
    return {"id": op.id, "status": op.status, "url": operation_url(op.id)}


class VmService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    # --- reading ----------------------------------------------------------------------
    async def list_page(
        self, project: Project, page: PageParams, *, status: str | None = None
    ) -> tuple[Sequence[Vm], int]:
        where: list[Any] = [Vm.project_id == project.id]
        if status:
            where.append(Vm.status == status)
        return await fetch_page(
            self.session, Vm, *where, order_by=(Vm.created_at, Vm.id), page=page
        )

    async def visible(self, principal: Principal, vm_id: str, permission: Permission) -> Vm:
        """The VM if the caller may act on it; another tenant's is NotFound."""
        vm = await self.session.get(Vm, vm_id)
        if vm is None:
            raise NotFound("VM not found", vm_id=vm_id)
        try:
            await authorize_project(self.session, principal, vm.project_id, permission)
        except NotFound:
            raise NotFound("VM not found", vm_id=vm_id) from None
        return vm

    async def console(self, vm: Vm, *, tail: int) -> str:
        if vm.driver_id is None and vm.status == "creating":
            return ""
        host = await self.session.get(Host, vm.host_id)
        if host is None:
            return ""
        driver = self.core.drivers.for_host(host)
        try:
            return await asyncio.wait_for(
                driver.logs(vm_domain(vm), tail=tail),
                self.core.settings.host_timeout,
            )
        except TimeoutError as exc:
            err = ServiceUnavailable("The VM's host does not answer")
            err.engine_message = f"host {host.hostname} did not answer in time"
            raise err from exc
        except DriverError as exc:
            if exc.code == "NOT_FOUND":
                return ""
            raise domain_error(exc) from exc

    async def open_console(self, vm: Vm, *, force: bool = False) -> Shell:
        """The running VM's serial console, interactive (one at a time; ``force``
        takes over another one, which ends)."""
        if vm.status != "running":
            raise Conflict("The VM is not running", status=vm.status)
        host = await self.session.get(Host, vm.host_id)
        if host is None:
            raise Conflict("The VM is not running", status=vm.status)
        driver = self.core.drivers.for_host(host)
        if not driver.capabilities.supports_console:
            raise Conflict("This VM's host offers no interactive console")
        try:
            # The driver bounds the open (host_timeout): a console it opens after
            # giving up is closed, not left holding the VM's one console.
            return await driver.open_console(vm_domain(vm), force=force)
        except HostUnreachable as exc:
            away = ServiceUnavailable("The VM's host does not answer")
            away.engine_message = f"host {host.hostname}: {exc.message}"
            raise away from exc
        except InvalidState as exc:
            err = (
                Conflict(
                    "Another console is open on this VM (force=true takes it over)",
                    console="busy",
                )
                if "another console" in exc.message
                else Conflict("The VM is not running", status=vm.status)
            )
            err.engine_message = exc.message
            raise err from exc
        except DriverError as exc:
            raise domain_error(exc) from exc

    # --- creating ---------------------------------------------------------------------
    async def create(
        self,
        principal: Principal,
        project: Project,
        body: VmCreate,
        *,
        restore_from: str | None = None,
        host_id: str | None = None,
    ) -> tuple[Vm, Operation]:
        """Check, place and record a VM, and enqueue its ``vm.create``.

        ``restore_from`` (a backup's root volume) and ``host_id`` (the backup's host,
        where that volume is) are for restoring a backup."""
        memory_mb = body.resolved_memory_mb
        await begin_write(self.session)
        try:
            if await self.session.scalar(
                select(Vm.id).where(Vm.project_id == project.id, Vm.name == body.name)
            ):
                raise Conflict("A VM with this name exists in the project", name=body.name)
            image = await ImageService(self.core, self.session).for_vm(
                project.id,
                image_id=body.image_id,
                os_type=body.os_type,
                os_version=body.os_version,
            )
            check_sizes(
                self.core,
                image,
                memory_mb=memory_mb,
                storage_gb=body.storage_gb,
                memory_field="memory_mb" if body.memory_mb is not None else "memory_gb",
            )
            network = None
            if body.network_id is not None:
                network = await self.session.get(Network, body.network_id)
                if network is None or network.project_id != project.id:
                    raise ValidationFailed(
                        "No such network in this project", network_id=body.network_id
                    )
            if body.service_port is not None:
                _serviceable(network)
            await require_funds(self.session, self.core.settings, project.organisation_id)
            await check_quota(
                self.session,
                project.id,
                instances=1,
                cpu_milli=body.cpu_cores * 1000,
                memory_mb=memory_mb,
                storage_gb=body.storage_gb,
            )
            vm = Vm(
                project_id=project.id,
                user_id=principal.user_id,
                name=body.name,
                image_id=image.id,
                os_type=body.os_type or image.os_type,
                os_version=body.os_version or image.os_version,
                flavor=body.flavor,
                cpu_cores=body.cpu_cores,
                memory_mb=memory_mb,
                storage_gb=body.storage_gb,
                user_data=body.user_data,
                ssh_keys=list(body.ssh_keys),
                network_id=body.network_id,
                service_port=body.service_port,
                restore_from=restore_from,
                status="creating",
                desired="running",
            )
            async with self.core.placer.lock:
                host = await self._place(vm, host_id)
                vm.host_id = host.id
                self.session.add(vm)
                await self.session.flush()
                await self._reachable(host)
                op = await enqueue(
                    self.session,
                    kind="vm.create",
                    resource_type="vm",
                    resource_id=vm.id,
                    project_id=project.id,
                    user_id=principal.user_id,
                )
                await self.session.commit()
        except BaseException as exc:
            await self._abandon(exc)
            raise
        self.core.workers.notify()
        return vm, op

    async def _place(self, vm: Vm, host_id: str | None) -> Host:
        placer = self.core.placer
        if host_id is not None:
            # A restore goes where its backup is: that host, or nothing.
            host = await self.session.get(Host, host_id)
            if host is None or not await placer.claim_on(
                self.session, host_id, vm_request(vm, host.driver)
            ):
                raise ResourceExhausted(
                    "The backup's host has no room for this VM (or is offline)", host_id=host_id
                )
            return host
        last: NoValidHost | None = None
        for driver in VM_DRIVERS:
            try:
                (alloc,) = await placer.allocate(self.session, vm_request(vm, driver))
            except NoValidHost as exc:
                last = exc
                continue
            host = await self.session.get(Host, alloc.host_id)
            assert host is not None
            return host
        assert last is not None
        raise last

    async def _reachable(self, host: Host) -> None:
        """A dead hypervisor is a 503 now, with nothing made, rather than an operation
        that fails later."""
        await probe(self.core, host, self.core.drivers.for_host(host).ping())

    async def _abandon(self, exc: BaseException) -> None:
        if self.session.in_transaction():
            await self.session.rollback()
        self.core.placer.invalidate()
        if isinstance(exc, IntegrityError):
            raise Conflict("A VM with this name exists in the project") from exc
        if isinstance(exc, Unreachable):
            raise await abandon_unreachable(self.core, self.session, exc, "VM") from exc

    async def _org_of(self, vm: Vm) -> str:
        project = await self.session.get(Project, vm.project_id)
        assert project is not None
        return project.organisation_id

    # --- transitions ------------------------------------------------------------------
    async def _transition(
        self,
        principal: Principal | SystemActor,
        vm: Vm,
        action: str,
        params: dict[str, Any] | None = None,
    ) -> tuple[Vm, Operation]:
        return await transition(
            self.core, self.session, lifecycle.VM, Vm, vm.id, principal, action, params
        )

    async def start(self, principal: Principal, vm: Vm) -> tuple[Vm, Operation]:
        await require_funds(self.session, self.core.settings, await self._org_of(vm))
        return await self._transition(principal, vm, "start")

    async def stop(
        self, principal: Principal | SystemActor, vm: Vm, body: VmStop
    ) -> tuple[Vm, Operation]:
        """Stop the VM, for a user or for the system (billing suspension)."""
        timeout = 0.0 if body.force else body.timeout
        return await self._transition(principal, vm, "stop", {"timeout": timeout})

    async def reboot(self, principal: Principal, vm: Vm, *, hard: bool) -> tuple[Vm, Operation]:
        return await self._transition(principal, vm, "reboot", {"hard": hard})

    async def delete(self, principal: Principal, vm: Vm) -> tuple[Vm, Operation]:
        """Destroy the domain and its disks; attached volumes are detached and kept."""
        return await self._transition(principal, vm, "delete")

    async def update(
        self, principal: Principal, vm: Vm, body: VmUpdate
    ) -> tuple[Vm, Operation | None]:
        """Rename at once; resize through a ``vm.resize`` operation (VM stopped)."""
        await begin_write(self.session)
        try:
            current = await self.session.get(Vm, vm.id, populate_existing=True)
            if current is None:
                raise NotFound("VM not found", vm_id=vm.id)
            if body.name is not None and body.name != current.name:
                taken = await self.session.scalar(
                    select(Vm.id).where(Vm.project_id == current.project_id, Vm.name == body.name)
                )
                if taken:
                    raise Conflict("A VM with this name exists in the project", name=body.name)
                current.name = body.name
            if "service_port" in body.model_fields_set:
                await self._set_service_port(current, body.service_port)
            cpu = body.cpu_cores if body.cpu_cores is not None else current.cpu_cores
            asked = body.resolved_memory_mb
            memory = asked if asked is not None else current.memory_mb
            disk = body.storage_gb if body.storage_gb is not None else current.storage_gb
            old = (current.cpu_cores, current.memory_mb, current.storage_gb)
            if (cpu, memory, disk) == old:
                await self.session.commit()
                return current, None
            if disk < current.storage_gb:
                raise ValidationFailed(
                    f"A disk only grows: storage_gb must be at least {current.storage_gb}",
                    storage_gb=f">= {current.storage_gb}",
                )
            image = await self.session.get(Image, current.image_id)
            if image is not None:
                check_sizes(
                    self.core,
                    image,
                    memory_mb=memory,
                    storage_gb=disk,
                    memory_field="memory_mb" if body.memory_mb is not None else "memory_gb",
                )
            move = lifecycle.VM.move("resize", current.status)
            await check_quota(
                self.session,
                current.project_id,
                cpu_milli=max(0, cpu - current.cpu_cores) * 1000,
                memory_mb=max(0, memory - current.memory_mb),
                storage_gb=max(0, disk - current.storage_gb),
            )
            host = await self.session.get(Host, current.host_id)
            driver = host.driver if host else "libvirt"
            async with self.core.placer.lock:
                if not await self.core.placer.resize(
                    self.session,
                    current.host_id,
                    sized(driver, *old),
                    sized(driver, cpu, memory, disk),
                ):
                    raise ResourceExhausted(
                        "The VM's host has no room for the new size",
                        host_id=current.host_id,
                    )
            op = await enqueue(
                self.session,
                kind="vm.resize",
                resource_type="vm",
                resource_id=current.id,
                project_id=current.project_id,
                user_id=principal.user_id,
                params={
                    "from_status": current.status,
                    "from_desired": current.desired,
                    "from": {"cpu_cores": old[0], "memory_mb": old[1], "storage_gb": old[2]},
                    "to": {"cpu_cores": cpu, "memory_mb": memory, "storage_gb": disk},
                },
            )
            current.cpu_cores, current.memory_mb, current.storage_gb = cpu, memory, disk
            current.status = move.to
            await self.session.commit()
        except BaseException:
            if self.session.in_transaction():
                await self.session.rollback()
            self.core.placer.invalidate()
            raise
        self.core.workers.notify()
        return current, op

    async def _set_service_port(self, vm: Vm, port: int | None) -> None:
        """Declare the VM's service port (it becomes a service), change it, or with
        None end its service (its settings and health go with it)."""
        if port is not None:
            network = await self.session.get(Network, vm.network_id) if vm.network_id else None
            _serviceable(network)
        elif vm.service_port is not None:
            await self.session.execute(
                delete(ServiceSettings).where(ServiceSettings.vm_id == vm.id)
            )
            await self.session.execute(
                delete(ServiceInstanceHealth).where(ServiceInstanceHealth.vm_id == vm.id)
            )
        vm.service_port = port


def _serviceable(network: Network | None) -> None:
    """A VM's service is reached at its address on a Nefos network with a subnet
    (leased by the network's DHCP server): without one there is nothing to reach."""
    if network is None or not network.cidr:
        raise ValidationFailed(
            "service_port: a VM serves on a Nefos network with a subnet; give network_id "
            "(a network created with a cidr)",
            service_port="needs a network with a subnet",
        )


def vm_domain(vm: Vm) -> str:
    """The VM's libvirt domain: the one recorded, else the name the driver gives it."""
    return vm.driver_id or domain_name(vm.id)


_SEEN = {
    InstanceState.RUNNING: VmStatus.RUNNING,
    InstanceState.PAUSED: VmStatus.RUNNING,
    InstanceState.CREATED: VmStatus.STOPPED,
    InstanceState.STOPPED: VmStatus.STOPPED,
    InstanceState.ERROR: VmStatus.ERROR,
}


# --- the operations ----------------------------------------------------------------------
class VmOps:
    """The worker side: make libvirt agree with the rows, step by idempotent step."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def register(self) -> None:
        w = self.core.workers
        w.register("vm.create", self.run_create, self.failed, self.cancel_create)
        w.register("vm.start", self.run_start, self.failed, self.cancel_transition)
        w.register("vm.stop", self.run_stop, self.failed, self.cancel_transition)
        w.register("vm.reboot", self.run_reboot, self.failed, self.cancel_transition)
        w.register("vm.resize", self.run_resize, self.resize_failed, self.cancel_resize)
        w.register("vm.delete", self.run_delete, self.failed, self.cancel_transition)

    async def _load(
        self, vm_id: str
    ) -> tuple[Vm | None, Host | None, Image | None, Network | None]:
        async with self.core.db.sessionmaker() as session:
            vm = await session.get(Vm, vm_id, populate_existing=True)
            if vm is None:
                return None, None, None, None
            host = await session.get(Host, vm.host_id)
            image = await session.get(Image, vm.image_id)
            network = await session.get(Network, vm.network_id) if vm.network_id else None
            return vm, host, image, network

    def spec(self, vm: Vm, image: Image) -> Any:
        return VmSpec(
            nefos_id=vm.id,
            project_id=vm.project_id,
            name=vm.name,
            image=pool_image_name(image.id),
            cpu=float(vm.cpu_cores),
            memory_mb=vm.memory_mb,
            labels={LABEL_VM: vm.id, LABEL_INSTALLATION: installation_id(self.core)},
            user_data=vm.user_data,
            ssh_keys=tuple(vm.ssh_keys or ()),
            disk_gb=vm.storage_gb,
            kernel_cmdline=image.kernel_cmdline,
            network=network_name(vm.network_id) if vm.network_id else None,
            root_from=vm.restore_from,
        )

    async def _save(
        self,
        vm_id: str,
        *,
        status: VmStatus | None = None,
        reason: str | None = None,
        info: InstanceInfo | None = None,
        **fields: Any,
    ) -> None:
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            vm = await session.get(Vm, vm_id, populate_existing=True)
            if vm is not None:
                if status is not None:
                    vm.status = status
                    vm.status_reason = reason
                if info is not None:
                    vm.driver_id = info.driver_id
                for name, value in fields.items():
                    setattr(vm, name, value)
            await session.commit()

    async def _ensure_domain(
        self, ctx: OpContext, vm: Vm, host: Host, image: Image, network: Network | None
    ) -> InstanceInfo:
        """The VM's domain, made if it does not exist yet (with its image and network
        on the host first)."""
        driver: Any = self.core.drivers.for_host(host)
        name = domain_name(vm.id)
        try:
            return await driver_call(self.core, host, driver.get(name))
        except NotFound:
            pass
        await ensure_on_host(self.core, host, image)
        ctx.progress(30)
        if network is not None:
            await driver_call(
                self.core,
                host,
                driver.create_network(
                    network.id,
                    project_id=network.project_id,
                    cidr=network.cidr,
                    labels=network_labels(self.core, network),
                ),
            )
        try:
            info = await driver_call(self.core, host, driver.create(self.spec(vm, image)))
        except ValidationFailed as invalid:
            # Made by an earlier, interrupted attempt between our get and create?
            try:
                info = await driver_call(self.core, host, driver.get(name))
            except NotFound:
                raise invalid from None
        ctx.progress(60)
        return info  # type: ignore[no-any-return]

    async def run_create(self, ctx: OpContext) -> dict[str, Any] | None:
        vm, host, image, network = await self._load(ctx.op.resource_id)
        if vm is None or host is None or image is None:
            return {"skipped": "VM no longer exists"}
        info = await self._ensure_domain(ctx, vm, host, image, network)
        await self._save(vm.id, info=info)
        driver = self.core.drivers.for_host(host)
        info = await driver_call(self.core, host, driver.start(info.driver_id))
        await self._save(vm.id, status=VmStatus.RUNNING, info=info)
        return {"driver_id": info.driver_id, "host_id": host.id}

    async def run_start(self, ctx: OpContext) -> dict[str, Any] | None:
        vm, host, image, network = await self._load(ctx.op.resource_id)
        if vm is None or host is None or image is None:
            return {"skipped": "VM no longer exists"}
        info = await self._ensure_domain(ctx, vm, host, image, network)
        driver = self.core.drivers.for_host(host)
        info = await driver_call(self.core, host, driver.start(info.driver_id))
        await self._save(vm.id, status=VmStatus.RUNNING, info=info)
        return {"state": "running"}

    async def run_stop(self, ctx: OpContext) -> dict[str, Any] | None:
        vm, host, _, _ = await self._load(ctx.op.resource_id)
        if vm is None or host is None:
            return {"skipped": "VM no longer exists"}
        timeout = ctx.op.params.get("timeout")
        grace = self.core.settings.vm_stop_timeout if timeout is None else float(timeout)
        driver = self.core.drivers.for_host(host)
        try:
            info = await driver_call(
                self.core, host, driver.stop(vm_domain(vm), grace_seconds=grace)
            )
        except NotFound:
            await self._save(
                vm.id, status=VmStatus.ERROR, reason="the domain is gone from its host"
            )
            return {"state": "missing"}
        await self._save(vm.id, status=VmStatus.STOPPED, info=info)
        return {"state": "stopped", "forced": grace == 0}

    async def run_reboot(self, ctx: OpContext) -> dict[str, Any] | None:
        vm, host, _, _ = await self._load(ctx.op.resource_id)
        if vm is None or host is None:
            return {"skipped": "VM no longer exists"}
        driver: Any = self.core.drivers.for_host(host)
        info = await driver_call(
            self.core,
            host,
            driver.reboot(vm_domain(vm), hard=bool(ctx.op.params.get("hard"))),
        )
        await self._save(vm.id, status=VmStatus.RUNNING, info=info)
        return {"state": "running"}

    async def run_resize(self, ctx: OpContext) -> dict[str, Any] | None:
        vm, host, image, network = await self._load(ctx.op.resource_id)
        if vm is None or host is None or image is None:
            return {"skipped": "VM no longer exists"}
        to = ctx.op.params["to"]
        source = ctx.op.params["from"]
        driver: Any = self.core.drivers.for_host(host)
        info = await self._ensure_domain(ctx, vm, host, image, network)
        info = await driver_call(
            self.core,
            host,
            driver.resize(
                info.driver_id,
                cpu=float(to["cpu_cores"]) if to["cpu_cores"] != source["cpu_cores"] else None,
                memory_mb=to["memory_mb"] if to["memory_mb"] != source["memory_mb"] else None,
                disk_gb=to["storage_gb"] if to["storage_gb"] != source["storage_gb"] else None,
            ),
        )
        await self._save(vm.id, status=VmStatus.STOPPED, info=info)
        return {"resized": to}

    async def run_delete(self, ctx: OpContext) -> dict[str, Any] | None:
        vm, host, _, _ = await self._load(ctx.op.resource_id)
        if vm is None:
            return {"deleted": True}
        if host is not None:
            driver = self.core.drivers.for_host(host)
            # By name, not UUID: a domain removed behind Nefos's back still names its
            # volumes, which destroy then removes too.
            await driver_call(self.core, host, driver.destroy(domain_name(vm.id)))
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            row = await session.get(Vm, vm.id, populate_existing=True, with_for_update=True)
            if row is not None:
                await metering.close(session, row)
                await self.core.placer.release(
                    session, row.host_id, vm_request(row, host.driver if host else "libvirt")
                )
                # Its volumes outlive it (detached); its snapshots go with the domain.
                await session.execute(
                    update(Volume)
                    .where(Volume.vm_id == row.id)
                    .values(vm_id=None, device=None, status="available")
                )
                await session.execute(delete(Vm).where(Vm.id == row.id))
                record(session, vm_event(row, row.status, "deleted"))
            await session.commit()
        self.core.placer.invalidate()
        return {"deleted": True}

    async def failed(self, ctx: OpContext, code: str, message: str) -> None:
        if ctx.op.kind == "vm.delete":
            await self._save(
                ctx.op.resource_id, status=VmStatus.ERROR, reason=f"delete failed: {message}"
            )
        else:
            await self._save(ctx.op.resource_id, status=VmStatus.ERROR, reason=f"{code}: {message}")

    async def resize_failed(self, ctx: OpContext, code: str, message: str) -> None:
        """Give the old size back (the domain kept it), and say why."""
        source, to = ctx.op.params["from"], ctx.op.params["to"]
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            vm = await session.get(Vm, ctx.op.resource_id, populate_existing=True)
            if vm is not None:
                host = await session.get(Host, vm.host_id)
                driver = host.driver if host else "libvirt"
                await self.core.placer.resize(
                    session,
                    vm.host_id,
                    sized(driver, to["cpu_cores"], to["memory_mb"], to["storage_gb"]),
                    sized(driver, source["cpu_cores"], source["memory_mb"], source["storage_gb"]),
                    guarded=False,
                )
                vm.cpu_cores = source["cpu_cores"]
                vm.memory_mb = source["memory_mb"]
                vm.storage_gb = source["storage_gb"]
                vm.status = VmStatus.STOPPED
                vm.status_reason = f"resize failed: {code}: {message}"
            await session.commit()

    # --- cancelling a pending operation (in the cancelling transaction) ---------------
    async def cancel_create(self, session: AsyncSession, op: Operation) -> None:
        vm = await session.get(Vm, op.resource_id, populate_existing=True)
        if vm is None:
            return
        host = await session.get(Host, vm.host_id)
        await self.core.placer.release(
            session, vm.host_id, vm_request(vm, host.driver if host else "libvirt")
        )
        await session.delete(vm)

    async def cancel_transition(self, session: AsyncSession, op: Operation) -> None:
        vm = await session.get(Vm, op.resource_id, populate_existing=True)
        if vm is not None:
            vm.status = op.params.get("from_status", vm.status)
            vm.desired = op.params.get("from_desired", vm.desired)

    async def cancel_resize(self, session: AsyncSession, op: Operation) -> None:
        vm = await session.get(Vm, op.resource_id, populate_existing=True)
        if vm is None:
            return
        source, to = op.params["from"], op.params["to"]
        host = await session.get(Host, vm.host_id)
        driver = host.driver if host else "libvirt"
        await self.core.placer.resize(
            session,
            vm.host_id,
            sized(driver, to["cpu_cores"], to["memory_mb"], to["storage_gb"]),
            sized(driver, source["cpu_cores"], source["memory_mb"], source["storage_gb"]),
            guarded=False,
        )
        vm.cpu_cores = source["cpu_cores"]
        vm.memory_mb = source["memory_mb"]
        vm.storage_gb = source["storage_gb"]
        vm.status = op.params.get("from_status", "stopped")


def seen_status(state: InstanceState) -> VmStatus | None:
    """The VM status a domain state stands for (None: the domain is missing)."""
    return _SEEN.get(state)
