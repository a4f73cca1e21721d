"""Organisations' own rate limits (``RateLimitOverride``), set by a platform admin.

An override replaces the default limit of one group (or of ``user``, the overall
limit) for the organisation's members and its API keys; a member of several
organisations gets the most generous. ``limit == 0`` stores ``none`` (no limit).
The limiter (``nefos.gateway.limiter``, a layer above) reads them through
``caller_overrides`` and caches them; a change here is told to this process's limiter at once, other
processes see it within ``OVERRIDE_TTL``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import ApiKey, Membership, Organisation, RateLimitOverride
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.errors import NotFound, ValidationFailed
from nefos.domain.rate_limits import ALL_GROUPS, Policy, parse_rate


async def caller_overrides(
    session: AsyncSession, kind: str, caller_id: str
) -> list[tuple[str, int, int]]:
    """(group, limit, window) of every override that applies to a user (by id) or an
    API key (by the SHA-256 of its secret): its organisations' overrides."""
    if kind == "user":
        orgs = select(Membership.organisation_id).where(Membership.user_id == caller_id)
    else:
        key = await session.scalar(
            select(ApiKey).where(ApiKey.key_hash == caller_id, ApiKey.revoked_at.is_(None))
        )
        if key is None:
            return []
        if key.organisation_id is not None:  # a key of one organisation: its limits
            orgs = select(Membership.organisation_id).where(
                Membership.organisation_id == key.organisation_id
            )
        else:  # a key of the user: the user's
            orgs = select(Membership.organisation_id).where(Membership.user_id == key.user_id)
    rows = await session.execute(
        select(RateLimitOverride.group, RateLimitOverride.limit, RateLimitOverride.window).where(
            RateLimitOverride.organisation_id.in_(orgs)
        )
    )
    return [(g, int(limit), int(window)) for g, limit, window in rows]


async def live_key_owner(session: AsyncSession, key_hash: str) -> str | None:
    """The owner's id of the live (not revoked, not expired) API key whose secret has
    this SHA-256; None when there is none. The limiter counts a key against its owner."""
    key = await session.scalar(
        select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    )
    if key is None or (key.expires_at is not None and key.expires_at <= utcnow()):
        return None
    return key.user_id


def _policy(row: RateLimitOverride) -> Policy:
    return Policy(row.group, row.limit, row.window)


def view(
    org_id: str, rows: list[RateLimitOverride], defaults: Mapping[str, Policy]
) -> dict[str, Any]:
    own = {r.group: _policy(r) for r in rows}
    limits = {}
    for g in ALL_GROUPS:
        p = own.get(g) or defaults[g]
        source = "organisation" if g in own else "default"
        limits[g] = {"rate": p.rate, "limit": p.limit, "window": p.window, "source": source}
    return {
        "organisation_id": org_id,
        "limits": limits,
        "updated_at": max((r.updated_at for r in rows), default=None),
    }


class RateLimitService:
    def __init__(self, session: AsyncSession, defaults: Mapping[str, Policy]) -> None:
        self.session = session
        self.defaults = defaults

    async def _org(self, org_id: str) -> Organisation:
        org = await self.session.get(Organisation, org_id)
        if org is None:
            raise NotFound("Organisation not found")
        return org

    async def _rows(self, org_id: str) -> list[RateLimitOverride]:
        rows = await self.session.scalars(
            select(RateLimitOverride).where(RateLimitOverride.organisation_id == org_id)
        )
        return list(rows)

    async def get(self, org_id: str) -> dict[str, Any]:
        await self._org(org_id)
        return view(org_id, await self._rows(org_id), self.defaults)

    async def replace(
        self, org_id: str, limits: Mapping[str, str], by: str | None
    ) -> dict[str, Any]:
        """The organisation's overrides become exactly ``limits`` (group → rate)."""
        parsed: dict[str, tuple[int, int]] = {}
        errors: dict[str, str] = {}
        for group, rate in limits.items():
            if group not in ALL_GROUPS:
                errors[f"limits.{group}"] = f"unknown group (one of {', '.join(ALL_GROUPS)})"
                continue
            try:
                parsed[group] = parse_rate(rate)
            except ValueError as exc:
                errors[f"limits.{group}"] = str(exc)
        if errors:
            raise ValidationFailed("Invalid rate limits", **errors)
        await begin_write(self.session)
        await self._org(org_id)
        existing = {r.group: r for r in await self._rows(org_id)}
        for group, row in existing.items():
            if group not in parsed:
                await self.session.delete(row)
        for group, (limit, window) in parsed.items():
            row = existing.get(group) or RateLimitOverride(organisation_id=org_id, group=group)
            self.session.add(row)
            row.limit, row.window, row.updated_by = limit, window, by
        await self.session.commit()
        return view(org_id, await self._rows(org_id), self.defaults)

    async def remove(self, org_id: str, group: str) -> dict[str, Any]:
        if group not in ALL_GROUPS:
            raise NotFound(f"No rate-limit group {group!r}")
        await begin_write(self.session)
        await self._org(org_id)
        await self.session.execute(
            delete(RateLimitOverride).where(
                RateLimitOverride.organisation_id == org_id, RateLimitOverride.group == group
            )
        )
        await self.session.commit()
        return view(org_id, await self._rows(org_id), self.defaults)
