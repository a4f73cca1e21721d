"""Operations: follow (and cancel) the long actions behind every 202."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from nefos.api.deps import ID_PATTERN, Access, CoreDep, ObjectId, PageDep, SessionDep, authorize
from nefos.domain.access import Permission
from nefos.gateway.envelope import ok, page
from nefos.schemas.common import Envelope, Page
from nefos.schemas.compute import OperationPublic
from nefos.services.operations import OperationService, operation_public, sees_engine_messages

router = APIRouter(prefix="/operations", tags=["operations"])

OpStatusFilter = Annotated[
    str | None,
    Query(
        pattern="^(pending|running|succeeded|failed|cancelled)$", description="Only this status."
    ),
]


@router.get("", response_model=Envelope[Page[OperationPublic]])
async def list_operations(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    resource_id: Annotated[
        str | None, Query(pattern=ID_PATTERN, description="Only this resource's operations.")
    ] = None,
    status: OpStatusFilter = None,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    """Operations in the projects you can see, newest first."""
    rows, total = await OperationService(core, session).list_page(
        access.principal, params, resource_id=resource_id, status=status
    )
    raw = sees_engine_messages(access.principal)
    return ok(page([operation_public(o, engine_messages=raw) for o in rows], total, params))


@router.get("/{operation_id}", response_model=Envelope[OperationPublic])
async def get_operation(
    operation_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    op = await OperationService(core, session).visible(
        access.principal, operation_id, Permission.COMPUTE_READ
    )
    return ok(operation_public(op, engine_messages=sees_engine_messages(access.principal)))


@router.delete("/{operation_id}", response_model=Envelope[OperationPublic])
async def cancel_operation(
    operation_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Cancel a pending operation (409 once it runs); what its request reserved is undone."""
    service = OperationService(core, session)
    op = await service.visible(access.principal, operation_id, Permission.COMPUTE_WRITE)
    raw = sees_engine_messages(access.principal)
    return ok(operation_public(await service.cancel(op), engine_messages=raw))
