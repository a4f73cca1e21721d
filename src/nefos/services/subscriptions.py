"""Who may see which event: the view behind one WebSocket (or SDK stream).

A view is made from the caller's credentials (or the session or API key a
WebSocket ticket stands for) and re-made every
``ws_recheck_interval`` seconds (``refresh``): a revoked session or API key, a
disabled account or an expired token raises ``Unauthorized``; a lost membership
raises ``Forbidden``. Either closes the socket.

What a view lets through:

* tenant events (``project_id``/``organisation_id`` set) of the organisations the
  caller holds a role in (and their descendants, for resellers), or of every
  organisation for a platform admin not bound to one by an API key;
* platform events (hosts, host-down alerts) for platform admins only;
* and only the types the credentials' scopes cover: compute events need
  ``compute:read``, metrics and alerts ``monitoring:read``, billing
  ``billing:read``, host events ``admin``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nefos.domain.errors import Forbidden
from nefos.events import EVENT_TYPES, Event, EventType
from nefos.services.auth import AuthService, Grant
from nefos.services.core import Core
from nefos.services.principal import Principal, visible_org_ids

TYPE_SCOPE: dict[str, str] = {
    EventType.CONTAINER_STATUS: "compute:read",
    EventType.VM_STATUS: "compute:read",
    EventType.OPERATION: "compute:read",
    EventType.SERVICE_HEALTH: "compute:read",
    EventType.LOAD_TEST: "compute:read",
    EventType.HOST_STATUS: "admin",
    EventType.METRICS: "monitoring:read",
    EventType.ALERT: "monitoring:read",
    EventType.BILLING: "billing:read",
    EventType.USAGE_ALERT: "billing:read",
    EventType.SUBSCRIPTION_CREATED: "billing:read",
    EventType.SUBSCRIPTION_PLAN_CHANGED: "billing:read",
    EventType.SUBSCRIPTION_RENEWED: "billing:read",
    EventType.SUBSCRIPTION_PAST_DUE: "billing:read",
    EventType.SUBSCRIPTION_CANCELLED: "billing:read",
    EventType.SUBSCRIPTION_ENDED: "billing:read",
}


@dataclass
class EventView:
    core: Core
    credential: str | Grant
    principal: Principal | None = None
    everything: bool = False
    orgs: frozenset[str] = frozenset()
    allowed_types: frozenset[str] = frozenset()
    types: set[str] = field(default_factory=set)

    async def refresh(self) -> None:
        """(Re-)authenticate and (re-)read what the caller may see."""
        async with self.core.db.sessionmaker() as session:
            auth = AuthService(self.core, session)
            if isinstance(self.credential, Grant):  # a redeemed ticket
                principal = await auth.authenticate_grant(self.credential)
            else:
                principal = await auth.authenticate(self.credential, kind="bearer")
            orgs = frozenset(await visible_org_ids(session, principal))
            await session.commit()
        everything = principal.is_admin and principal.key_organisation_id is None
        if self.principal is not None and not everything and not orgs >= self.orgs:
            raise Forbidden("Your memberships changed: reconnect to see your events")
        allowed = frozenset(t for t, scope in TYPE_SCOPE.items() if scope in principal.scopes)
        if not principal.is_admin:
            allowed -= {EventType.HOST_STATUS}
        self.principal, self.everything, self.orgs = principal, everything, orgs
        if not self.types or self.types == set(self.allowed_types):
            self.types = set(allowed)
        else:
            self.types &= allowed
        self.allowed_types = allowed

    def subscribe(self, types: list[str]) -> tuple[list[str], list[str]]:
        """Narrow to ``types`` (all allowed when empty); (now subscribed, refused)."""
        wanted = set(types) if types else set(self.allowed_types)
        refused = sorted(t for t in wanted if t not in self.allowed_types)
        self.types = wanted & self.allowed_types
        return sorted(self.types), refused

    def sees(self, event: Event) -> bool:
        if event.type not in self.types:
            return False
        if event.is_platform:
            return self.principal is not None and self.principal.is_admin
        if self.everything:
            return True
        return event.organisation_id in self.orgs

    @property
    def user_id(self) -> str | None:
        return self.principal.user_id if self.principal else None


def unknown_types(types: list[str]) -> list[str]:
    return sorted(t for t in types if t not in EVENT_TYPES)
