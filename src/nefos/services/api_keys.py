"""Scoped API keys: created once, shown once, stored hashed, revocable."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import ApiKey, User
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.access import Permission, parse_scopes
from nefos.domain.errors import Conflict, Forbidden, NotFound, ValidationFailed
from nefos.domain.paging import PageParams
from nefos.schemas.identity import ApiKeyCreate
from nefos.security.apikeys import display_prefix, generate_api_key, hash_secret
from nefos.services.core import Core
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal, authorize_org


class ApiKeyService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    async def create(self, principal: Principal, body: ApiKeyCreate) -> tuple[ApiKey, str]:
        try:
            scopes = parse_scopes(body.scopes, admin=principal.is_admin)
        except ValueError as exc:
            raise ValidationFailed(scopes=str(exc)) from None
        wanted = {s.value for s in scopes}
        # A key can hand on no more than it holds, and admin only to admins.
        if not wanted <= principal.scopes:
            raise Forbidden("A key cannot grant scopes its creator lacks")
        if "admin" in wanted and not principal.is_admin:
            raise Forbidden("Only platform admins can create keys with the admin scope")
        org_id = body.organisation_id or principal.key_organisation_id
        if principal.key_organisation_id and org_id != principal.key_organisation_id:
            raise Forbidden("This key is bound to another organisation")
        if org_id is not None:
            await authorize_org(self.session, principal, org_id, Permission.ORG_READ)
        cap = self.core.settings.api_key_max_ttl_days
        days = body.expires_in_days
        if cap is not None and (days is None or days > cap):
            days = cap
        expires_at = utcnow() + timedelta(days=days) if days else None
        if principal.key_expires_at is not None:
            # A key minted by a key never outlives its parent.
            expires_at = min(expires_at or principal.key_expires_at, principal.key_expires_at)
        raw = generate_api_key()
        await begin_write(self.session)
        await self._check_cap(principal.user_id)
        key = ApiKey(
            user_id=principal.user_id,
            organisation_id=org_id,
            name=body.name,
            prefix=display_prefix(raw),
            key_hash=hash_secret(raw),
            scopes=sorted(wanted),
            expires_at=expires_at,
        )
        self.session.add(key)
        await self.session.commit()
        return key, raw

    async def _check_cap(self, user_id: str) -> None:
        """At most ``NEFOS_API_KEYS_PER_USER`` live keys a user (revoked and expired
        ones do not count): keys are not a way to more of anything."""
        cap = self.core.settings.api_keys_per_user
        now = utcnow()
        # The user's row locked (PostgreSQL): two creations at once count each other.
        await self.session.execute(select(User.id).where(User.id == user_id).with_for_update())
        live = await self.session.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(
                ApiKey.user_id == user_id,
                ApiKey.revoked_at.is_(None),
                or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
            )
        )
        if (live or 0) >= cap:
            raise Conflict(
                f"You already hold {cap} live API keys, the most allowed: revoke one first",
                limit=cap,
            )

    async def list(self, principal: Principal, page: PageParams) -> tuple[Sequence[ApiKey], int]:
        return await fetch_page(
            self.session,
            ApiKey,
            ApiKey.user_id == principal.user_id,
            order_by=(ApiKey.created_at.desc(), ApiKey.id),
            page=page,
        )

    async def get(self, principal: Principal, key_id: str) -> ApiKey:
        key = await self.session.get(ApiKey, key_id)
        if key is None or key.user_id != principal.user_id:
            raise NotFound("API key not found", api_key_id=key_id)
        return key

    async def revoke(self, principal: Principal, key_id: str) -> ApiKey:
        await begin_write(self.session)
        key = await self.get(principal, key_id)
        if key.revoked_at is None:
            key.revoked_at = utcnow()
        await self.session.commit()
        return key
