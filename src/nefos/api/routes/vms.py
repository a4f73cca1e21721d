"""Virtual machines (seeds 000, 001, 003). Writes answer 202 with the operation that
carries them out; seed 001's ``/compute/instances`` is a deprecated alias."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, WebSocket
from starlette.responses import Response

from nefos.api import terminal
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
from nefos.db.models import Operation, Vm
from nefos.domain.access import Permission
from nefos.domain.lifecycle import VmStatus
from nefos.gateway.envelope import listing, ok
from nefos.schemas.common import Envelope
from nefos.schemas.vms import (
    VmAccepted,
    VmConsole,
    VmCreate,
    VmPublic,
    VmReboot,
    VmStop,
    VmUpdate,
    VmUpdated,
)
from nefos.services.metrics import MetricsService
from nefos.services.principal import resolve_project
from nefos.services.vms import VmService, op_ref, vm_public

router = APIRouter(prefix="/vms", tags=["vms"])
compute = APIRouter(prefix="/compute", tags=["vms"])

VmId = ObjectId
StatusFilter = Annotated[VmStatus | None, Query(description="Only VMs in this status.")]


def _accepted(message: str, vm: Vm, op: Operation) -> Response:
    body = {
        "message": message,
        "vm_id": vm.id,
        "vm": VmPublic.model_validate(vm_public(vm)),
        "operation": op_ref(op),
    }
    return ok(body, 202, headers={"Location": op_ref(op)["url"]})


@router.get("", response_model=Envelope[dict[str, Any]])
async def list_vms(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    project_id: ProjectHint,
    status: StatusFilter = None,
    status_filter: StatusFilter = None,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    """VMs of one project (the default project unless one is named); `skip`+`limit`
    (seed 003) or `page`+`limit`."""
    project, _ = await resolve_project(
        session, access.principal, project_id, Permission.COMPUTE_READ
    )
    rows, total = await VmService(core, session).list_page(
        project, params, status=status or status_filter
    )
    usage = await MetricsService(core, session).usage_now([v.id for v in rows])
    items = [VmPublic.model_validate({**vm_public(v), "usage": usage.get(v.id)}) for v in rows]
    return listing(items, "vms", total, params)


@router.post("", status_code=202, response_model=Envelope[VmAccepted])
async def create_vm(
    body: VmCreate,
    core: CoreDep,
    session: SessionDep,
    project_id: ProjectHint,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Create and boot a VM. Answers 202 in status `creating`; follow `operation.url`.
    The image is `image_id`, or the newest active image matching `os_type` and
    `os_version`. `user_data` and `ssh_keys` reach the guest on a NoCloud seed."""
    project, _ = await resolve_project(
        session, access.principal, body.project_id or project_id, Permission.COMPUTE_WRITE
    )
    vm, op = await VmService(core, session).create(access.principal, project, body)
    return _accepted("VM creation accepted", vm, op)


@router.get("/{vm_id}", response_model=Envelope[VmPublic])
async def get_vm(
    vm_id: VmId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    vm = await VmService(core, session).visible(access.principal, vm_id, Permission.COMPUTE_READ)
    return ok(VmPublic.model_validate(vm_public(vm)))


@router.put(
    "/{vm_id}",
    response_model=Envelope[VmUpdated],
    responses={
        202: {
            "model": Envelope[VmAccepted],
            "description": "Resizing (the VM is stopped): follow `operation`",
        }
    },
)
async def update_vm(
    vm_id: VmId,
    body: VmUpdate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Resize (seed 003): `cpu_cores` and `memory_gb` while the VM is stopped (409
    otherwise), `storage_gb` only upwards. 202 with the operation; a change of `name`
    alone is 200."""
    service = VmService(core, session)
    vm = await service.visible(access.principal, vm_id, Permission.COMPUTE_WRITE)
    vm, op = await service.update(access.principal, vm, body)
    if op is None:
        return ok(
            {"message": "VM updated", "vm_id": vm.id, "vm": VmPublic.model_validate(vm_public(vm))}
        )
    return _accepted("VM resize accepted", vm, op)


@router.delete("/{vm_id}", status_code=202, response_model=Envelope[VmAccepted])
async def delete_vm(
    vm_id: VmId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Destroy the VM and its disks (its snapshots too); attached volumes are detached
    and kept."""
    service = VmService(core, session)
    vm = await service.visible(access.principal, vm_id, Permission.COMPUTE_WRITE)
    vm, op = await service.delete(access.principal, vm)
    return _accepted("VM deletion accepted", vm, op)


@router.post("/{vm_id}/start", status_code=202, response_model=Envelope[VmAccepted])
async def start_vm(
    vm_id: VmId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    service = VmService(core, session)
    vm = await service.visible(access.principal, vm_id, Permission.COMPUTE_WRITE)
    vm, op = await service.start(access.principal, vm)
    return _accepted("VM start accepted", vm, op)


@router.post("/{vm_id}/stop", status_code=202, response_model=Envelope[VmAccepted])
async def stop_vm(
    vm_id: VmId,
    core: CoreDep,
    session: SessionDep,
    body: Annotated[VmStop | None, Body()] = None,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Graceful: the ACPI power button, then a forced power-off after `timeout`
    seconds (default: `NEFOS_VM_STOP_TIMEOUT`); `force: true` powers off at once."""
    service = VmService(core, session)
    vm = await service.visible(access.principal, vm_id, Permission.COMPUTE_WRITE)
    vm, op = await service.stop(access.principal, vm, body or VmStop())
    return _accepted("VM stop accepted", vm, op)


@router.post("/{vm_id}/reboot", status_code=202, response_model=Envelope[VmAccepted])
async def reboot_vm(
    vm_id: VmId,
    core: CoreDep,
    session: SessionDep,
    body: Annotated[VmReboot | None, Body()] = None,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Ask the guest to reboot (ACPI); `hard: true` resets it. The VM must be running."""
    service = VmService(core, session)
    vm = await service.visible(access.principal, vm_id, Permission.COMPUTE_WRITE)
    vm, op = await service.reboot(access.principal, vm, hard=bool(body and body.hard))
    return _accepted("VM reboot accepted", vm, op)


@router.get("/{vm_id}/console", response_model=Envelope[VmConsole])
async def vm_console(
    vm_id: VmId,
    core: CoreDep,
    session: SessionDep,
    tail: Annotated[int, Query(ge=1, le=10_000, description="Lines to return.")] = 200,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    """The serial console's log: the last `tail` lines (boot messages, cloud-init)."""
    service = VmService(core, session)
    vm = await service.visible(access.principal, vm_id, Permission.COMPUTE_READ)
    text = await service.console(vm, tail=tail)
    return ok({"vm_id": vm.id, "console": text, "lines": len(text.splitlines())})


@router.websocket("/{vm_id}/console")
async def vm_console_terminal(ws: WebSocket, vm_id: str) -> None:
    """The serial console, interactive: the protocol is in ``nefos.api.terminal``."""
    await terminal.serve(ws, vm_id, terminal.VmConsole(ws.app.state.core))


# --- seed 001's aliases -----------------------------------------------------------------
@compute.get("/instances", response_model=Envelope[dict[str, Any]], deprecated=True)
@deprecated_route(SEED_001_SUNSET)
async def list_instances_legacy(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    project_id: ProjectHint,
    status: StatusFilter = None,
    status_filter: StatusFilter = None,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    """Deprecated alias of `GET /vms` (seed 001)."""
    return await list_vms(core, session, params, project_id, status, status_filter, access)


@compute.post("/instances", status_code=202, response_model=Envelope[VmAccepted], deprecated=True)
@deprecated_route(SEED_001_SUNSET)
async def create_instance_legacy(
    body: VmCreate,
    core: CoreDep,
    session: SessionDep,
    project_id: ProjectHint,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Deprecated alias of `POST /vms` (seed 001)."""
    return await create_vm(body, core, session, project_id, access)
