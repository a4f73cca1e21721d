"""Quotes (seed 000): price a configuration of VMs, containers and volumes with the
caller's catalogue and margin, then accept it to provision it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body
from starlette.responses import Response

from nefos.api.deps import (
    Access,
    CoreDep,
    ObjectId,
    OrgHint,
    PageDep,
    ProjectHint,
    SessionDep,
    authorize,
)
from nefos.db.models import Organisation, Project
from nefos.domain.access import Permission
from nefos.domain.errors import ValidationFailed
from nefos.gateway.envelope import listing, ok
from nefos.schemas.billing import QuoteAccept, QuoteAccepted, QuoteCreate, QuotePublic
from nefos.schemas.common import Envelope, ErrorEnvelope, Page
from nefos.services.principal import authorize_project, resolve_project
from nefos.services.quotes import QuoteService, quote_public

router = APIRouter(prefix="/quotes", tags=["billing"])

QuoteId = ObjectId
READ = Permission.BILLING_READ


def _quote(q: Any) -> QuotePublic:
    return QuotePublic.model_validate(quote_public(q))


@router.get("", response_model=Envelope[Page[QuotePublic]])
async def list_quotes(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    organisation_id: OrgHint,
    status: Literal["open", "accepting", "accepted", "failed", "expired"] | None = None,
    access: Access = authorize(READ),
) -> Response:
    """The organisation's quotes, newest first."""
    org = await access.org(organisation_id, READ)
    rows, total = await QuoteService(core, session).list_page(org, params, status=status)
    return listing([_quote(q) for q in rows], "quotes", total, params)


@router.post("", status_code=201, response_model=Envelope[QuotePublic])
async def create_quote(
    body: QuoteCreate,
    core: CoreDep,
    session: SessionDep,
    organisation_id: OrgHint,
    access: Access = authorize(READ),
) -> Response:
    """Price a configuration for a month (`hours_per_month`, default the setting
    `billing_hours_per_month`): one line per item and meter, each rounded half-up
    once, and `monthly_total`. The quote is valid for `billing_quote_validity_days`
    days (`valid_until`); accepting it provisions it in its project."""
    principal = access.principal
    org: Organisation
    project: Project | None = None
    org_hint = body.organisation_id or organisation_id
    if body.project_id is not None:
        project, _ = await authorize_project(session, principal, body.project_id, READ)
        if org_hint is not None and org_hint != project.organisation_id:
            raise ValidationFailed(
                "The project is not in that organisation", project_id=body.project_id
            )
        org = await access.org(project.organisation_id, READ)
    elif org_hint is not None:
        org = await access.org(org_hint, READ)
    else:
        project, _ = await resolve_project(session, principal, None, READ)
        org = await access.org(project.organisation_id, READ)
    quote = await QuoteService(core, session).create(principal, org, project, body)
    return ok(_quote(quote), 201)


@router.get("/{quote_id}", response_model=Envelope[QuotePublic])
async def get_quote(
    quote_id: QuoteId, core: CoreDep, session: SessionDep, access: Access = authorize(READ)
) -> Response:
    quote, _ = await QuoteService(core, session).visible(access.principal, quote_id, READ)
    return ok(_quote(quote))


@router.post(
    "/{quote_id}/accept",
    status_code=202,
    response_model=Envelope[QuoteAccepted],
    responses={402: {"model": ErrorEnvelope, "description": "The wallet is empty"}},
)
async def accept_quote(
    quote_id: QuoteId,
    core: CoreDep,
    session: SessionDep,
    project_id: ProjectHint,
    body: Annotated[QuoteAccept | None, Body()] = None,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Provision the quote: each VM, container and volume is created as `POST /vms`,
    `/containers` and `/volumes` would (quotas, placement, the wallet's 402), in the
    quote's project, named as the quote planned (`<quote-name>-vm-1`, ... unless an
    item names it). 202 with each resource and its operation. Accepting again after
    a failure half-way resumes without making anything twice; an expired or
    accepted quote is a 409."""
    hint = (body.project_id if body else None) or project_id
    quote, resources = await QuoteService(core, session).accept(access.principal, quote_id, hint)
    data = {
        "message": "Quote accepted: provisioning",
        "quote": _quote(quote),
        "resources": resources,
    }
    return ok(QuoteAccepted.model_validate(data), 202)
