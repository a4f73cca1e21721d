"""Authenticating a request once: the credential checked, the caller remembered.

A request's credential is verified once (``TokenCodec`` keeps the claims of the
access tokens it verified, so the rate limiter's look at a JWT and the route's are
one verification). What the database says of the caller (the user's row, the
session's or key's liveness, a key's organisation) is a ``Principal``, kept in a
``PrincipalCache`` by session id or API key hash: a request whose caller is known
reads no database at all.

A cached principal is forgotten at once when a commit changes what it holds:
``nefos.events.identity`` sees every commit that writes a user, a session, an API
key, a membership or an organisation's place, and names the users concerned (or
"all", for a statement that changes rows it cannot name). This process forgets
them before the commit returns; the other processes are told through the bus's
control channel (Redis), also before the commit returns. While that channel is
down (``EventBus.shares_control``), the cache is not used: every request reads the
database, as before. ``NEFOS_AUTH_CACHE_SECONDS`` bounds how long an entry lives
regardless (a change made behind Nefos's back, straight in the database), and 0
turns the cache off.

Lookups and stores race with invalidations safely: a store is dropped when an
invalidation happened since its lookup began (``generation``), so a principal read
before a revocation is never cached after it.
"""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import ApiKey
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.errors import Unauthorized
from nefos.events.identity import KEEPS_PRINCIPALS
from nefos.security.apikeys import hash_secret, looks_like_api_key
from nefos.security.tokens import InvalidToken
from nefos.services.auth import AuthService
from nefos.services.core import Core
from nefos.services.principal import MAX_CACHED_PRINCIPALS, CacheKey, Principal, PrincipalCache

Kind = Literal["bearer", "jwt", "api_key"]

#: How often a key's ``last_used_at`` is written (seconds): a busy key must not turn
#: every read into a write.
API_KEY_TOUCH_SECONDS = 60.0


class Authenticator:
    """Turns a request's credential into its ``Principal``, reading the database only
    for a caller the cache does not know."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.cache: PrincipalCache = core.principals
        self._touched: dict[str, float] = {}  # key id -> when this process last wrote it

    async def authenticate(
        self, credential: str, *, kind: Kind, session: AsyncSession
    ) -> Principal:
        """``kind``: "bearer" (JWT or API key), "jwt" or "api_key". ``session`` is the
        request's; it is used only on a miss, and its read is rolled back, not
        committed."""
        if kind == "api_key" or (kind == "bearer" and looks_like_api_key(credential)):
            return await self._api_key(credential, session)
        return await self._jwt(credential, session)

    async def _jwt(self, token: str, session: AsyncSession) -> Principal:
        try:
            claims = self.core.tokens.decode(token, typ="access")
        except InvalidToken as exc:
            message = "Token has expired" if exc.reason == "token_expired" else "Invalid token"
            raise Unauthorized(message, reason=exc.reason) from None
        expires_at = datetime.fromtimestamp(claims.exp, UTC)
        key: CacheKey = ("s", claims.sid)
        principal = self.cache.get(key)
        if principal is None or principal.user_id != claims.sub:
            generation = self.cache.generation
            try:
                principal = await AuthService(self.core, session).session_principal(
                    claims.sub, claims.sid
                )
            finally:
                await _end_read(session)
            self.cache.put(key, principal, generation)
        principal = copy.copy(principal)  # the cached one is shared: this request's own
        principal.expires_at = expires_at
        return principal

    async def _api_key(self, raw: str, session: AsyncSession) -> Principal:
        if not looks_like_api_key(raw) or len(raw) > 200:
            raise Unauthorized("Invalid API key", reason="invalid_api_key")
        key: CacheKey = ("k", hash_secret(raw))
        principal = self.cache.get(key)
        now = time.monotonic()
        if principal is not None and (
            principal.key_expires_at is not None and principal.key_expires_at <= utcnow()
        ):
            principal = None  # expired since it was cached: the database says why
        if principal is None:
            generation = self.cache.generation
            try:
                principal, last_used = await AuthService(self.core, session).key_principal(key[1])
            finally:
                await _end_read(session)
            self.cache.put(key, principal, generation)
            if last_used is not None:
                age = (utcnow() - last_used).total_seconds()
                self._touched.setdefault(principal.api_key_id or "", now - max(age, 0.0))
        assert principal.api_key_id is not None
        touched = self._touched.get(principal.api_key_id)
        if touched is None or now - touched > API_KEY_TOUCH_SECONDS:
            self._touched[principal.api_key_id] = now
            if len(self._touched) > MAX_CACHED_PRINCIPALS:
                self._touched.clear()
            await _touch(session, principal.api_key_id)
        return principal


async def _end_read(session: AsyncSession) -> None:
    """End a read-only transaction without committing it."""
    if session.in_transaction():
        await session.rollback()


async def _touch(session: AsyncSession, key_id: str) -> None:
    """Note a key's use (at most every ``API_KEY_TOUCH_SECONDS`` per process): a write
    of its own, which changes nothing a principal holds."""
    await begin_write(session)
    await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .values(last_used_at=utcnow())
        .execution_options(**{KEEPS_PRINCIPALS: True})
    )
    await session.commit()
