"""Snapshots, backups, volumes and networks (seed 001). Writes that touch a host
answer 202 with their operation; seed 001's ``/compute/backups/`` is an alias."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from starlette.responses import Response

from nefos.api.deps import (
    Access,
    CoreDep,
    ObjectId,
    PageDep,
    ProjectHint,
    SessionDep,
    authorize,
    deprecated_route,
)
from nefos.api.routes.projects import SEED_001_SUNSET
from nefos.api.routes.vms import VmId
from nefos.api.routes.vms import _accepted as vm_accepted
from nefos.db.models import Backup, Network, Operation, Project, Snapshot, Volume
from nefos.domain.access import Permission
from nefos.domain.errors import ValidationFailed
from nefos.domain.paging import PageParams
from nefos.gateway.envelope import listing, ok
from nefos.schemas.common import Envelope
from nefos.schemas.vms import (
    BackupAccepted,
    BackupCreate,
    BackupPublic,
    BackupRestore,
    NetworkCreate,
    NetworkPublic,
    SnapshotAccepted,
    SnapshotCreate,
    SnapshotPublic,
    VmAccepted,
    VolumeAccepted,
    VolumeAttach,
    VolumeCreate,
    VolumePublic,
    VolumeResize,
)
from nefos.services.principal import resolve_project
from nefos.services.storage import (
    StorageService,
    backup_public,
    network_public,
    snapshot_public,
    volume_public,
)
from nefos.services.vms import VmService, op_ref

snapshots = APIRouter(prefix="/snapshots", tags=["snapshots"])
vm_snapshots = APIRouter(prefix="/vms", tags=["snapshots"])
backups = APIRouter(prefix="/backups", tags=["backups"])
compute_backups = APIRouter(prefix="/compute", tags=["backups"])
volumes = APIRouter(prefix="/volumes", tags=["volumes"])
networks = APIRouter(prefix="/networks", tags=["networks"])

SnapshotId = ObjectId
BackupId = ObjectId
VolumeId = ObjectId
NetworkId = ObjectId
StatusFilter = Annotated[str | None, Query(pattern="^[a-z-]{1,16}$")]
VmFilter = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


def _accepted(
    message: str, key: str, obj: Any, public: BaseModel, op: Operation, status: int = 202
) -> Response:
    body = {"message": message, f"{key}_id": obj.id, key: public, "operation": op_ref(op)}
    return ok(body, status, headers={"Location": op_ref(op)["url"]})


async def _list(
    core: CoreDep,
    session: SessionDep,
    access: Access,
    params: PageParams,
    project_id: str | None,
    model: Any,
    **filters: Any,
) -> tuple[list[Any], int]:
    project: Project
    project, _ = await resolve_project(
        session, access.principal, project_id, Permission.COMPUTE_READ
    )
    rows, total = await StorageService(core, session).list_page(model, project, params, **filters)
    return list(rows), total


# --- snapshots ---------------------------------------------------------------------------
def _snap(s: Snapshot) -> SnapshotPublic:
    return SnapshotPublic.model_validate(snapshot_public(s))


@snapshots.get("", response_model=Envelope[dict[str, Any]])
async def list_snapshots(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    project_id: ProjectHint,
    vm_id: VmFilter = None,
    status: StatusFilter = None,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    rows, total = await _list(
        core, session, access, params, project_id, Snapshot, vm_id=vm_id, status=status
    )
    return listing([_snap(s) for s in rows], "snapshots", total, params)


@snapshots.post("", status_code=202, response_model=Envelope[SnapshotAccepted])
async def create_snapshot(
    body: SnapshotCreate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Snapshot a stopped VM's disks (root disk and attached volumes)."""
    if body.vm_id is None:
        raise ValidationFailed("Name the VM to snapshot", vm_id="required")
    return await snapshot_vm(body.vm_id, body, core, session, access)


@vm_snapshots.post("/{vm_id}/snapshots", status_code=202, response_model=Envelope[SnapshotAccepted])
async def snapshot_vm(
    vm_id: VmId,
    body: SnapshotCreate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Snapshot a stopped VM's disks (409 while it runs); 202 with the operation."""
    vm = await VmService(core, session).visible(access.principal, vm_id, Permission.COMPUTE_WRITE)
    snap, op = await StorageService(core, session).create_snapshot(access.principal, vm, body)
    return _accepted("Snapshot accepted", "snapshot", snap, _snap(snap), op)


@vm_snapshots.get("/{vm_id}/snapshots", response_model=Envelope[dict[str, Any]])
async def list_vm_snapshots(
    vm_id: VmId,
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    vm = await VmService(core, session).visible(access.principal, vm_id, Permission.COMPUTE_READ)
    rows, total = await _list(core, session, access, params, vm.project_id, Snapshot, vm_id=vm.id)
    return listing([_snap(s) for s in rows], "snapshots", total, params)


@snapshots.get("/{snapshot_id}", response_model=Envelope[SnapshotPublic])
async def get_snapshot(
    snapshot_id: SnapshotId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    snap = await StorageService(core, session).visible(
        Snapshot, access.principal, snapshot_id, Permission.COMPUTE_READ
    )
    return ok(_snap(snap))


@snapshots.post(
    "/{snapshot_id}/restore", status_code=202, response_model=Envelope[SnapshotAccepted]
)
async def restore_snapshot(
    snapshot_id: SnapshotId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Revert the (stopped) VM's disks to the snapshot; its sizes stay as they are."""
    service = StorageService(core, session)
    snap = await service.visible(Snapshot, access.principal, snapshot_id, Permission.COMPUTE_WRITE)
    snap, op = await service.revert_snapshot(access.principal, snap)
    return _accepted("Snapshot revert accepted", "snapshot", snap, _snap(snap), op)


@snapshots.post(
    "/{snapshot_id}/revert",
    status_code=202,
    response_model=Envelope[SnapshotAccepted],
    include_in_schema=False,
)
async def revert_snapshot(
    snapshot_id: SnapshotId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Alias of `POST /snapshots/{id}/restore`."""
    return await restore_snapshot(snapshot_id, core, session, access)


@snapshots.delete("/{snapshot_id}", status_code=202, response_model=Envelope[SnapshotAccepted])
async def delete_snapshot(
    snapshot_id: SnapshotId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    service = StorageService(core, session)
    snap = await service.visible(Snapshot, access.principal, snapshot_id, Permission.COMPUTE_WRITE)
    snap, op = await service.delete_snapshot(access.principal, snap)
    return _accepted("Snapshot deletion accepted", "snapshot", snap, _snap(snap), op)


# --- backups -----------------------------------------------------------------------------
def _backup(b: Backup) -> BackupPublic:
    return BackupPublic.model_validate(backup_public(b))


@backups.get("", response_model=Envelope[dict[str, Any]])
async def list_backups(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    project_id: ProjectHint,
    vm_id: VmFilter = None,
    status: StatusFilter = None,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    rows, total = await _list(
        core, session, access, params, project_id, Backup, vm_id=vm_id, status=status
    )
    return listing([_backup(b) for b in rows], "backups", total, params)


@compute_backups.get("/backups", response_model=Envelope[dict[str, Any]], deprecated=True)
@deprecated_route(SEED_001_SUNSET)
async def list_backups_legacy(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    project_id: ProjectHint,
    vm_id: VmFilter = None,
    status: StatusFilter = None,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    """Deprecated alias of `GET /backups` (seed 001)."""
    return await list_backups(core, session, params, project_id, vm_id, status, access)


@backups.post("", status_code=202, response_model=Envelope[BackupAccepted])
async def create_backup(
    body: BackupCreate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """A full copy of a stopped VM's disks to the host's backup storage (409 while the
    VM runs); 202 with the operation."""
    backup, op = await StorageService(core, session).create_backup(access.principal, body)
    return _accepted("Backup accepted", "backup", backup, _backup(backup), op)


@backups.get("/{backup_id}", response_model=Envelope[BackupPublic])
async def get_backup(
    backup_id: BackupId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    backup = await StorageService(core, session).visible(
        Backup, access.principal, backup_id, Permission.COMPUTE_READ
    )
    return ok(_backup(backup))


@backups.post("/{backup_id}/restore", status_code=202, response_model=Envelope[VmAccepted])
async def restore_backup(
    backup_id: BackupId,
    body: BackupRestore,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Restore into a new VM (on the backup's host, its root disk a copy of the
    backup's); 202 with the new VM and its create operation."""
    service = StorageService(core, session)
    backup = await service.visible(Backup, access.principal, backup_id, Permission.COMPUTE_WRITE)
    vm, op = await service.restore_backup(access.principal, backup, body)
    return vm_accepted("Backup restore accepted", vm, op)


@backups.delete("/{backup_id}", status_code=202, response_model=Envelope[BackupAccepted])
async def delete_backup(
    backup_id: BackupId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    service = StorageService(core, session)
    backup = await service.visible(Backup, access.principal, backup_id, Permission.COMPUTE_WRITE)
    backup, op = await service.delete_backup(access.principal, backup)
    return _accepted("Backup deletion accepted", "backup", backup, _backup(backup), op)


# --- volumes -----------------------------------------------------------------------------
def _volume(v: Volume) -> VolumePublic:
    return VolumePublic.model_validate(volume_public(v))


@volumes.get("", response_model=Envelope[dict[str, Any]])
async def list_volumes(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    project_id: ProjectHint,
    vm_id: VmFilter = None,
    status: StatusFilter = None,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    rows, total = await _list(
        core, session, access, params, project_id, Volume, vm_id=vm_id, status=status
    )
    return listing([_volume(v) for v in rows], "volumes", total, params)


@volumes.post("", status_code=202, response_model=Envelope[VolumeAccepted])
async def create_volume(
    body: VolumeCreate,
    core: CoreDep,
    session: SessionDep,
    project_id: ProjectHint,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """A blank data disk (qcow2), on the host of `vm_id` (and attached to it) if
    given; counted in the project's storage quota."""
    project, _ = await resolve_project(
        session, access.principal, body.project_id or project_id, Permission.COMPUTE_WRITE
    )
    volume, op = await StorageService(core, session).create_volume(access.principal, project, body)
    return _accepted("Volume creation accepted", "volume", volume, _volume(volume), op)


@volumes.get("/{volume_id}", response_model=Envelope[VolumePublic])
async def get_volume(
    volume_id: VolumeId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    volume = await StorageService(core, session).visible(
        Volume, access.principal, volume_id, Permission.COMPUTE_READ
    )
    return ok(_volume(volume))


@volumes.post("/{volume_id}/attach", status_code=202, response_model=Envelope[VolumeAccepted])
async def attach_volume(
    volume_id: VolumeId,
    body: VolumeAttach,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Attach to a VM on the same host (live if it runs); its device (vdb, ...) is
    in the volume once the operation succeeds."""
    service = StorageService(core, session)
    volume = await service.visible(Volume, access.principal, volume_id, Permission.COMPUTE_WRITE)
    volume, op = await service.attach_volume(access.principal, volume, body.vm_id)
    return _accepted("Volume attach accepted", "volume", volume, _volume(volume), op)


@volumes.post("/{volume_id}/detach", status_code=202, response_model=Envelope[VolumeAccepted])
async def detach_volume(
    volume_id: VolumeId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    service = StorageService(core, session)
    volume = await service.visible(Volume, access.principal, volume_id, Permission.COMPUTE_WRITE)
    volume, op = await service.detach_volume(access.principal, volume)
    return _accepted("Volume detach accepted", "volume", volume, _volume(volume), op)


@volumes.post("/{volume_id}/resize", status_code=202, response_model=Envelope[VolumeAccepted])
async def resize_volume(
    volume_id: VolumeId,
    body: VolumeResize,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Grow the volume (it never shrinks)."""
    service = StorageService(core, session)
    volume = await service.visible(Volume, access.principal, volume_id, Permission.COMPUTE_WRITE)
    volume, op = await service.resize_volume(access.principal, volume, body.size_gb)
    return _accepted("Volume resize accepted", "volume", volume, _volume(volume), op)


@volumes.delete("/{volume_id}", status_code=202, response_model=Envelope[VolumeAccepted])
async def delete_volume(
    volume_id: VolumeId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Refused (409) while attached."""
    service = StorageService(core, session)
    volume = await service.visible(Volume, access.principal, volume_id, Permission.COMPUTE_WRITE)
    volume, op = await service.delete_volume(access.principal, volume)
    return _accepted("Volume deletion accepted", "volume", volume, _volume(volume), op)


# --- networks ----------------------------------------------------------------------------
def _network(n: Network) -> NetworkPublic:
    return NetworkPublic.model_validate(network_public(n))


@networks.get("", response_model=Envelope[dict[str, Any]])
async def list_networks(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    project_id: ProjectHint,
    status: StatusFilter = None,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    rows, total = await _list(core, session, access, params, project_id, Network, status=status)
    return listing([_network(n) for n in rows], "networks", total, params)


@networks.post("", status_code=201, response_model=Envelope[NetworkPublic])
async def create_network(
    body: NetworkCreate,
    core: CoreDep,
    session: SessionDep,
    project_id: ProjectHint,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """An isolated network (optionally an IPv4 `cidr` with DHCP). VMs join it with
    `network_id` on create; each host makes it when its first VM joins."""
    project, _ = await resolve_project(
        session, access.principal, body.project_id or project_id, Permission.COMPUTE_WRITE
    )
    network = await StorageService(core, session).create_network(access.principal, project, body)
    return ok(_network(network), 201)


@networks.get("/{network_id}", response_model=Envelope[NetworkPublic])
async def get_network(
    network_id: NetworkId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    network = await StorageService(core, session).visible(
        Network, access.principal, network_id, Permission.COMPUTE_READ
    )
    return ok(_network(network))


@networks.delete("/{network_id}", status_code=202, response_model=Envelope[dict[str, Any]])
async def delete_network(
    network_id: NetworkId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Refused (409) while a VM uses it; 202 with the operation that removes it from
    every host."""
    service = StorageService(core, session)
    network = await service.visible(Network, access.principal, network_id, Permission.COMPUTE_WRITE)
    network, op = await service.delete_network(access.principal, network)
    return _accepted("Network deletion accepted", "network", network, _network(network), op)


routers = (snapshots, vm_snapshots, backups, compute_backups, volumes, networks)
