"""Who is calling, and what they may reach.

Resolving a role walks up the organisation tree: the owners and admins (and
members and viewers) of a reseller hold the same role in the organisations it
created. Platform admins are owners everywhere. An API key bound to an
organisation reaches that organisation and its descendants only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import Membership, Organisation, Project, User
from nefos.domain.access import ALL_SCOPES, Permission, Role, role_allows, scopes_allow
from nefos.domain.errors import Forbidden, NotFound, ValidationFailed

MAX_ORG_DEPTH = 8


@dataclass
class Principal:
    user: User
    session_id: str | None = None
    api_key_id: str | None = None
    scopes: frozenset[str] = field(default_factory=lambda: frozenset(s.value for s in ALL_SCOPES))
    key_organisation_id: str | None = None
    key_expires_at: datetime | None = None
    #: When the access token this principal came with expires (None: an API key).
    expires_at: datetime | None = None

    @property
    def user_id(self) -> str:
        return self.user.id

    @property
    def is_admin(self) -> bool:
        return self.user.is_admin

    def require_scope(self, permission: Permission) -> None:
        if not scopes_allow(self.scopes, permission):
            raise Forbidden(
                f"This API key lacks the scope {permission.scope.value!r}",
                required_scope=permission.scope.value,
            )


async def org_chain(session: AsyncSession, org_id: str) -> list[Organisation]:
    """The organisation and its ancestors, nearest first. Empty if it does not exist."""
    chain: list[Organisation] = []
    current: str | None = org_id
    while current is not None and len(chain) < MAX_ORG_DEPTH:
        org = await session.get(Organisation, current)
        if org is None:
            break
        chain.append(org)
        current = org.parent_id
    return chain


def _nearest_role(
    principal: Principal, chain: list[Organisation], memberships: dict[str, Role]
) -> Role | None:
    ids = [o.id for o in chain]
    if not ids:
        return None
    if principal.key_organisation_id is not None and principal.key_organisation_id not in ids:
        return None
    if principal.is_admin:
        return Role.OWNER
    for org_id in ids:  # the nearest membership decides
        if org_id in memberships:
            return memberships[org_id]
    return None


async def _memberships(
    session: AsyncSession, principal: Principal, org_ids: list[str] | None = None
) -> dict[str, Role]:
    query = select(Membership.organisation_id, Membership.role).where(
        Membership.user_id == principal.user_id
    )
    if org_ids is not None:
        query = query.where(Membership.organisation_id.in_(org_ids))
    return {org_id: Role(role) for org_id, role in (await session.execute(query)).all()}


async def effective_role(
    session: AsyncSession, principal: Principal, chain: list[Organisation]
) -> Role | None:
    if not chain or principal.is_admin:
        return _nearest_role(principal, chain, {})
    return _nearest_role(
        principal, chain, await _memberships(session, principal, [o.id for o in chain])
    )


async def roles_in(
    session: AsyncSession, principal: Principal, orgs: Sequence[Organisation]
) -> dict[str, Role | None]:
    """The caller's role in each of ``orgs``, with one membership query in all
    (ancestors come from the session's identity map after the first lookup)."""
    memberships = {} if principal.is_admin else await _memberships(session, principal)
    return {
        org.id: _nearest_role(principal, await org_chain(session, org.id), memberships)
        for org in orgs
    }


async def authorize_org(
    session: AsyncSession, principal: Principal, org_id: str, permission: Permission
) -> tuple[Organisation, Role]:
    """Raise NotFound unless the caller can see the organisation, Forbidden unless
    their role grants ``permission`` there."""
    principal.require_scope(permission)
    chain = await org_chain(session, org_id)
    role = await effective_role(session, principal, chain)
    if role is None:
        raise NotFound("Organisation not found", organisation_id=org_id)
    if not role_allows(role, permission):
        raise Forbidden(f"Your role {role.value!r} does not allow {permission.value!r}")
    return chain[0], role


async def authorize_project(
    session: AsyncSession, principal: Principal, project_id: str, permission: Permission
) -> tuple[Project, Role]:
    principal.require_scope(permission)
    project = await session.get(Project, project_id)
    if project is None:
        raise NotFound("Project not found", project_id=project_id)
    chain = await org_chain(session, project.organisation_id)
    role = await effective_role(session, principal, chain)
    if role is None:
        raise NotFound("Project not found", project_id=project_id)
    if not role_allows(role, permission):
        raise Forbidden(f"Your role {role.value!r} does not allow {permission.value!r}")
    return project, role


async def visible_org_ids(session: AsyncSession, principal: Principal) -> list[str]:
    """Every organisation the caller holds a role in: memberships and their descendants."""
    if principal.key_organisation_id is not None:
        roots = [principal.key_organisation_id]
        if not principal.is_admin:
            chain = await org_chain(session, principal.key_organisation_id)
            if await effective_role(session, principal, chain) is None:
                return []
    else:
        roots = list(
            (
                await session.scalars(
                    select(Membership.organisation_id).where(
                        Membership.user_id == principal.user_id
                    )
                )
            ).all()
        )
    seen: set[str] = set(roots)
    frontier = list(roots)
    for _ in range(MAX_ORG_DEPTH):
        if not frontier:
            break
        children = (
            await session.scalars(
                select(Organisation.id).where(Organisation.parent_id.in_(frontier))
            )
        ).all()
        frontier = [c for c in children if c not in seen]
        seen.update(frontier)
    return sorted(seen)


async def resolve_project(
    session: AsyncSession, principal: Principal, project_id: str | None, permission: Permission
) -> tuple[Project, Role]:
    """The project a request acts in: the one it names (``project_id`` in the body or
    query, or ``X-Project-ID``), else the caller's default project (for an API key
    bound to an organisation: that organisation's default project)."""
    if project_id is None:
        project_id = await _default_project_id(session, principal)
    return await authorize_project(session, principal, project_id, permission)


async def _default_project_id(session: AsyncSession, principal: Principal) -> str:
    if principal.key_organisation_id is not None:
        found = await session.scalar(
            select(Project.id)
            .where(Project.organisation_id == principal.key_organisation_id)
            .order_by(Project.is_default.desc(), Project.created_at)
            .limit(1)
        )
    else:
        found = principal.user.default_project_id
    if found is None:
        raise ValidationFailed(
            "No project given and you have no default project",
            project_id="name one (project_id or X-Project-ID)",
        )
    return found
