"""Registration, login, token rotation, logout and request authentication.

Sessions and refresh tokens
    A login opens an ``AuthSession``. Its access tokens carry its id (``sid``);
    each refresh spends one refresh token and issues the next (rotation). Spending
    is one conditional UPDATE, so of two concurrent refreshes with one token at
    most one wins. Presenting a spent token again means it leaked: the whole
    session (the token family) is revoked, which also ends its access tokens.

Revocation takes effect on the next call: a request's caller comes from the
database or from a cache that every commit changing it empties at once, in every
process (``nefos.services.authn``), so a disabled user, a revoked session or key, a
removed membership or a deleted organisation stops working at once.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import (
    ApiKey,
    AuthSession,
    KnownLoginAddress,
    LoginFailure,
    RefreshToken,
    User,
)
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.errors import (
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    Unauthorized,
    ValidationFailed,
)
from nefos.domain.paging import PageParams
from nefos.schemas.identity import LoginRequest, RegisterRequest
from nefos.security.apikeys import hash_secret, looks_like_api_key
from nefos.security.tokens import InvalidToken
from nefos.services.core import Core
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal, UserSnapshot, effective_role, org_chain
from nefos.services.tenancy import TenancyService

# Every authenticated request runs this: built once, not per request.
_USER_AND_SESSION = (
    select(User, AuthSession.revoked_at)
    .join(AuthSession, AuthSession.user_id == User.id)
    .where(User.id == bindparam("user_id"), AuthSession.id == bindparam("session_id"))
)


@dataclass
class TokenPair:
    user: User
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int


@dataclass(frozen=True)
class ClientInfo:
    ip: str | None = None
    user_agent: str | None = None


class AuthService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session
        self.settings = core.settings

    # --- accounts -----------------------------------------------------------
    async def create_user(
        self,
        *,
        email: str,
        password: str,
        name: str | None = None,
        username: str | None = None,
        is_admin: bool = False,
    ) -> User:
        """Create a user with a personal organisation and a default project.

        Commits. Raises Conflict if the e-mail or username is taken.
        """
        self._check_password_strength(password, email=email)
        password_hash = self.core.passwords.hash(password)
        await begin_write(self.session)
        await self._ensure_free(email=email, username=username)
        user = User(
            email=email,
            username=username,
            name=name or username or email.split("@", 1)[0],
            password_hash=password_hash,
            is_admin=is_admin,
            settings={},
        )
        self.session.add(user)
        await self.session.flush()
        project = await TenancyService(self.core, self.session).create_personal_space(user)
        user.default_project_id = project.id
        await self.session.commit()
        return user

    async def _ensure_free(self, *, email: str, username: str | None) -> None:
        taken = await self.session.scalar(select(User.id).where(User.email == email))
        if taken:
            raise Conflict("A user with this email already exists", email="already registered")
        if username:
            taken = await self.session.scalar(
                select(User.id).where(func.lower(User.username) == username.lower())
            )
            if taken:
                raise Conflict("This username is taken", username="already taken")

    def _check_password_strength(self, password: str, *, email: str) -> None:
        if len(password) < self.settings.password_min_length:
            raise ValidationFailed(
                password=f"Password must be at least {self.settings.password_min_length} characters"
            )
        if password.lower() == email.lower():
            raise ValidationFailed(password="Password must not be the email address")

    async def register(self, body: RegisterRequest, client: ClientInfo) -> TokenPair:
        if not self.settings.registration_enabled:
            raise Forbidden("Registration is disabled on this platform")
        user = await self.create_user(
            email=body.email, password=body.password, name=body.name, username=body.username
        )
        return await self._open_session(user, client)

    # --- login --------------------------------------------------------------
    async def login(self, body: LoginRequest, client: ClientInfo) -> TokenPair:
        identifier = (body.email or body.username or "").strip()
        user = await self._find_login_user(identifier, by_email=bool(body.email))
        # Failures count per account, whether it is named by e-mail or by username.
        account_key = (user.email if user else identifier).lower()
        # An address this account signed in from is not held back by the account's
        # failures (an attack from elsewhere cannot lock the owner out); its own
        # per-IP limit still applies.
        known = user is not None and await self._known_address(user.id, client.ip)
        await self._check_lockout(account_key, client.ip, known=known)
        claimed = await self._claim_attempt(account_key, client.ip, known=known)

        ok = self.core.passwords.verify(user.password_hash if user else None, body.password)
        if not ok or user is None:
            raise Unauthorized("Invalid credentials")  # the claimed attempt stays: a failure
        if not user.is_active:
            await self._release_attempt(claimed)
            raise Unauthorized("This account is disabled")
        if body.api_key is not None:
            key = await self._live_key(body.api_key)
            if key is None or key.user_id != user.id:
                raise Unauthorized("Invalid API key")

        await begin_write(self.session)
        failures, _ = await self._account_failures(account_key, claimed)
        attacked = failures >= self.settings.login_max_failures
        # Mistypes are forgiven by a good login; an attack's back-off is not undone by
        # the owner signing in.
        forgiven: list[ColumnElement[bool]] = [LoginFailure.id.in_(claimed)]
        if not attacked:
            forgiven.append(and_(LoginFailure.kind == "account", LoginFailure.key == account_key))
        await self.session.execute(delete(LoginFailure).where(or_(*forgiven)))
        await self._remember_address(user.id, client.ip)
        fresh = await self.session.get(User, user.id, populate_existing=True)
        if fresh is None:
            raise Unauthorized("Invalid credentials")
        user = fresh
        if self.core.passwords.needs_rehash(user.password_hash):
            user.password_hash = self.core.passwords.hash(body.password)
        user.last_login_at = utcnow()
        await self.session.commit()
        return await self._open_session(user, client)

    async def _find_login_user(self, identifier: str, *, by_email: bool) -> User | None:
        if by_email or "@" in identifier:
            return await self.session.scalar(select(User).where(User.email == identifier.lower()))
        return await self.session.scalar(
            select(User).where(func.lower(User.username) == identifier.lower())
        )

    def _address_hash(self, ip: str) -> str:
        """A keyed hash of an address: the table holds no addresses."""
        key = self.settings.jwt_secret.encode()
        return hmac.new(key, b"login-address:" + ip.encode(), hashlib.sha256).hexdigest()

    async def _known_address(self, user_id: str, ip: str | None) -> bool:
        days = self.settings.login_known_address_days
        if not ip or days <= 0:
            return False
        seen = await self.session.scalar(
            select(KnownLoginAddress.last_seen_at).where(
                KnownLoginAddress.user_id == user_id,
                KnownLoginAddress.ip_hash == self._address_hash(ip),
            )
        )
        return seen is not None and seen > utcnow() - timedelta(days=days)

    async def _remember_address(self, user_id: str, ip: str | None) -> None:
        """Record (or refresh) a successful sign-in's address, in the caller's
        transaction; concurrent sign-ins from one address meet in an upsert."""
        if not ip or self.settings.login_known_address_days <= 0:
            return
        now = utcnow()
        values = {"user_id": user_id, "ip_hash": self._address_hash(ip), "last_seen_at": now}
        dialect = self.session.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        stmt = insert(KnownLoginAddress).values(**values)
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=["user_id", "ip_hash"], set_={"last_seen_at": now}
            )
        )
        stale = now - timedelta(days=self.settings.login_known_address_days)
        await self.session.execute(
            delete(KnownLoginAddress).where(
                KnownLoginAddress.user_id == user_id, KnownLoginAddress.last_seen_at < stale
            )
        )

    async def _account_failures(
        self, account_key: str, exclude: list[int]
    ) -> tuple[int, datetime | None]:
        """The account's failures within the window (but ``exclude``'s): how many,
        and the newest one's time."""
        since = utcnow() - timedelta(seconds=self.settings.login_failure_window)
        count, newest = (
            await self.session.execute(
                select(func.count(), func.max(LoginFailure.created_at)).where(
                    LoginFailure.kind == "account",
                    LoginFailure.key == account_key,
                    LoginFailure.created_at > since,
                    LoginFailure.id.not_in(exclude),
                )
            )
        ).one()
        if newest is not None and newest.tzinfo is None:  # aggregates skip the column type
            newest = newest.replace(tzinfo=UTC)
        return int(count), newest

    async def _check_lockout(
        self,
        account_key: str,
        ip: str | None,
        *,
        known: bool = False,
        claimed: list[int] | None = None,
    ) -> None:
        """429 when the address has spent its failures (``NEFOS_LOGIN_MAX_FAILURES`` in
        the window, counted from the oldest), or, from an address the account has not
        signed in from, while the account's back-off runs: once its failures reach the
        limit, ``login_backoff_base`` seconds after the newest, doubled with each
        further failure, at most ``login_backoff_max``. ``claimed``: this attempt's
        own rows, already recorded."""
        s = self.settings
        window = timedelta(seconds=s.login_failure_window)
        if ip:
            limit = s.login_max_failures + (1 if claimed else 0)
            count, oldest = (
                await self.session.execute(
                    select(func.count(), func.min(LoginFailure.created_at)).where(
                        LoginFailure.kind == "ip",
                        LoginFailure.key == ip,
                        LoginFailure.created_at > utcnow() - window,
                    )
                )
            ).one()
            if count >= limit:
                if oldest.tzinfo is None:  # aggregate results skip the column type
                    oldest = oldest.replace(tzinfo=UTC)
                retry = math.ceil((oldest + window - utcnow()).total_seconds())
                raise RateLimited(
                    "Too many failed login attempts; try again later",
                    retry_after=max(1, retry),
                    scope="ip",
                )
        if known:
            return
        count, newest = await self._account_failures(account_key, claimed or [])
        beyond = count - s.login_max_failures
        if beyond < 0 or newest is None:
            return
        wait = min(s.login_backoff_base * 2 ** min(beyond, 30), s.login_backoff_max)
        retry = math.ceil((newest + timedelta(seconds=wait) - utcnow()).total_seconds())
        if retry > 0:
            raise RateLimited(
                "Too many failed login attempts for this account; try again later",
                retry_after=retry,
                scope="account",
            )

    async def _claim_attempt(
        self, account_key: str, ip: str | None, *, known: bool = False
    ) -> list[int]:
        """Record this attempt as a failure *before* the password is checked.

        Counting after the insert is what makes the limit hold for parallel guesses
        (a check-then-record would let them all pass the check): only attempts whose
        rows are among the first ``login_max_failures`` of the window see a count
        within the limit. One over the limit takes its rows back and gets 429; a
        successful login takes them back too. Returns the ids of the rows.
        """
        await begin_write(self.session)
        now = utcnow()
        rows = [LoginFailure(kind="account", key=account_key[:320], created_at=now)]
        if ip:
            rows.append(LoginFailure(kind="ip", key=ip, created_at=now))
        self.session.add_all(rows)
        cutoff = now - timedelta(seconds=self.settings.login_failure_window)
        await self.session.execute(delete(LoginFailure).where(LoginFailure.created_at < cutoff))
        await self.session.commit()
        claimed = [row.id for row in rows]
        try:
            await self._check_lockout(account_key, ip, known=known, claimed=claimed)
        except RateLimited:
            await self._release_attempt(claimed)
            raise
        return claimed

    async def _release_attempt(self, claimed: list[int]) -> None:
        await begin_write(self.session)
        await self.session.execute(delete(LoginFailure).where(LoginFailure.id.in_(claimed)))
        await self.session.commit()

    # --- tokens -------------------------------------------------------------
    async def _open_session(self, user: User, client: ClientInfo) -> TokenPair:
        await begin_write(self.session)
        s = self.settings
        auth_session = AuthSession(
            user_id=user.id,
            expires_at=utcnow() + timedelta(seconds=s.refresh_token_ttl),
            ip_address=client.ip,
            user_agent=(client.user_agent or "")[:512] or None,
        )
        self.session.add(auth_session)
        await self.session.flush()
        pair = self._issue(user, auth_session.id)
        await self.session.commit()
        return pair

    def _issue(self, user: User, session_id: str, *, refresh_ttl: int | None = None) -> TokenPair:
        s = self.settings
        refresh_ttl = min(refresh_ttl or s.refresh_token_ttl, s.refresh_token_ttl)
        access = self.core.tokens.issue(
            typ="access",
            user_id=user.id,
            session_id=session_id,
            ttl=min(s.access_token_ttl, refresh_ttl),
        )
        refresh = self.core.tokens.issue(
            typ="refresh", user_id=user.id, session_id=session_id, ttl=refresh_ttl
        )
        self.session.add(
            RefreshToken(
                id=refresh.jti,
                session_id=session_id,
                expires_at=datetime.fromtimestamp(refresh.expires_at, UTC),
            )
        )
        return TokenPair(
            user=user,
            access_token=access.token,
            refresh_token=refresh.token,
            expires_in=min(s.access_token_ttl, refresh_ttl),
            refresh_expires_in=refresh_ttl,
        )

    async def refresh(self, refresh_token: str) -> TokenPair:
        try:
            claims = self.core.tokens.decode(refresh_token, typ="refresh")
        except InvalidToken as exc:
            raise Unauthorized("Invalid refresh token", reason=exc.reason) from None
        now = utcnow()
        await begin_write(self.session)
        spent = await self.session.execute(
            update(RefreshToken)
            .where(
                RefreshToken.id == claims.jti,
                RefreshToken.session_id == claims.sid,
                RefreshToken.used_at.is_(None),
                RefreshToken.expires_at > now,
            )
            .values(used_at=now)
        )
        if spent.rowcount != 1:  # type: ignore[attr-defined]
            known = await self.session.get(RefreshToken, claims.jti)
            if known is not None and known.used_at is not None:
                await self._revoke_sessions(
                    AuthSession.id == known.session_id, reason="refresh_token_reuse"
                )
                await self.session.commit()
                raise Unauthorized(
                    "Refresh token already used; the session has been revoked",
                    reason="refresh_token_reuse",
                )
            await self.session.rollback()
            raise Unauthorized("Invalid refresh token", reason="invalid_token")
        row = (
            await self.session.execute(
                select(AuthSession, User)
                .join(User, User.id == AuthSession.user_id)
                .where(AuthSession.id == claims.sid)
            )
        ).one_or_none()
        if row is None or row[0].revoked_at is not None or not row[1].is_active:
            await self.session.rollback()
            raise Unauthorized("Session revoked", reason="session_revoked")
        # A session lives at most refresh_token_ttl from login: rotation slides the
        # refresh token, never the session, so a stolen family cannot live forever.
        remaining = int((row[0].expires_at - now).total_seconds())
        if remaining <= 0:
            await self.session.rollback()
            raise Unauthorized("Session expired; log in again", reason="session_expired")
        pair = self._issue(row[1], claims.sid, refresh_ttl=remaining)
        await self.session.commit()
        return pair

    async def logout(self, principal: Principal, refresh_token: str | None) -> None:
        """Revoke the caller's session (and the one ``refresh_token`` names, if any)."""
        session_ids = {principal.session_id} if principal.session_id else set()
        if refresh_token:
            try:
                claims = self.core.tokens.decode(refresh_token, typ="refresh")
            except InvalidToken:
                claims = None
            if claims is not None and claims.sub == principal.user_id:
                session_ids.add(claims.sid)
        if not session_ids:
            return
        await begin_write(self.session)
        await self._revoke_sessions(
            AuthSession.id.in_(session_ids),
            AuthSession.user_id == principal.user_id,
            reason="logout",
        )
        await self.session.commit()

    async def list_sessions(
        self, principal: Principal, page: PageParams
    ) -> tuple[Sequence[AuthSession], int]:
        """The caller's live sessions (not revoked, not expired), newest first."""
        return await fetch_page(
            self.session,
            AuthSession,
            AuthSession.user_id == principal.user_id,
            AuthSession.revoked_at.is_(None),
            AuthSession.expires_at > utcnow(),
            order_by=(AuthSession.created_at.desc(), AuthSession.id),
            page=page,
        )

    async def revoke_session(self, principal: Principal, session_id: str) -> AuthSession:
        """End one of the caller's sessions: its access and refresh tokens stop
        working on their next call (the commit empties the principal cache). Another
        user's session, or one already over, is a 404."""
        await begin_write(self.session)
        found = await self.session.get(AuthSession, session_id)
        if (
            found is None
            or found.user_id != principal.user_id
            or found.revoked_at is not None
            or found.expires_at <= utcnow()
        ):
            await self.session.rollback()
            raise NotFound("Session not found", session_id=session_id)
        found.revoked_at = utcnow()
        found.revoked_reason = "revoked"
        await self.session.commit()
        return found

    async def revoke_user_sessions(self, user_id: str, *, reason: str) -> None:
        """Revoke every session of a user. Part of the caller's transaction."""
        await self._revoke_sessions(AuthSession.user_id == user_id, reason=reason)

    async def _revoke_sessions(self, *where: object, reason: str) -> None:
        await self.session.execute(
            update(AuthSession)
            .where(*where, AuthSession.revoked_at.is_(None))  # type: ignore[arg-type]
            .values(revoked_at=utcnow(), revoked_reason=reason)
        )

    async def change_password(
        self,
        principal: Principal,
        *,
        current_password: str,
        new_password: str,
        revoke_api_keys: bool,
        client: ClientInfo,
    ) -> TokenPair:
        user = await self.session.get(User, principal.user_id)
        if user is None:
            raise Unauthorized("This account no longer exists")
        await self.verify_current_password(user, current_password, ip=client.ip)
        self._check_password_strength(new_password, email=user.email)
        new_hash = self.core.passwords.hash(new_password)
        await begin_write(self.session)
        fresh = await self.session.get(User, user.id, populate_existing=True)
        if fresh is None:
            raise Unauthorized("This account no longer exists")
        user = fresh
        user.password_hash = new_hash
        user.password_changed_at = utcnow()
        await self.revoke_user_sessions(user.id, reason="password_changed")
        if revoke_api_keys:
            await self.session.execute(
                update(ApiKey)
                .where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        await self.session.commit()
        return await self._open_session(user, client)

    async def verify_current_password(self, user: User, password: str, *, ip: str | None) -> None:
        """Check a signed-in user's password (to change it, or the e-mail).

        Counted and limited like logins, so a stolen access token cannot be used
        to guess the password without limit.
        """
        account_key = user.email.lower()
        await self._check_lockout(account_key, ip)
        claimed = await self._claim_attempt(account_key, ip)
        if not self.core.passwords.verify(user.password_hash, password):
            raise Unauthorized("Current password is incorrect")
        await self._release_attempt(claimed)

    # --- authenticating a request -------------------------------------------
    async def authenticate_jwt(self, token: str) -> Principal:
        try:
            claims = self.core.tokens.decode(token, typ="access")
        except InvalidToken as exc:
            message = "Token has expired" if exc.reason == "token_expired" else "Invalid token"
            raise Unauthorized(message, reason=exc.reason) from None
        principal = await self.session_principal(claims.sub, claims.sid)
        principal.expires_at = datetime.fromtimestamp(claims.exp, UTC)
        return principal

    async def session_principal(self, user_id: str, session_id: str) -> Principal:
        """The caller of a live session (its access token already verified)."""
        row = (
            await self.session.execute(
                _USER_AND_SESSION, {"user_id": user_id, "session_id": session_id}
            )
        ).one_or_none()
        if row is None:
            raise Unauthorized("Invalid token", reason="invalid_token")
        user, revoked_at = row
        if revoked_at is not None:
            raise Unauthorized("Session has been revoked", reason="session_revoked")
        if not user.is_active:
            raise Unauthorized("This account is disabled", reason="account_disabled")
        return Principal(user=UserSnapshot.of(user), session_id=session_id)

    async def _live_key(self, raw: str) -> ApiKey | None:
        if not looks_like_api_key(raw) or len(raw) > 200:
            return None
        key = await self.session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_secret(raw)))
        return _live(key)

    async def key_principal(self, key_hash: str) -> tuple[Principal, datetime | None]:
        """The caller of a live API key (by its hash), and when the key was last used."""
        key = _live(await self.session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash)))
        if key is None:
            raise Unauthorized("Invalid API key", reason="invalid_api_key")
        return await self._key_principal(key), key.last_used_at

    async def authenticate_api_key(self, raw: str) -> Principal:
        key = await self._live_key(raw)
        if key is None:
            raise Unauthorized("Invalid API key", reason="invalid_api_key")
        return await self._key_principal(key)

    async def _key_principal(self, key: ApiKey) -> Principal:
        user = await self.session.get(User, key.user_id)
        if user is None or not user.is_active:
            raise Unauthorized("This account is disabled", reason="account_disabled")
        if key.organisation_id is not None and not user.is_admin:
            probe = Principal(user=UserSnapshot.of(user), key_organisation_id=key.organisation_id)
            chain = await org_chain(self.session, key.organisation_id)
            if await effective_role(self.session, probe, chain) is None:
                raise Unauthorized(
                    "This API key's organisation is no longer accessible",
                    reason="invalid_api_key",
                )
        return Principal(
            user=UserSnapshot.of(user),
            api_key_id=key.id,
            scopes=frozenset(key.scopes),
            key_organisation_id=key.organisation_id,
            key_expires_at=key.expires_at,
        )

    async def authenticate(self, credential: str, *, kind: str) -> Principal:
        """``kind``: "bearer" (JWT or API key), "jwt" or "api_key". Reads the database
        every time (requests go through ``services.authn``'s cache instead); the read
        is rolled back, not committed."""
        try:
            if kind == "api_key" or (kind == "bearer" and looks_like_api_key(credential)):
                return await self.authenticate_api_key(credential)
            return await self.authenticate_jwt(credential)
        finally:
            if self.session.in_transaction():
                await self.session.rollback()

    async def authenticate_grant(self, grant: Grant) -> Principal:
        """The principal a grant (a redeemed WebSocket ticket) stands for, checked as
        its credential would be: the session or key still live, the user active, the
        JWT not past its expiry."""
        try:
            if grant.credential_expires_at is not None and grant.credential_expires_at <= utcnow():
                raise Unauthorized("Token has expired", reason="token_expired")
            if grant.api_key_id is not None:
                key = _live(await self.session.get(ApiKey, grant.api_key_id))
                if key is None or key.user_id != grant.user_id:
                    raise Unauthorized("Invalid API key", reason="invalid_api_key")
                return await self._key_principal(key)
            if grant.session_id is None:
                raise Unauthorized("Invalid ticket", reason="invalid_ticket")
            principal = await self.session_principal(grant.user_id, grant.session_id)
            principal.expires_at = grant.credential_expires_at
            return principal
        finally:
            if self.session.in_transaction():
                await self.session.rollback()


@dataclass(frozen=True)
class Grant:
    """A credential named by reference rather than by its secret: the session or API
    key of a user, as a WebSocket ticket records it (``nefos.services.ws_tickets``)."""

    user_id: str
    session_id: str | None = None
    api_key_id: str | None = None
    credential_expires_at: datetime | None = None

    @classmethod
    def of(cls, principal: Principal) -> Grant:
        return cls(
            user_id=principal.user_id,
            session_id=None if principal.api_key_id else principal.session_id,
            api_key_id=principal.api_key_id,
            credential_expires_at=principal.expires_at or principal.key_expires_at,
        )


def _live(key: ApiKey | None) -> ApiKey | None:
    """The key if it is neither revoked nor expired."""
    if key is None or key.revoked_at is not None:
        return None
    if key.expires_at is not None and key.expires_at <= utcnow():
        return None
    return key
