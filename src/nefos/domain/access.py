"""Roles, permissions and API-key scopes: the one access matrix of Nefos.

A request may do a thing when *both* hold:

* the caller's role in the organisation that owns the target grants the
  permission (platform admins hold every permission everywhere), and
* when the caller authenticated with an API key, one of the key's scopes covers
  the permission's scope.

Routes name the permission they need (see ``nefos.api.deps.Authorize``); a test
walks every route and fails if one names none.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}


class OrgKind(StrEnum):
    STANDARD = "standard"
    RESELLER = "reseller"


class Scope(StrEnum):
    """API-key scopes. A JWT session holds them all."""

    ACCOUNT_READ = "account:read"
    ACCOUNT_WRITE = "account:write"
    ORG_READ = "org:read"
    ORG_WRITE = "org:write"
    COMPUTE_READ = "compute:read"
    COMPUTE_WRITE = "compute:write"
    BILLING_READ = "billing:read"
    BILLING_WRITE = "billing:write"
    MONITORING_READ = "monitoring:read"
    MONITORING_WRITE = "monitoring:write"
    ADMIN = "admin"


ALL_SCOPES: frozenset[Scope] = frozenset(Scope)


class Permission(StrEnum):
    # The caller's own account: any authenticated user, bounded by key scope only.
    ACCOUNT_READ = "account.read"
    ACCOUNT_WRITE = "account.write"
    API_KEY_MANAGE = "api_key.manage"
    # Organisations.
    ORG_CREATE = "org.create"
    ORG_READ = "org.read"
    ORG_UPDATE = "org.update"
    ORG_DELETE = "org.delete"
    ORG_CHILD_CREATE = "org.child.create"
    MEMBER_READ = "member.read"
    MEMBER_MANAGE = "member.manage"
    # Projects and quotas.
    PROJECT_READ = "project.read"
    PROJECT_CREATE = "project.create"
    PROJECT_UPDATE = "project.update"
    PROJECT_DELETE = "project.delete"
    QUOTA_READ = "quota.read"
    QUOTA_UPDATE = "quota.update"
    # Compute resources (containers, later VMs) and their operations.
    COMPUTE_READ = "compute.read"
    COMPUTE_WRITE = "compute.write"
    # Monitoring: metrics, alerts and alert rules, webhooks, events.
    MONITORING_READ = "monitoring.read"
    MONITORING_WRITE = "monitoring.write"
    # Billing: wallets, usage, invoices, payments, quotes, payouts.
    BILLING_READ = "billing.read"
    BILLING_WRITE = "billing.write"
    # Platform administration.
    PLATFORM_ADMIN = "platform.admin"

    @property
    def scope(self) -> Scope:
        return PERMISSION_SCOPE[self]


PERMISSION_SCOPE: dict[Permission, Scope] = {
    Permission.ACCOUNT_READ: Scope.ACCOUNT_READ,
    Permission.ACCOUNT_WRITE: Scope.ACCOUNT_WRITE,
    Permission.API_KEY_MANAGE: Scope.ACCOUNT_WRITE,
    Permission.ORG_CREATE: Scope.ORG_WRITE,
    Permission.ORG_READ: Scope.ORG_READ,
    Permission.ORG_UPDATE: Scope.ORG_WRITE,
    Permission.ORG_DELETE: Scope.ORG_WRITE,
    Permission.ORG_CHILD_CREATE: Scope.ORG_WRITE,
    Permission.MEMBER_READ: Scope.ORG_READ,
    Permission.MEMBER_MANAGE: Scope.ORG_WRITE,
    Permission.PROJECT_READ: Scope.ORG_READ,
    Permission.PROJECT_CREATE: Scope.ORG_WRITE,
    Permission.PROJECT_UPDATE: Scope.ORG_WRITE,
    Permission.PROJECT_DELETE: Scope.ORG_WRITE,
    Permission.QUOTA_READ: Scope.ORG_READ,
    Permission.QUOTA_UPDATE: Scope.ORG_WRITE,
    Permission.COMPUTE_READ: Scope.COMPUTE_READ,
    Permission.COMPUTE_WRITE: Scope.COMPUTE_WRITE,
    Permission.MONITORING_READ: Scope.MONITORING_READ,
    Permission.MONITORING_WRITE: Scope.MONITORING_WRITE,
    Permission.BILLING_READ: Scope.BILLING_READ,
    Permission.BILLING_WRITE: Scope.BILLING_WRITE,
    Permission.PLATFORM_ADMIN: Scope.ADMIN,
}

_VIEWER = frozenset(
    {
        Permission.ORG_READ,
        Permission.MEMBER_READ,
        Permission.PROJECT_READ,
        Permission.QUOTA_READ,
        Permission.COMPUTE_READ,
        Permission.MONITORING_READ,
        Permission.BILLING_READ,
    }
)
# Members run workloads in the organisation's projects (and watch them: alert
# rules, webhooks); they do not manage it.
_MEMBER = _VIEWER | {Permission.COMPUTE_WRITE, Permission.MONITORING_WRITE}
_ADMIN = _MEMBER | {
    Permission.ORG_UPDATE,
    Permission.ORG_CHILD_CREATE,
    Permission.MEMBER_MANAGE,
    Permission.PROJECT_CREATE,
    Permission.PROJECT_UPDATE,
    Permission.PROJECT_DELETE,
    Permission.QUOTA_UPDATE,
    # Paying (top-ups, payments, payouts) and accepting quotes is the organisation's
    # managers' call.
    Permission.BILLING_WRITE,
}
_OWNER = _ADMIN | {Permission.ORG_DELETE}

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: _VIEWER,
    Role.MEMBER: _MEMBER,
    Role.ADMIN: frozenset(_ADMIN),
    Role.OWNER: frozenset(_OWNER),
}

# Permissions that concern only the caller's own account, held by every user.
SELF_PERMISSIONS: frozenset[Permission] = frozenset(
    {
        Permission.ACCOUNT_READ,
        Permission.ACCOUNT_WRITE,
        Permission.API_KEY_MANAGE,
        Permission.ORG_CREATE,
    }
)


def role_allows(role: Role | None, permission: Permission) -> bool:
    if permission in SELF_PERMISSIONS:
        return True
    return role is not None and permission in ROLE_PERMISSIONS[role]


def scopes_allow(scopes: frozenset[str], permission: Permission) -> bool:
    return permission.scope.value in scopes


def parse_scopes(values: list[str], *, admin: bool) -> frozenset[Scope]:
    """Parse scope strings. ``*`` means every scope the holder may have: all of
    them for a platform admin, all but ``admin`` for anyone else. Raises
    ValueError on an unknown scope."""
    out: set[Scope] = set()
    for raw in values:
        if raw == "*":
            out |= ALL_SCOPES if admin else ALL_SCOPES - {Scope.ADMIN}
            continue
        try:
            out.add(Scope(raw))
        except ValueError:
            raise ValueError(f"unknown scope {raw!r}") from None
    return frozenset(out)
