from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from nefos.api.deps import Access, CoreDep, ObjectId, OrgId, PageDep, SessionDep, authorize
from nefos.db.models import Invitation, Organisation
from nefos.domain.access import Permission, Role
from nefos.gateway.envelope import ok, page
from nefos.schemas.common import Envelope, Message, Page
from nefos.schemas.tenancy import (
    ChildOrganisationCreate,
    ChildOrganisationCreated,
    InvitationAccept,
    InvitationCreate,
    InvitationCreated,
    InvitationPublic,
    MemberAdd,
    MemberPublic,
    MemberUpdate,
    OrganisationCreate,
    OrganisationPublic,
    OrganisationUpdate,
)
from nefos.services.tenancy import TenancyService

router = APIRouter(prefix="/organisations", tags=["organisations"])
invitations = APIRouter(prefix="/invitations", tags=["organisations"])


def _org(org: Organisation, role: Role | None) -> OrganisationPublic:
    out = OrganisationPublic.model_validate(org)
    out.role = role
    return out


@router.get("", response_model=Envelope[Page[OrganisationPublic]])
async def list_organisations(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    all: Annotated[bool, Query(description="Platform admins: every organisation.")] = False,
    access: Access = authorize(Permission.ORG_READ),
) -> Response:
    rows, total = await TenancyService(core, session).list_orgs(
        access.principal, params, all_orgs=all
    )
    return ok(page([_org(o, r) for o, r in rows], total, params))


@router.post("", status_code=201, response_model=Envelope[OrganisationPublic])
async def create_organisation(
    body: OrganisationCreate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.ORG_CREATE),
) -> Response:
    org = await TenancyService(core, session).create_org(access.principal, body)
    return ok(_org(org, Role.OWNER), 201)


@router.get("/{org_id}", response_model=Envelope[OrganisationPublic])
async def get_organisation(
    org_id: OrgId, access: Access = authorize(Permission.ORG_READ, on="org")
) -> Response:
    return ok(_org(access.target_org, access.target_role))


@router.put("/{org_id}", response_model=Envelope[OrganisationPublic])
async def update_organisation(
    org_id: OrgId,
    body: OrganisationUpdate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.ORG_UPDATE, on="org"),
) -> Response:
    org = await TenancyService(core, session).update_org(access.target_org, body)
    return ok(_org(org, access.target_role))


@router.delete("/{org_id}", response_model=Envelope[Message])
async def delete_organisation(
    org_id: OrgId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.ORG_DELETE, on="org"),
) -> Response:
    """Delete an organisation with its projects; its members' keys bound to it stop working."""
    await TenancyService(core, session).delete_org(access.target_org)
    return ok(Message(message="Organisation deleted"))


@router.get("/{org_id}/children", response_model=Envelope[Page[OrganisationPublic]])
async def list_children(
    org_id: OrgId,
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    access: Access = authorize(Permission.ORG_READ, on="org"),
) -> Response:
    rows, total = await TenancyService(core, session).list_children(
        access.principal, access.target_org, params
    )
    return ok(page([_org(o, r) for o, r in rows], total, params))


@router.post(
    "/{org_id}/children", status_code=201, response_model=Envelope[ChildOrganisationCreated]
)
async def create_child(
    org_id: OrgId,
    body: ChildOrganisationCreate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.ORG_CHILD_CREATE, on="org"),
) -> Response:
    """A reseller creates a customer organisation, which its staff then manage.
    `owner_email` is invited as its owner: the role takes effect when accepted."""
    org, invitation = await TenancyService(core, session).create_child_org(
        access.principal, access.target_org, body
    )
    out = ChildOrganisationCreated(
        **_org(org, access.target_role).model_dump(),
        owner_invitation=_invitation_created(*invitation) if invitation is not None else None,
    )
    return ok(out, 201)


@router.get("/{org_id}/members", response_model=Envelope[Page[MemberPublic]])
async def list_members(
    org_id: OrgId,
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    access: Access = authorize(Permission.MEMBER_READ, on="org"),
) -> Response:
    rows, total = await TenancyService(core, session).list_members(access.target_org, params)
    return ok(page([MemberPublic.model_validate(m) for m in rows], total, params))


@router.post("/{org_id}/members", status_code=202, response_model=Envelope[InvitationCreated])
async def add_member(
    org_id: OrgId,
    body: MemberAdd,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.MEMBER_MANAGE, on="org"),
) -> Response:
    """Invite an `email` to join: they become a member when they accept
    (`POST /invitations/accept` with the answer's token, shown only here). The answer
    is the same whether or not the address has an account."""
    inv, token = await TenancyService(core, session).add_member(
        access.principal, access.target_org, access.target_role, body
    )
    return ok(_invitation_created(inv, token), 202)


@router.put("/{org_id}/members/{user_id}", response_model=Envelope[MemberPublic])
async def update_member(
    org_id: OrgId,
    user_id: ObjectId,
    body: MemberUpdate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.MEMBER_MANAGE, on="org"),
) -> Response:
    member = await TenancyService(core, session).update_member(
        access.target_org, access.target_role, user_id, body.role
    )
    return ok(MemberPublic.model_validate(member))


@router.delete("/{org_id}/members/{user_id}", response_model=Envelope[Message])
async def remove_member(
    org_id: OrgId,
    user_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.MEMBER_MANAGE, on="org"),
) -> Response:
    await TenancyService(core, session).remove_member(
        access.target_org, access.target_role, user_id
    )
    return ok(Message(message="Member removed"))


@router.get("/{org_id}/invitations", response_model=Envelope[Page[InvitationPublic]])
async def list_invitations(
    org_id: OrgId,
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    access: Access = authorize(Permission.MEMBER_MANAGE, on="org"),
) -> Response:
    rows, total = await TenancyService(core, session).list_invitations(access.target_org, params)
    return ok(page([InvitationPublic.model_validate(i) for i in rows], total, params))


@router.post("/{org_id}/invitations", status_code=201, response_model=Envelope[InvitationCreated])
async def create_invitation(
    org_id: OrgId,
    body: InvitationCreate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.MEMBER_MANAGE, on="org"),
) -> Response:
    """Invite an e-mail address. The token in the answer is shown once: pass it on."""
    inv, token = await TenancyService(core, session).create_invitation(
        access.principal, access.target_org, access.target_role, body
    )
    return ok(_invitation_created(inv, token), 201)


def _invitation_created(inv: Invitation, token: str) -> InvitationCreated:
    return InvitationCreated(**InvitationPublic.model_validate(inv).model_dump(), token=token)


@router.delete("/{org_id}/invitations/{invitation_id}", response_model=Envelope[Message])
async def revoke_invitation(
    org_id: OrgId,
    invitation_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.MEMBER_MANAGE, on="org"),
) -> Response:
    await TenancyService(core, session).revoke_invitation(access.target_org, invitation_id)
    return ok(Message(message="Invitation revoked"))


@invitations.get("", response_model=Envelope[Page[InvitationPublic]])
async def my_invitations(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    access: Access = authorize(Permission.ACCOUNT_READ),
) -> Response:
    """Pending invitations addressed to the caller's e-mail."""
    rows, total = await TenancyService(core, session).my_invitations(access.principal, params)
    return ok(page([InvitationPublic.model_validate(i) for i in rows], total, params))


@invitations.post("/accept", response_model=Envelope[OrganisationPublic])
async def accept_invitation(
    body: InvitationAccept,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.ACCOUNT_WRITE),
) -> Response:
    service = TenancyService(core, session)
    org = await service.accept_invitation(access.principal, body.token)
    return ok(_org(org, await service.role_in(access.principal, org.id)))
