"""Organisations, members, invitations, projects and quotas."""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import (
    ApiKey,
    Backup,
    Container,
    Image,
    Invitation,
    Membership,
    Network,
    Organisation,
    Project,
    ProjectQuota,
    User,
    Vm,
    Volume,
)
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.access import OrgKind, Role
from nefos.domain.errors import Conflict, Forbidden, NotFound, ValidationFailed
from nefos.domain.paging import PageParams
from nefos.schemas.tenancy import (
    ChildOrganisationCreate,
    InvitationCreate,
    MemberAdd,
    OrganisationCreate,
    OrganisationUpdate,
    ProjectCreate,
    ProjectUpdate,
    QuotaUpdate,
)
from nefos.security.apikeys import hash_secret
from nefos.services.core import Core
from nefos.services.paging import fetch_page
from nefos.services.principal import (
    MAX_ORG_DEPTH,
    Principal,
    effective_role,
    org_chain,
    roles_in,
    visible_org_ids,
)

_SLUG_CLEAN = re.compile(r"[^a-z0-9]+")
QUOTA_FIELDS = ("instances", "vcpus", "memory_gb", "storage_gb", "containers")


def slugify(text: str) -> str:
    slug = _SLUG_CLEAN.sub("-", text.lower()).strip("-")[:60].strip("-")
    return slug or "org"


class TenancyService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    # --- organisations ------------------------------------------------------
    async def _unique_slug(self, wanted: str | None, name: str) -> str:
        if wanted:
            if await self.session.scalar(
                select(Organisation.id).where(Organisation.slug == wanted)
            ):
                raise Conflict("This slug is taken", slug="already taken")
            return wanted
        base = slugify(name)
        slug = base
        while await self.session.scalar(select(Organisation.id).where(Organisation.slug == slug)):
            slug = f"{base}-{secrets.token_hex(3)}"
        return slug

    def _default_quota(self, project_id: str) -> ProjectQuota:
        s = self.core.settings
        return ProjectQuota(
            project_id=project_id,
            instances=s.quota_instances,
            vcpus=s.quota_vcpus,
            memory_gb=s.quota_memory_gb,
            storage_gb=s.quota_storage_gb,
            containers=s.quota_containers,
        )

    async def create_personal_space(self, user: User) -> Project:
        """Personal organisation (owner: ``user``) and its default project. No commit."""
        org = Organisation(
            name=f"{user.name}'s organisation",
            slug=await self._unique_slug(None, user.username or user.email.split("@", 1)[0]),
            kind=OrgKind.STANDARD.value,
            is_personal=True,
            description="",
        )
        self.session.add(org)
        await self.session.flush()
        self.session.add(Membership(organisation_id=org.id, user_id=user.id, role=Role.OWNER))
        project = Project(organisation_id=org.id, name="default", is_default=True, description="")
        self.session.add(project)
        await self.session.flush()
        self.session.add(self._default_quota(project.id))
        return project

    async def list_orgs(
        self, principal: Principal, page: PageParams, *, all_orgs: bool = False
    ) -> tuple[list[tuple[Organisation, Role | None]], int]:
        where = []
        if not (all_orgs and principal.is_admin and principal.key_organisation_id is None):
            ids = await visible_org_ids(self.session, principal)
            where.append(Organisation.id.in_(ids))
        orgs, total = await fetch_page(
            self.session,
            Organisation,
            *where,
            order_by=(Organisation.created_at, Organisation.id),
            page=page,
        )
        roles = await roles_in(self.session, principal, orgs)
        return [(o, roles[o.id]) for o in orgs], total

    async def role_in(self, principal: Principal, org_id: str) -> Role | None:
        return await effective_role(self.session, principal, await org_chain(self.session, org_id))

    async def create_org(self, principal: Principal, body: OrganisationCreate) -> Organisation:
        await begin_write(self.session)
        org = Organisation(
            name=body.name,
            slug=await self._unique_slug(body.slug, body.name),
            kind=body.kind.value,
            description=body.description,
        )
        self.session.add(org)
        await self.session.flush()
        self.session.add(
            Membership(organisation_id=org.id, user_id=principal.user_id, role=Role.OWNER)
        )
        await self._commit_unique("slug")
        return org

    async def create_child_org(
        self, principal: Principal, parent: Organisation, body: ChildOrganisationCreate
    ) -> tuple[Organisation, tuple[Invitation, str] | None]:
        """The child organisation, and the invitation (with its token) of
        ``owner_email`` when one was given."""
        if parent.kind != OrgKind.RESELLER.value:
            raise Conflict("Only a reseller organisation can create child organisations")
        depth = len(await org_chain(self.session, parent.id))
        if depth >= MAX_ORG_DEPTH - 1:
            raise Conflict(f"Organisations nest at most {MAX_ORG_DEPTH - 1} levels deep")
        await begin_write(self.session)
        org = Organisation(
            name=body.name,
            slug=await self._unique_slug(body.slug, body.name),
            kind=body.kind.value,
            description=body.description,
            parent_id=parent.id,
        )
        self.session.add(org)
        await self.session.flush()
        invitation: tuple[Invitation, str] | None = None
        if body.owner_email:
            # The named owner is invited (whether or not the address has an account:
            # the answer tells nothing of it); the owner role takes effect on accepting.
            invitation = self._invite(principal, org, body.owner_email, Role.OWNER, 7)
        project = Project(organisation_id=org.id, name="default", is_default=True, description="")
        self.session.add(project)
        await self.session.flush()
        self.session.add(self._default_quota(project.id))
        await self._commit_unique("slug")
        return org, invitation

    async def list_children(
        self, principal: Principal, parent: Organisation, page: PageParams
    ) -> tuple[list[tuple[Organisation, Role | None]], int]:
        rows, total = await fetch_page(
            self.session,
            Organisation,
            Organisation.parent_id == parent.id,
            order_by=(Organisation.created_at, Organisation.id),
            page=page,
        )
        roles = await roles_in(self.session, principal, rows)
        return [(o, roles[o.id]) for o in rows], total

    async def update_org(self, org: Organisation, body: OrganisationUpdate) -> Organisation:
        await begin_write(self.session)
        org = await self._reload(Organisation, org.id)
        changes = body.model_dump(exclude_unset=True)
        for name in ("name", "description"):
            if changes.get(name) is not None:
                setattr(org, name, changes[name])
        if changes.get("slug") and changes["slug"] != org.slug:
            org.slug = await self._unique_slug(changes["slug"], org.name)
        await self._commit_unique("slug")
        return org

    async def delete_org(self, org: Organisation) -> None:
        if org.is_personal:
            raise Conflict("A personal organisation cannot be deleted")
        await begin_write(self.session)
        children = await self.session.scalar(
            select(func.count(Organisation.id)).where(Organisation.parent_id == org.id)
        )
        if children:
            raise Conflict(
                "Delete or move this organisation's child organisations first",
                children=children,
            )
        project_ids = select(Project.id).where(Project.organisation_id == org.id)
        await self._refuse_if_resources(project_ids, "organisation")
        await self.session.execute(
            update(User)
            .where(User.default_project_id.in_(project_ids))
            .values(default_project_id=None)
        )
        obj = await self.session.get(Organisation, org.id)
        if obj is not None:
            await self.session.delete(obj)
        await self.session.commit()

    # --- members ------------------------------------------------------------
    async def list_members(
        self, org: Organisation, page: PageParams
    ) -> tuple[list[dict[str, Any]], int]:
        members, total = await fetch_page(
            self.session,
            Membership,
            Membership.organisation_id == org.id,
            order_by=(Membership.created_at, Membership.user_id),
            page=page,
        )
        users = {
            u.id: u
            for u in await self.session.scalars(
                select(User).where(User.id.in_([m.user_id for m in members]))
            )
        }
        return [self._member(m, users[m.user_id]) for m in members if m.user_id in users], total

    @staticmethod
    def _member(m: Membership, u: User) -> dict[str, Any]:
        return {
            "user_id": u.id,
            "organisation_id": m.organisation_id,
            "email": u.email,
            "name": u.name,
            "username": u.username,
            "role": m.role,
            "created_at": m.created_at,
        }

    @staticmethod
    def _check_grant(actor_role: Role, target_role: Role, current: Role | None) -> None:
        """Only owners may make, unmake or remove owners."""
        if Role.OWNER in (target_role, current) and actor_role is not Role.OWNER:
            raise Forbidden("Only an owner can grant, change or remove the owner role")

    async def add_member(
        self, principal: Principal, org: Organisation, actor_role: Role, body: MemberAdd
    ) -> tuple[Invitation, str]:
        """Adding someone is inviting them: they join when they accept. The answer is
        the same whether or not the address has an account (no account oracle)."""
        assert body.email is not None  # MemberAdd requires it
        invite = InvitationCreate(
            email=body.email, role=body.role, expires_in_days=body.expires_in_days
        )
        return await self.create_invitation(principal, org, actor_role, invite)

    async def _membership(self, org_id: str, user_id: str) -> tuple[Membership, User]:
        row = (
            await self.session.execute(
                select(Membership, User)
                .join(User, User.id == Membership.user_id)
                .where(Membership.organisation_id == org_id, Membership.user_id == user_id)
            )
        ).one_or_none()
        if row is None:
            raise NotFound("Member not found", user_id=user_id)
        return row[0], row[1]

    async def _owner_count(self, org_id: str) -> int:
        return (
            await self.session.scalar(
                select(func.count())
                .select_from(Membership)
                .where(Membership.organisation_id == org_id, Membership.role == Role.OWNER.value)
            )
        ) or 0

    async def update_member(
        self, org: Organisation, actor_role: Role, user_id: str, role: Role
    ) -> dict[str, Any]:
        await begin_write(self.session)
        m, user = await self._membership(org.id, user_id)
        self._check_grant(actor_role, role, Role(m.role))
        if m.role == Role.OWNER and role != Role.OWNER and await self._owner_count(org.id) <= 1:
            raise Conflict("An organisation must keep at least one owner")
        m.role = role.value
        await self.session.commit()
        return self._member(m, user)

    async def remove_member(self, org: Organisation, actor_role: Role, user_id: str) -> None:
        await begin_write(self.session)
        m, _ = await self._membership(org.id, user_id)
        self._check_grant(actor_role, Role(m.role), Role(m.role))
        if m.role == Role.OWNER and await self._owner_count(org.id) <= 1:
            raise Conflict("An organisation must keep at least one owner")
        await self.session.delete(m)
        # Keys bound to this organisation stop at once (the auth check re-reads
        # membership); revoking them also shows it in the key list.
        await self.session.execute(
            update(ApiKey)
            .where(
                ApiKey.user_id == user_id,
                ApiKey.organisation_id == org.id,
                ApiKey.revoked_at.is_(None),
            )
            .values(revoked_at=utcnow())
        )
        await self.session.commit()

    # --- invitations --------------------------------------------------------
    async def create_invitation(
        self, principal: Principal, org: Organisation, actor_role: Role, body: InvitationCreate
    ) -> tuple[Invitation, str]:
        self._check_grant(actor_role, body.role, None)
        await begin_write(self.session)
        existing = await self.session.scalar(
            select(Membership.user_id)
            .join(User, User.id == Membership.user_id)
            .where(Membership.organisation_id == org.id, User.email == body.email)
        )
        if existing:
            raise Conflict("This user is already a member")
        inv, token = self._invite(principal, org, body.email, body.role, body.expires_in_days)
        await self.session.commit()
        return inv, token

    def _invite(
        self, principal: Principal, org: Organisation, email: str, role: Role, days: int
    ) -> tuple[Invitation, str]:
        token = "nfi_" + secrets.token_urlsafe(32)
        inv = Invitation(
            organisation_id=org.id,
            email=email,
            role=role.value,
            token_hash=hash_secret(token),
            invited_by=principal.user_id,
            expires_at=utcnow() + timedelta(days=days),
        )
        self.session.add(inv)
        return inv, token

    async def list_invitations(
        self, org: Organisation, page: PageParams
    ) -> tuple[Sequence[Invitation], int]:
        return await fetch_page(
            self.session,
            Invitation,
            Invitation.organisation_id == org.id,
            Invitation.accepted_at.is_(None),
            order_by=(Invitation.created_at, Invitation.id),
            page=page,
        )

    async def revoke_invitation(self, org: Organisation, invitation_id: str) -> None:
        await begin_write(self.session)
        inv = await self.session.get(Invitation, invitation_id)
        if inv is None or inv.organisation_id != org.id or inv.accepted_at is not None:
            raise NotFound("Invitation not found", invitation_id=invitation_id)
        await self.session.delete(inv)
        await self.session.commit()

    async def my_invitations(
        self, principal: Principal, page: PageParams
    ) -> tuple[Sequence[Invitation], int]:
        return await fetch_page(
            self.session,
            Invitation,
            Invitation.email == principal.user.email,
            Invitation.accepted_at.is_(None),
            Invitation.expires_at > utcnow(),
            order_by=(Invitation.created_at, Invitation.id),
            page=page,
        )

    async def accept_invitation(self, principal: Principal, token: str) -> Organisation:
        await begin_write(self.session)
        inv = await self.session.scalar(
            select(Invitation).where(Invitation.token_hash == hash_secret(token))
        )
        # Someone else's invitation answers like a missing one.
        if (
            inv is None
            or inv.email != principal.user.email
            or inv.accepted_at is not None
            or inv.expires_at <= utcnow()
        ):
            raise NotFound("Invitation not found or expired")
        org = await self.session.get(Organisation, inv.organisation_id)
        if org is None:
            raise NotFound("Invitation not found or expired")
        inv.accepted_at = utcnow()
        if await self.session.get(Membership, (org.id, principal.user_id)) is None:
            self.session.add(
                Membership(organisation_id=org.id, user_id=principal.user_id, role=inv.role)
            )
        await self.session.commit()
        return org

    # --- projects -----------------------------------------------------------
    async def list_projects(
        self, principal: Principal, page: PageParams, *, organisation_id: str | None = None
    ) -> tuple[Sequence[Project], int]:
        ids = await visible_org_ids(self.session, principal)
        if organisation_id is not None:
            ids = [i for i in ids if i == organisation_id]
        return await fetch_page(
            self.session,
            Project,
            Project.organisation_id.in_(ids),
            order_by=(Project.created_at, Project.id),
            page=page,
        )

    async def default_organisation_id(self, principal: Principal) -> str:
        """Where a project goes when the caller names no organisation."""
        if principal.key_organisation_id:
            return principal.key_organisation_id
        if principal.user.default_project_id:
            project = await self.session.get(Project, principal.user.default_project_id)
            if project is not None:
                return project.organisation_id
        org_id = await self.session.scalar(
            select(Membership.organisation_id)
            .join(Organisation, Organisation.id == Membership.organisation_id)
            .where(Membership.user_id == principal.user_id)
            .order_by(Organisation.is_personal.desc(), Membership.created_at)
        )
        if org_id is None:
            raise ValidationFailed(organisation_id="You belong to no organisation; name one")
        return org_id

    async def create_project(self, org: Organisation, body: ProjectCreate) -> Project:
        await begin_write(self.session)
        if await self.session.scalar(
            select(Project.id).where(Project.organisation_id == org.id, Project.name == body.name)
        ):
            raise Conflict("A project with this name exists in the organisation", name=body.name)
        project = Project(organisation_id=org.id, name=body.name, description=body.description)
        self.session.add(project)
        await self.session.flush()
        self.session.add(self._default_quota(project.id))
        await self._commit_unique("name")
        return project

    async def update_project(self, project: Project, body: ProjectUpdate) -> Project:
        await begin_write(self.session)
        project = await self._reload(Project, project.id)
        changes = body.model_dump(exclude_unset=True)
        if changes.get("name") and changes["name"] != project.name:
            if await self.session.scalar(
                select(Project.id).where(
                    Project.organisation_id == project.organisation_id,
                    Project.name == changes["name"],
                )
            ):
                raise Conflict("A project with this name exists in the organisation")
            project.name = changes["name"]
        if changes.get("description") is not None:
            project.description = changes["description"]
        await self._commit_unique("name")
        return project

    async def delete_project(self, project: Project) -> None:
        if project.is_default:
            raise Conflict("The default project of an organisation cannot be deleted")
        await begin_write(self.session)
        await self._refuse_if_resources([project.id], "project")
        await self.session.execute(
            update(User)
            .where(User.default_project_id == project.id)
            .values(default_project_id=None)
        )
        obj = await self.session.get(Project, project.id)
        if obj is not None:
            await self.session.delete(obj)
        await self.session.commit()

    async def get_quota(self, project: Project) -> ProjectQuota:
        quota = await self.session.get(ProjectQuota, project.id)
        if quota is None:  # a project made before quotas existed: give it the defaults
            await begin_write(self.session)
            quota = await self.session.get(ProjectQuota, project.id) or self._default_quota(
                project.id
            )
            self.session.add(quota)
            await self.session.commit()
        return quota

    async def set_quota(self, project: Project, body: QuotaUpdate) -> ProjectQuota:
        await self.get_quota(project)
        await begin_write(self.session)
        quota: ProjectQuota = await self._reload(ProjectQuota, project.id)
        for name, value in body.model_dump(exclude_unset=True).items():
            setattr(quota, name, value)
        quota.updated_at = utcnow()
        await self.session.commit()
        return quota

    # --- helpers ------------------------------------------------------------
    async def _refuse_if_resources(self, project_ids: Any, what: str) -> None:
        """Compute resources are never deleted as a side effect: delete them first."""
        held = {}
        for label, model in (
            ("container", Container),
            ("virtual machine", Vm),
            ("volume", Volume),
            ("network", Network),
            ("backup", Backup),
            ("image", Image),
        ):
            count = await self.session.scalar(
                select(func.count(model.id)).where(model.project_id.in_(project_ids))
            )
            if count:
                held[label] = count
        if held:
            await self.session.rollback()
            listed = ", ".join(f"{n} {label}(s)" for label, n in held.items())
            raise Conflict(
                f"Delete this {what}'s {listed} first",
                **{label.replace(" ", "_") + "s": n for label, n in held.items()},
            )

    async def _reload(self, model: Any, key: Any) -> Any:
        obj = await self.session.get(model, key, populate_existing=True)
        if obj is None:
            raise NotFound()
        return obj

    async def _commit_unique(self, field: str) -> None:
        """Commit; a unique-constraint race becomes a Conflict, not a 500."""
        try:
            await self.session.commit()
        except IntegrityError as exc:
            await self.session.rollback()
            raise Conflict("Conflicts with an existing record", **{field: "already taken"}) from exc
