"""What VMs keep and join (seed 001): snapshots, backups, volumes and networks.

Every change that touches libvirt is an operation, like the VM's own. Operations on
a VM's snapshots and backups lock the VM (``enqueue(lock=vm.id)``), so they never
run beside a stop, a resize or another snapshot of it; volume operations lock the
volume, and attaching also requires the VM to be settled.

* Snapshots are internal qcow2 snapshots of a stopped VM's disks (root disk and
  attached volumes); reverting needs the VM stopped, and keeps its current sizes.
* Backups are full, standalone copies of a stopped VM's disks in the host's backup
  pool. They outlive the VM; restoring one makes a new VM on the same host whose
  root disk is a copy of the backup's.
* Volumes are qcow2 data disks in a host's pool: made on the host of the VM they
  are first attached to (or the libvirt host with the most free disk), attached to
  one VM at a time, grown, deleted once detached.
* Networks are isolated libvirt networks (``nefos-net-<id>``), made on a host when
  the first VM there joins one, and removed from every host when deleted (refused
  while a VM uses it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing import metering
from nefos.billing.accounts import require_funds
from nefos.db.models import Backup, Host, Network, Operation, Project, Snapshot, Vm, Volume
from nefos.db.session import begin_write
from nefos.domain.access import Permission
from nefos.domain.errors import Conflict, NotFound, ResourceExhausted, ValidationFailed
from nefos.domain.paging import PageParams
from nefos.operations import OpContext, enqueue
from nefos.schemas.vms import (
    BackupCreate,
    BackupRestore,
    NetworkCreate,
    SnapshotCreate,
    VmCreate,
    VolumeCreate,
)
from nefos.services.core import Core
from nefos.services.drivers import VM_DRIVERS, supported_driver
from nefos.services.hosts import ACTIVE, driver_call
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal, authorize_project
from nefos.services.quotas import check_quota
from nefos.services.vms import VmService, network_name, vm_domain

log = logging.getLogger("nefos.storage")


def snapshot_public(s: Snapshot) -> dict[str, Any]:
    return {
        "id": s.id,
        "name": s.name,
        "vm_id": s.vm_id,
        "project_id": s.project_id,
        "description": s.description,
        "status": s.status,
        "status_reason": s.status_reason,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    }


def backup_public(b: Backup) -> dict[str, Any]:
    return {
        "id": b.id,
        "name": b.name,
        "vm_id": b.vm_id,
        "project_id": b.project_id,
        "host_id": b.host_id,
        "image_id": b.image_id,
        "cpu_cores": b.cpu_cores,
        "memory_mb": b.memory_mb,
        "storage_gb": b.storage_gb,
        "size_bytes": b.size_bytes,
        "status": b.status,
        "status_reason": b.status_reason,
        "created_at": b.created_at,
        "updated_at": b.updated_at,
    }


def volume_public(v: Volume) -> dict[str, Any]:
    return {
        "id": v.id,
        "name": v.name,
        "project_id": v.project_id,
        "size_gb": v.size_gb,
        "vm_id": v.vm_id,
        "host_id": v.host_id,
        "device": v.device,
        "status": v.status,
        "status_reason": v.status_reason,
        "created_at": v.created_at,
        "updated_at": v.updated_at,
    }


def network_public(n: Network) -> dict[str, Any]:
    return {
        "id": n.id,
        "name": n.name,
        "project_id": n.project_id,
        "cidr": n.cidr,
        "status": n.status,
        "created_at": n.created_at,
        "updated_at": n.updated_at,
    }


class StorageService:
    """Requests on snapshots, backups, volumes and networks."""

    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    # --- shared -----------------------------------------------------------------------
    async def list_page(
        self,
        model: Any,
        project: Project,
        page: PageParams,
        *,
        status: str | None = None,
        vm_id: str | None = None,
    ) -> tuple[Sequence[Any], int]:
        where: list[Any] = [model.project_id == project.id]
        if status:
            where.append(model.status == status)
        if vm_id:
            where.append(model.vm_id == vm_id)
        return await fetch_page(
            self.session, model, *where, order_by=(model.created_at, model.id), page=page
        )

    async def visible(
        self, model: Any, principal: Principal, object_id: str, permission: Permission
    ) -> Any:
        """The object if the caller may act on it; another tenant's is NotFound."""
        what = model.__name__
        obj = await self.session.get(model, object_id)
        if obj is None:
            raise NotFound(f"{what} not found", id=object_id)
        try:
            await authorize_project(self.session, principal, obj.project_id, permission)
        except NotFound:
            raise NotFound(f"{what} not found", id=object_id) from None
        return obj

    async def _vm_in(self, principal: Principal, vm_id: str, project_id: str | None) -> Vm:
        vm = await VmService(self.core, self.session).visible(
            principal, vm_id, Permission.COMPUTE_WRITE
        )
        if project_id is not None and vm.project_id != project_id:
            raise ValidationFailed("The VM is in another project", vm_id=vm_id)
        return vm

    async def _write(
        self,
        principal: Principal,
        obj: Any,
        *,
        kind: str,
        lock: str | None = None,
        params: dict[str, Any] | None = None,
        add: bool = False,
    ) -> Operation:
        """Enqueue ``kind`` on ``obj`` (added first when ``add``) and commit; the
        caller began the write transaction."""
        try:
            if add:
                self.session.add(obj)
                await self.session.flush()
            op = await enqueue(
                self.session,
                kind=kind,
                resource_type=type(obj).__name__.lower(),
                resource_id=obj.id,
                project_id=obj.project_id,
                user_id=principal.user_id,
                params=params or {},
                lock=lock,
            )
            await self.session.commit()
        except IntegrityError as exc:
            await self.session.rollback()
            raise Conflict(f"A {type(obj).__name__.lower()} with this name exists") from exc
        except BaseException:
            if self.session.in_transaction():
                await self.session.rollback()
            raise
        self.core.workers.notify()
        return op

    async def _current(self, model: Any, object_id: str) -> Any:
        obj = await self.session.get(model, object_id, populate_existing=True)
        if obj is None:
            await self.session.rollback()
            raise NotFound(f"{model.__name__} not found", id=object_id)
        return obj

    @staticmethod
    def _stopped(vm: Vm, action: str) -> None:
        if vm.status != "stopped":
            raise Conflict(f"Stop the VM before {action} (it is {vm.status})", status=vm.status)

    # --- snapshots --------------------------------------------------------------------
    async def create_snapshot(
        self, principal: Principal, vm: Vm, body: SnapshotCreate
    ) -> tuple[Snapshot, Operation]:
        await begin_write(self.session)
        current: Vm = await self._current(Vm, vm.id)
        try:
            self._stopped(current, "snapshotting it")
            count = await self.session.scalar(
                select(func.count(Snapshot.id)).where(Snapshot.vm_id == vm.id)
            )
        except BaseException:
            await self.session.rollback()
            raise
        snap = Snapshot(
            project_id=current.project_id,
            vm_id=current.id,
            user_id=principal.user_id,
            name=body.name or f"{current.name}-snap-{(count or 0) + 1}",
            description=body.description,
            status="creating",
        )
        op = await self._write(principal, snap, kind="snapshot.create", lock=vm.id, add=True)
        return snap, op

    async def revert_snapshot(
        self, principal: Principal, snap: Snapshot
    ) -> tuple[Snapshot, Operation]:
        await begin_write(self.session)
        current: Snapshot = await self._current(Snapshot, snap.id)
        vm: Vm = await self._current(Vm, current.vm_id)
        try:
            if current.status != "available":
                raise Conflict(f"The snapshot is {current.status}", status=current.status)
            self._stopped(vm, "reverting it")
        except BaseException:
            await self.session.rollback()
            raise
        current.status = "reverting"
        op = await self._write(principal, current, kind="snapshot.revert", lock=vm.id)
        return current, op

    async def delete_snapshot(
        self, principal: Principal, snap: Snapshot
    ) -> tuple[Snapshot, Operation]:
        await begin_write(self.session)
        current: Snapshot = await self._current(Snapshot, snap.id)
        params = {"from_status": current.status}
        current.status = "deleting"
        op = await self._write(
            principal, current, kind="snapshot.delete", lock=current.vm_id, params=params
        )
        return current, op

    # --- backups ----------------------------------------------------------------------
    async def create_backup(
        self, principal: Principal, body: BackupCreate
    ) -> tuple[Backup, Operation]:
        vm = await self._vm_in(principal, body.vm_id, None)
        await begin_write(self.session)
        current: Vm = await self._current(Vm, vm.id)
        try:
            self._stopped(current, "backing it up")
        except BaseException:
            await self.session.rollback()
            raise
        backup = Backup(
            project_id=current.project_id,
            vm_id=current.id,
            user_id=principal.user_id,
            host_id=current.host_id,
            name=body.name or f"{current.name}-backup",
            image_id=current.image_id,
            cpu_cores=current.cpu_cores,
            memory_mb=current.memory_mb,
            storage_gb=current.storage_gb,
            status="creating",
        )
        op = await self._write(principal, backup, kind="backup.create", lock=vm.id, add=True)
        return backup, op

    async def restore_backup(
        self, principal: Principal, backup: Backup, body: BackupRestore
    ) -> tuple[Vm, Operation]:
        if backup.status != "available":
            raise Conflict(f"The backup is {backup.status}", status=backup.status)
        root = next((v for v in backup.volumes if v.endswith(".vda.qcow2")), None)
        if root is None:
            raise Conflict("The backup holds no root disk to restore", backup_id=backup.id)
        project = await self.session.get(Project, backup.project_id)
        assert project is not None
        await authorize_project(self.session, principal, project.id, Permission.COMPUTE_WRITE)
        create = VmCreate(
            name=body.name,
            image_id=backup.image_id,
            cpu_cores=body.cpu_cores or backup.cpu_cores,
            memory_mb=body.memory_mb or backup.memory_mb,
            storage_gb=backup.storage_gb,
            user_data=body.user_data,
            network_id=body.network_id,
        )
        return await VmService(self.core, self.session).create(
            principal, project, create, restore_from=root, host_id=backup.host_id
        )

    async def delete_backup(self, principal: Principal, backup: Backup) -> tuple[Backup, Operation]:
        await begin_write(self.session)
        current: Backup = await self._current(Backup, backup.id)
        params = {"from_status": current.status}
        current.status = "deleting"
        op = await self._write(principal, current, kind="backup.delete", params=params)
        return current, op

    # --- volumes ----------------------------------------------------------------------
    async def create_volume(
        self, principal: Principal, project: Project, body: VolumeCreate
    ) -> tuple[Volume, Operation]:
        vm = await self._vm_in(principal, body.vm_id, project.id) if body.vm_id else None
        await begin_write(self.session)
        try:
            if await self.session.scalar(
                select(Volume.id).where(Volume.project_id == project.id, Volume.name == body.name)
            ):
                raise Conflict("A volume with this name exists in the project", name=body.name)
            await require_funds(self.session, self.core.settings, project.organisation_id)
            await check_quota(self.session, project.id, storage_gb=body.size_gb)
            if vm is not None:
                host_id: str = vm.host_id
            else:
                host_id = await self._volume_host(body.size_gb)
        except BaseException:
            await self.session.rollback()
            raise
        volume = Volume(
            project_id=project.id,
            user_id=principal.user_id,
            name=body.name,
            size_gb=body.size_gb,
            host_id=host_id,
            status="creating",
        )
        op = await self._write(
            principal,
            volume,
            kind="volume.create",
            add=True,
            params={"attach_to": vm.id if vm else None},
        )
        return volume, op

    async def _volume_host(self, size_gb: int) -> str:
        """The active libvirt host with the most free disk that fits ``size_gb``."""
        hosts = (
            await self.session.scalars(
                select(Host).where(
                    Host.driver.in_(VM_DRIVERS), Host.status == ACTIVE, Host.enabled.is_(True)
                )
            )
        ).all()
        room = sorted(
            ((h.storage_gb - h.used_storage_gb, h.id) for h in hosts if supported_driver(h.driver)),
            reverse=True,
        )
        if not room or room[0][0] < size_gb:
            raise ResourceExhausted(
                "No VM host has room for this volume", size_gb=size_gb, hosts=len(room)
            )
        return room[0][1]

    async def attach_volume(
        self, principal: Principal, volume: Volume, vm_id: str
    ) -> tuple[Volume, Operation]:
        vm = await self._vm_in(principal, vm_id, volume.project_id)
        await begin_write(self.session)
        current: Volume = await self._current(Volume, volume.id)
        try:
            if current.vm_id == vm.id and current.status == "in-use":
                raise Conflict("The volume is attached to this VM already", vm_id=vm.id)
            if current.status != "available":
                raise Conflict(f"The volume is {current.status}", status=current.status)
            if current.host_id != vm.host_id:
                raise Conflict(
                    "The volume is on another host than the VM; volumes do not move",
                    volume_host=current.host_id,
                    vm_host=vm.host_id,
                )
            if vm.status in ("deleting", "creating"):
                raise Conflict(f"The VM is {vm.status}", status=vm.status)
        except BaseException:
            await self.session.rollback()
            raise
        current.status = "attaching"
        current.vm_id = vm.id
        op = await self._write(principal, current, kind="volume.attach", params={"vm_id": vm.id})
        return current, op

    async def detach_volume(self, principal: Principal, volume: Volume) -> tuple[Volume, Operation]:
        await begin_write(self.session)
        current: Volume = await self._current(Volume, volume.id)
        if current.vm_id is None or current.status != "in-use":
            status = current.status  # read before the rollback expires the row
            await self.session.rollback()
            raise Conflict(f"The volume is not attached ({status})", status=status)
        current.status = "detaching"
        op = await self._write(principal, current, kind="volume.detach")
        return current, op

    async def resize_volume(
        self, principal: Principal, volume: Volume, size_gb: int
    ) -> tuple[Volume, Operation]:
        await begin_write(self.session)
        current: Volume = await self._current(Volume, volume.id)
        try:
            if size_gb <= current.size_gb:
                raise ValidationFailed(
                    f"A volume only grows: size_gb must be above {current.size_gb}",
                    size_gb=f"> {current.size_gb}",
                )
            if current.status not in ("available", "in-use"):
                raise Conflict(f"The volume is {current.status}", status=current.status)
            await check_quota(
                self.session, current.project_id, storage_gb=size_gb - current.size_gb
            )
        except BaseException:
            await self.session.rollback()
            raise
        params = {"from_status": current.status, "from_size_gb": current.size_gb}
        current.size_gb = size_gb
        current.status = "resizing"
        op = await self._write(principal, current, kind="volume.resize", params=params)
        return current, op

    async def delete_volume(self, principal: Principal, volume: Volume) -> tuple[Volume, Operation]:
        await begin_write(self.session)
        current: Volume = await self._current(Volume, volume.id)
        if current.vm_id is not None:
            vm_id = current.vm_id  # read before the rollback expires the row
            await self.session.rollback()
            raise Conflict("The volume is attached to a VM; detach it first", vm_id=vm_id)
        params = {"from_status": current.status}
        current.status = "deleting"
        op = await self._write(principal, current, kind="volume.delete", params=params)
        return current, op

    # --- networks ---------------------------------------------------------------------
    async def create_network(
        self, principal: Principal, project: Project, body: NetworkCreate
    ) -> Network:
        """A network is a record until a VM joins it on a host (made there then)."""
        await begin_write(self.session)
        network = Network(
            project_id=project.id,
            user_id=principal.user_id,
            name=body.name,
            cidr=body.cidr,
            status="active",
        )
        self.session.add(network)
        try:
            await self.session.commit()
        except IntegrityError as exc:
            await self.session.rollback()
            raise Conflict(
                "A network with this name exists in the project", name=body.name
            ) from exc
        return network

    async def delete_network(
        self, principal: Principal, network: Network
    ) -> tuple[Network, Operation]:
        await begin_write(self.session)
        current: Network = await self._current(Network, network.id)
        users = await self.session.scalar(
            select(func.count(Vm.id)).where(Vm.network_id == current.id)
        )
        if users:
            await self.session.rollback()
            raise Conflict(f"{users} VM(s) use this network; delete them first", vms=users)
        params = {"from_status": current.status}
        current.status = "deleting"
        op = await self._write(principal, current, kind="network.delete", params=params)
        return current, op


# --- the operations ----------------------------------------------------------------------
class StorageOps:
    def __init__(self, core: Core) -> None:
        self.core = core

    def register(self) -> None:
        w = self.core.workers
        w.register("snapshot.create", self.run_snapshot, self.snapshot_failed, self.cancel_create)
        w.register("snapshot.revert", self.run_revert, self.revert_failed, self.cancel_revert)
        w.register("snapshot.delete", self.run_snapshot_delete, self.failed, self.cancel_delete)
        w.register("backup.create", self.run_backup, self.failed, self.cancel_create)
        w.register("backup.delete", self.run_backup_delete, self.failed, self.cancel_delete)
        w.register("volume.create", self.run_volume_create, self.failed, self.cancel_create)
        w.register("volume.attach", self.run_attach, self.attach_failed, self.cancel_attach)
        w.register("volume.detach", self.run_detach, self.failed, self.cancel_detach)
        w.register("volume.resize", self.run_volume_resize, self.resize_failed, self.cancel_resize)
        w.register("volume.delete", self.run_volume_delete, self.failed, self.cancel_delete)
        w.register("network.delete", self.run_network_delete, self.failed, self.cancel_delete)

    # --- helpers ----------------------------------------------------------------------
    async def _get(self, model: Any, object_id: str | None) -> Any:
        if object_id is None:
            return None
        async with self.core.db.sessionmaker() as session:
            return await session.get(model, object_id, populate_existing=True)

    def _driver(self, host: Host) -> Any:
        return self.core.drivers.for_host(host)

    async def _save(self, model: Any, object_id: str, **fields: Any) -> None:
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            obj = await session.get(model, object_id, populate_existing=True)
            if obj is not None:
                for name, value in fields.items():
                    setattr(obj, name, value)
            await session.commit()

    async def _remove(self, model: Any, object_id: str) -> None:
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            if model is Volume:
                current = await session.get(
                    Volume, object_id, populate_existing=True, with_for_update=True
                )
                if current is not None:
                    await metering.close(session, current)
            await session.execute(delete(model).where(model.id == object_id))
            await session.commit()

    @staticmethod
    def _model(ctx: OpContext) -> Any:
        return {
            "snapshot": Snapshot,
            "backup": Backup,
            "volume": Volume,
            "network": Network,
        }[ctx.op.resource_type]

    async def failed(self, ctx: OpContext, code: str, message: str) -> None:
        await self._save(
            self._model(ctx), ctx.op.resource_id, status="error", status_reason=f"{code}: {message}"
        )

    async def cancel_create(self, session: AsyncSession, op: Operation) -> None:
        model = {"snapshot": Snapshot, "backup": Backup, "volume": Volume}[op.resource_type]
        obj = await session.get(model, op.resource_id, populate_existing=True)
        if obj is not None:
            await session.delete(obj)

    async def cancel_delete(self, session: AsyncSession, op: Operation) -> None:
        model: Any = {
            "snapshot": Snapshot,
            "backup": Backup,
            "volume": Volume,
            "network": Network,
        }[op.resource_type]
        obj = await session.get(model, op.resource_id, populate_existing=True)
        if obj is not None:
            obj.status = op.params.get("from_status", "available")

    # --- snapshots --------------------------------------------------------------------
    async def _snapshot_vm(
        self, snapshot_id: str
    ) -> tuple[Snapshot | None, Vm | None, Host | None]:
        snap: Snapshot | None = await self._get(Snapshot, snapshot_id)
        if snap is None:
            return None, None, None
        vm: Vm | None = await self._get(Vm, snap.vm_id)
        host: Host | None = await self._get(Host, vm.host_id) if vm else None
        return snap, vm, host

    async def run_snapshot(self, ctx: OpContext) -> dict[str, Any] | None:
        snap, vm, host = await self._snapshot_vm(ctx.op.resource_id)
        if snap is None or vm is None or host is None:
            return {"skipped": "snapshot or VM no longer exists"}
        info = await driver_call(
            self.core, host, self._driver(host).snapshot(vm_domain(vm), snap.id)
        )
        await self._save(Snapshot, snap.id, status="available", status_reason=None)
        return {"snapshot": info.name}

    async def snapshot_failed(self, ctx: OpContext, code: str, message: str) -> None:
        await self.failed(ctx, code, message)

    async def run_revert(self, ctx: OpContext) -> dict[str, Any] | None:
        snap, vm, host = await self._snapshot_vm(ctx.op.resource_id)
        if snap is None or vm is None or host is None:
            return {"skipped": "snapshot or VM no longer exists"}
        driver = self._driver(host)
        domain = vm_domain(vm)
        await driver_call(self.core, host, driver.revert_snapshot(domain, snap.id))
        # The disk comes back at its size of then; the VM's record says how big it is.
        try:
            await driver_call(self.core, host, driver.resize(domain, disk_gb=vm.storage_gb))
        except ValidationFailed:
            pass  # the same size: nothing to grow
        await self._save(Snapshot, snap.id, status="available", status_reason=None)
        return {"reverted": snap.id}

    async def revert_failed(self, ctx: OpContext, code: str, message: str) -> None:
        await self._save(
            Snapshot,
            ctx.op.resource_id,
            status="available",
            status_reason=f"revert failed: {code}: {message}",
        )

    async def cancel_revert(self, session: AsyncSession, op: Operation) -> None:
        snap = await session.get(Snapshot, op.resource_id, populate_existing=True)
        if snap is not None:
            snap.status = "available"

    async def run_snapshot_delete(self, ctx: OpContext) -> dict[str, Any] | None:
        snap, vm, host = await self._snapshot_vm(ctx.op.resource_id)
        if snap is None:
            return {"deleted": True}
        if vm is not None and host is not None:
            await driver_call(
                self.core,
                host,
                self._driver(host).delete_snapshot(vm_domain(vm), snap.id),
            )
        await self._remove(Snapshot, snap.id)
        return {"deleted": True}

    # --- backups ----------------------------------------------------------------------
    async def run_backup(self, ctx: OpContext) -> dict[str, Any] | None:
        backup: Backup | None = await self._get(Backup, ctx.op.resource_id)
        if backup is None or backup.vm_id is None:
            return {"skipped": "backup or VM no longer exists"}
        vm: Vm | None = await self._get(Vm, backup.vm_id)
        host: Host | None = await self._get(Host, backup.host_id)
        if vm is None or host is None:
            return {"skipped": "VM no longer exists"}
        info = await driver_call(
            self.core, host, self._driver(host).backup(vm_domain(vm), backup.id)
        )
        await self._save(
            Backup,
            backup.id,
            status="available",
            status_reason=None,
            volumes=list(info.volumes),
            size_bytes=info.size_bytes,
        )
        return {"volumes": list(info.volumes), "size_bytes": info.size_bytes}

    async def run_backup_delete(self, ctx: OpContext) -> dict[str, Any] | None:
        backup: Backup | None = await self._get(Backup, ctx.op.resource_id)
        if backup is None:
            return {"deleted": True}
        in_use = await self._restoring(backup)
        if in_use:
            raise Conflict("A VM is being restored from this backup", vm_id=in_use)
        host: Host | None = await self._get(Host, backup.host_id)
        if host is not None:
            await driver_call(self.core, host, self._driver(host).delete_backup(backup.id))
        await self._remove(Backup, backup.id)
        return {"deleted": True}

    async def _restoring(self, backup: Backup) -> str | None:
        async with self.core.db.sessionmaker() as session:
            vm_id: str | None = await session.scalar(
                select(Vm.id).where(
                    Vm.restore_from.in_(backup.volumes or ["-"]), Vm.status == "creating"
                )
            )
            return vm_id

    # --- volumes ----------------------------------------------------------------------
    async def _volume(self, volume_id: str) -> tuple[Volume | None, Host | None]:
        volume: Volume | None = await self._get(Volume, volume_id)
        if volume is None:
            return None, None
        return volume, await self._get(Host, volume.host_id)

    async def run_volume_create(self, ctx: OpContext) -> dict[str, Any] | None:
        volume, host = await self._volume(ctx.op.resource_id)
        if volume is None or host is None:
            return {"skipped": "volume no longer exists"}
        driver = self._driver(host)
        await driver_call(self.core, host, driver.create_volume(volume.id, size_gb=volume.size_gb))
        await self._save(Volume, volume.id, status="available", status_reason=None)
        attach_to = ctx.op.params.get("attach_to")
        if attach_to:
            vm: Vm | None = await self._get(Vm, attach_to)
            if vm is not None:
                device = await driver_call(
                    self.core, host, driver.attach_volume(vm_domain(vm), volume.id)
                )
                await self._save(Volume, volume.id, status="in-use", vm_id=vm.id, device=device)
        return {"volume": volume.id}

    async def run_attach(self, ctx: OpContext) -> dict[str, Any] | None:
        volume, host = await self._volume(ctx.op.resource_id)
        vm: Vm | None = await self._get(Vm, ctx.op.params.get("vm_id"))
        if volume is None or host is None:
            return {"skipped": "volume no longer exists"}
        if vm is None:
            raise NotFound("The VM no longer exists")
        device = await driver_call(
            self.core,
            host,
            self._driver(host).attach_volume(vm_domain(vm), volume.id),
        )
        await self._save(Volume, volume.id, status="in-use", device=device, status_reason=None)
        return {"device": device}

    async def attach_failed(self, ctx: OpContext, code: str, message: str) -> None:
        await self._save(
            Volume,
            ctx.op.resource_id,
            status="available",
            vm_id=None,
            device=None,
            status_reason=f"attach failed: {code}: {message}",
        )

    async def cancel_attach(self, session: AsyncSession, op: Operation) -> None:
        volume = await session.get(Volume, op.resource_id, populate_existing=True)
        if volume is not None:
            volume.status, volume.vm_id = "available", None

    async def run_detach(self, ctx: OpContext) -> dict[str, Any] | None:
        volume, host = await self._volume(ctx.op.resource_id)
        if volume is None or host is None:
            return {"skipped": "volume no longer exists"}
        vm: Vm | None = await self._get(Vm, volume.vm_id)
        if vm is not None:
            await driver_call(
                self.core,
                host,
                self._driver(host).detach_volume(vm_domain(vm), volume.id),
            )
        await self._save(
            Volume, volume.id, status="available", vm_id=None, device=None, status_reason=None
        )
        return {"detached": True}

    async def cancel_detach(self, session: AsyncSession, op: Operation) -> None:
        volume = await session.get(Volume, op.resource_id, populate_existing=True)
        if volume is not None:
            volume.status = "in-use"

    async def run_volume_resize(self, ctx: OpContext) -> dict[str, Any] | None:
        volume, host = await self._volume(ctx.op.resource_id)
        if volume is None or host is None:
            return {"skipped": "volume no longer exists"}
        await driver_call(
            self.core, host, self._driver(host).resize_volume(volume.id, size_gb=volume.size_gb)
        )
        await self._save(
            Volume,
            volume.id,
            status=ctx.op.params.get("from_status", "available"),
            status_reason=None,
        )
        return {"size_gb": volume.size_gb}

    async def resize_failed(self, ctx: OpContext, code: str, message: str) -> None:
        await self._save(
            Volume,
            ctx.op.resource_id,
            size_gb=ctx.op.params.get("from_size_gb"),
            status=ctx.op.params.get("from_status", "available"),
            status_reason=f"resize failed: {code}: {message}",
        )

    async def cancel_resize(self, session: AsyncSession, op: Operation) -> None:
        volume = await session.get(Volume, op.resource_id, populate_existing=True)
        if volume is not None:
            volume.size_gb = op.params.get("from_size_gb", volume.size_gb)
            volume.status = op.params.get("from_status", "available")

    async def run_volume_delete(self, ctx: OpContext) -> dict[str, Any] | None:
        volume, host = await self._volume(ctx.op.resource_id)
        if volume is None:
            return {"deleted": True}
        if host is not None:
            await driver_call(self.core, host, self._driver(host).delete_volume(volume.id))
        await self._remove(Volume, volume.id)
        return {"deleted": True}

    # --- networks ---------------------------------------------------------------------
    async def run_network_delete(self, ctx: OpContext) -> dict[str, Any] | None:
        network: Network | None = await self._get(Network, ctx.op.resource_id)
        if network is None:
            return {"deleted": True}
        async with self.core.db.sessionmaker() as session:
            hosts = (await session.scalars(select(Host).where(Host.driver.in_(VM_DRIVERS)))).all()
        for host in hosts:
            if supported_driver(host.driver):
                await driver_call(self.core, host, self._driver(host).delete_network(network.id))
        await self._remove(Network, network.id)
        return {"deleted": True}


__all__ = [
    "StorageOps",
    "StorageService",
    "backup_public",
    "network_name",
    "network_public",
    "snapshot_public",
    "volume_public",
]
