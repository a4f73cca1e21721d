"""Organisations, members, invitations, projects and quotas on the wire."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, model_validator

from nefos.domain.access import OrgKind, Role
from nefos.schemas.common import Email, Id, Name, Public, Request, ShortName, Slug

Description = Annotated[str, Field(max_length=2000)]


class OrganisationCreate(Request):
    name: Name
    slug: Slug | None = None
    kind: OrgKind = OrgKind.STANDARD
    description: Description = ""


class ChildOrganisationCreate(OrganisationCreate):
    owner_email: Email | None = Field(
        None,
        description="Invite this address as the new organisation's owner: the role takes "
        "effect when the invitee accepts (the answer's `owner_invitation.token`).",
    )


class OrganisationUpdate(Request):
    name: Name | None = None
    slug: Slug | None = None
    description: Description | None = None


class OrganisationPublic(Public):
    id: str
    name: str
    slug: str
    kind: OrgKind
    parent_id: str | None
    is_personal: bool
    description: str
    role: Role | None = Field(None, description="The caller's effective role here.")
    created_at: datetime
    updated_at: datetime


class MemberAdd(Request):
    """Invite an address to join: nobody becomes a member without accepting."""

    email: Email | None = None
    user_id: Id | None = Field(
        None, description="No longer accepted: members are invited by e-mail."
    )
    role: Role = Role.MEMBER
    expires_in_days: Annotated[int, Field(ge=1, le=90)] = 7

    @model_validator(mode="after")
    def _email(self) -> MemberAdd:
        if self.user_id is not None or not self.email:
            raise ValueError(
                "give the e-mail to invite: members are invited by e-mail and join when they accept"
            )
        return self


class MemberUpdate(Request):
    role: Role


class MemberPublic(Public):
    user_id: str
    organisation_id: str
    email: str
    name: str
    username: str | None
    role: Role
    created_at: datetime


class InvitationCreate(Request):
    email: Email
    role: Role = Role.MEMBER
    expires_in_days: Annotated[int, Field(ge=1, le=90)] = 7


class InvitationPublic(Public):
    id: str
    organisation_id: str
    email: str
    role: Role
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None


class InvitationCreated(InvitationPublic):
    token: str = Field(description="Give it to the invitee. Shown only in this response.")


class ChildOrganisationCreated(OrganisationPublic):
    owner_invitation: InvitationCreated | None = Field(
        None, description="The invitation of `owner_email` (its token shown only here)."
    )


class InvitationAccept(Request):
    token: Annotated[str, Field(min_length=1, max_length=200)]


class QuotaLimits(Public):
    """Per-project limits; ``null`` means unlimited."""

    instances: int | None = None
    vcpus: int | None = None
    memory_gb: int | None = None
    storage_gb: int | None = None
    containers: int | None = None


Limit = Annotated[int, Field(ge=0, le=1_000_000)] | None


class QuotaUpdate(Request):
    """Only the fields present change; an explicit ``null`` lifts the limit."""

    instances: Limit = None
    vcpus: Limit = None
    memory_gb: Limit = None
    storage_gb: Limit = None
    containers: Limit = None


class QuotaUsage(BaseModel):
    """What the project holds now, in the units of the limits."""

    instances: int = 0
    vcpus: float = 0
    memory_gb: float = 0
    storage_gb: int = 0
    containers: int = 0


class QuotaPublic(Public):
    project_id: str
    limits: QuotaLimits
    usage: QuotaUsage = QuotaUsage()
    updated_at: datetime


class ProjectCreate(Request):
    name: ShortName
    description: Description = ""
    organisation_id: Id | None = Field(
        None, description="Default: the organisation of the caller's default project."
    )


class ProjectUpdate(Request):
    name: ShortName | None = None
    description: Description | None = None


class ProjectPublic(Public):
    id: str
    organisation_id: str
    name: str
    description: str
    is_default: bool
    created_at: datetime
    updated_at: datetime
