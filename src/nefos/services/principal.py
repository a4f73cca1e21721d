"""Who is calling, and what they may reach.

Resolving a role walks up the organisation tree: the owners and admins (and
members and viewers) of a reseller hold the same role in the organisations it
created. Platform admins are owners everywhere. An API key bound to an
organisation reaches that organisation and its descendants only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import Membership, Organisation, Project, User
from nefos.domain.access import ALL_SCOPES, Permission, Role, role_allows, scopes_allow
from nefos.domain.errors import Forbidden, NotFound, ValidationFailed
from nefos.events.identity import ALL

MAX_ORG_DEPTH = 8
#: Principals a process caches at most; the oldest go first.
MAX_CACHED_PRINCIPALS = 50_000
CacheKey = tuple[str, str]  # ("s", session id) or ("k", API key hash)


@dataclass(frozen=True, slots=True)
class UserSnapshot:
    """What a request knows of its caller: the user's row as it was when the
    credential was checked, detached from any session (it is cached across requests,
    see ``nefos.services.authn``). No password hash: code that checks a password
    loads the row."""

    id: str
    email: str
    username: str | None
    name: str
    is_active: bool
    is_admin: bool
    default_project_id: str | None
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None
    settings: Mapping[str, Any]

    @classmethod
    def of(cls, user: User) -> UserSnapshot:
        return cls(
            id=user.id,
            email=user.email,
            username=user.username,
            name=user.name,
            is_active=user.is_active,
            is_admin=user.is_admin,
            default_project_id=user.default_project_id,
            created_at=user.created_at,
            updated_at=user.updated_at,
            last_login_at=user.last_login_at,
            settings=MappingProxyType(dict(user.settings or {})),
        )


@dataclass
class Principal:
    user: UserSnapshot
    session_id: str | None = None
    api_key_id: str | None = None
    scopes: frozenset[str] = field(default_factory=lambda: frozenset(s.value for s in ALL_SCOPES))
    key_organisation_id: str | None = None
    key_expires_at: datetime | None = None
    #: When the access token this principal came with expires (None: an API key).
    expires_at: datetime | None = None
    #: What was worked out from the database about this caller (the organisations
    #: they see), kept with the cached principal and shared by its per-request
    #: copies; emptied when the cache forgets the principal.
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.user, User):  # a row handed in: keep what it says now
            self.user = UserSnapshot.of(self.user)

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


class PrincipalCache:
    """Principals by credential (session id or API key hash), each remembered with its
    user's id so that a change to that user forgets them all. How it is kept true:
    ``nefos.services.authn``. ``trusted`` says whether invalidations reach this
    process from every other one (the bus's control channel is up); when it does not,
    the cache is not used."""

    def __init__(self, ttl: float, *, trusted: Callable[[], bool] = lambda: True) -> None:
        self.ttl = ttl
        self._trusted = trusted
        self._entries: dict[CacheKey, tuple[float, Principal]] = {}
        self._by_user: dict[str, set[CacheKey]] = {}
        #: Bumped by every invalidation: a store that began before one is dropped.
        self.generation = 0
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self._trusted()

    def get(self, key: CacheKey) -> Principal | None:
        if not self.enabled:
            return None
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry[0] <= time.monotonic():
            self._drop(key, entry[1].user_id)
            self.misses += 1
            return None
        self.hits += 1
        return entry[1]

    def put(self, key: CacheKey, principal: Principal, generation: int) -> None:
        if not self.enabled or generation != self.generation:
            return
        if len(self._entries) >= MAX_CACHED_PRINCIPALS:
            oldest = next(iter(self._entries))
            self._drop(oldest, self._entries[oldest][1].user_id)
        self._entries[key] = (time.monotonic() + self.ttl, principal)
        self._by_user.setdefault(principal.user_id, set()).add(key)

    def _drop(self, key: CacheKey, user_id: str) -> None:
        self._entries.pop(key, None)
        keys = self._by_user.get(user_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_user[user_id]

    def invalidate(self, users: Iterable[str] | str) -> None:
        """Forget the principals of ``users`` (``ALL``: every one)."""
        self.generation += 1
        if users == ALL:
            for _, principal in self._entries.values():
                principal.memo.clear()  # a request holding a copy sees it too
            self._entries.clear()
            self._by_user.clear()
            return
        for user_id in users:
            for key in self._by_user.pop(user_id, ()):
                entry = self._entries.pop(key, None)
                if entry is not None:
                    entry[1].memo.clear()

    def on_control(self, message: dict[str, Any]) -> None:
        """A control message of the bus (another process committed a change)."""
        users = message.get("principals")
        if users == ALL:
            self.invalidate(ALL)
        elif isinstance(users, list):
            self.invalidate(u for u in users if isinstance(u, str))

    def __len__(self) -> int:
        return len(self._entries)


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
    """Every organisation the caller holds a role in: memberships and their descendants.
    Remembered with the principal (``memo``): a change of membership, or an
    organisation made, moved or deleted, makes the cache forget it."""
    known: list[str] | None = principal.memo.get("visible_orgs")
    if known is not None:
        return list(known)
    found = await _visible_org_ids(session, principal)
    principal.memo["visible_orgs"] = found
    return list(found)


async def _visible_org_ids(session: AsyncSession, principal: Principal) -> list[str]:
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
