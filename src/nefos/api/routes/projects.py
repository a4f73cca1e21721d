from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from nefos.api.deps import (
    ID_PATTERN,
    Access,
    CoreDep,
    PageDep,
    ProjectId,
    SessionDep,
    authorize,
    deprecated_route,
)
from nefos.db.models import ProjectQuota
from nefos.domain.access import Permission
from nefos.gateway.envelope import ok, page
from nefos.schemas.common import Envelope, Message, Page
from nefos.schemas.tenancy import (
    ProjectCreate,
    ProjectPublic,
    ProjectUpdate,
    QuotaLimits,
    QuotaPublic,
    QuotaUpdate,
    QuotaUsage,
)
from nefos.services.core import Core
from nefos.services.quotas import project_usage
from nefos.services.tenancy import TenancyService

router = APIRouter(prefix="/projects", tags=["projects"])
legacy = APIRouter(prefix="/project", tags=["projects"])
SEED_001_SUNSET = datetime(2027, 12, 31, 23, 59, 59, tzinfo=UTC)

OrgFilter = Annotated[
    str | None, Query(pattern=ID_PATTERN, description="Only this organisation's projects.")
]


async def _quota(core: Core, session: AsyncSession, q: ProjectQuota) -> QuotaPublic:
    used = await project_usage(session, q.project_id)
    return QuotaPublic(
        project_id=q.project_id,
        limits=QuotaLimits.model_validate(q),
        usage=QuotaUsage(
            vcpus=used.cpu_milli / 1000,
            memory_gb=round(used.memory_mb / 1024, 3),
            storage_gb=used.storage_gb,
            containers=used.containers,
            instances=used.instances,
        ),
        updated_at=q.updated_at,
    )


@router.get("", response_model=Envelope[Page[ProjectPublic]])
async def list_projects(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    organisation_id: OrgFilter = None,
    access: Access = authorize(Permission.PROJECT_READ),
) -> Response:
    rows, total = await TenancyService(core, session).list_projects(
        access.principal, params, organisation_id=organisation_id
    )
    return ok(page([ProjectPublic.model_validate(p) for p in rows], total, params))


@router.post("", status_code=201, response_model=Envelope[ProjectPublic])
async def create_project(
    body: ProjectCreate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.PROJECT_CREATE),
) -> Response:
    service = TenancyService(core, session)
    org_id = body.organisation_id or await service.default_organisation_id(access.principal)
    org, _ = await access.check_org(org_id)
    project = await service.create_project(org, body)
    return ok(ProjectPublic.model_validate(project), 201)


@router.get("/{project_id}", response_model=Envelope[ProjectPublic])
async def get_project(
    project_id: ProjectId, access: Access = authorize(Permission.PROJECT_READ, on="project")
) -> Response:
    return ok(ProjectPublic.model_validate(access.target_project))


@router.put("/{project_id}", response_model=Envelope[ProjectPublic])
async def update_project(
    project_id: ProjectId,
    body: ProjectUpdate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.PROJECT_UPDATE, on="project"),
) -> Response:
    project = await TenancyService(core, session).update_project(access.target_project, body)
    return ok(ProjectPublic.model_validate(project))


@router.delete("/{project_id}", response_model=Envelope[Message])
async def delete_project(
    project_id: ProjectId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.PROJECT_DELETE, on="project"),
) -> Response:
    await TenancyService(core, session).delete_project(access.target_project)
    return ok(Message(message="Project deleted"))


@router.get("/{project_id}/quotas", response_model=Envelope[QuotaPublic])
async def get_quotas(
    project_id: ProjectId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.QUOTA_READ, on="project"),
) -> Response:
    quota = await TenancyService(core, session).get_quota(access.target_project)
    return ok(await _quota(core, session, quota))


@router.put("/{project_id}/quotas", response_model=Envelope[QuotaPublic])
async def set_quotas(
    project_id: ProjectId,
    body: QuotaUpdate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.QUOTA_UPDATE, on="project"),
) -> Response:
    """Change some limits; the fields left out keep their values, `null` lifts a limit."""
    quota = await TenancyService(core, session).set_quota(access.target_project, body)
    return ok(await _quota(core, session, quota))


# Seed 001 (CloudCIX) spelling, kept for its clients.
@legacy.get("", response_model=Envelope[Page[ProjectPublic]], deprecated=True)
@deprecated_route(SEED_001_SUNSET)
async def list_projects_legacy(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    organisation_id: OrgFilter = None,
    access: Access = authorize(Permission.PROJECT_READ),
) -> Response:
    """Deprecated alias of `GET /projects`."""
    return await list_projects(core, session, params, organisation_id, access)


@legacy.post("", status_code=201, response_model=Envelope[ProjectPublic], deprecated=True)
@deprecated_route(SEED_001_SUNSET)
async def create_project_legacy(
    body: ProjectCreate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.PROJECT_CREATE),
) -> Response:
    """Deprecated alias of `POST /projects`."""
    return await create_project(body, core, session, access)
