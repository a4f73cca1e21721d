"""Rate limits: yours (``GET /rate-limits``) and, for platform admins, an
organisation's own (``/admin/organisations/{id}/rate-limits``).

A refused call raises :class:`nefos.sdk.RateLimitedError`, whose ``retry_after`` is
the seconds to wait (from ``Retry-After``).
"""

from __future__ import annotations

from collections.abc import Mapping

from nefos.schemas.rate_limits import CallerLimits, OrgLimits
from nefos.sdk._resources import _Resource


class RateLimits(_Resource):
    """Limits per group (auth, containers, monitoring, billing) and overall (user)."""

    def status(self) -> CallerLimits:
        """Your limits and what remains of each now. Not itself limited."""
        return self._one(CallerLimits, "GET", "/rate-limits")

    def get(self, organisation_id: str) -> OrgLimits:
        """An organisation's limits, its own or the defaults (platform admins)."""
        return self._one(OrgLimits, "GET", f"/admin/organisations/{organisation_id}/rate-limits")

    def set(self, organisation_id: str, limits: Mapping[str, str]) -> OrgLimits:
        """Replace an organisation's own limits: group → ``"N/second|minute|hour|day"``
        or ``"none"``; a group left out takes the default (platform admins)."""
        return self._one(
            OrgLimits,
            "PUT",
            f"/admin/organisations/{organisation_id}/rate-limits",
            json={"limits": dict(limits)},
        )

    def unset(self, organisation_id: str, group: str) -> OrgLimits:
        """Drop an organisation's own limit of one group (platform admins)."""
        return self._one(
            OrgLimits, "DELETE", f"/admin/organisations/{organisation_id}/rate-limits/{group}"
        )
