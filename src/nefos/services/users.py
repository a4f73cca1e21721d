"""Profiles, settings and platform administration of users."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import ApiKey, User
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.access import Permission
from nefos.domain.errors import Conflict, NotFound, Unauthorized
from nefos.domain.paging import PageParams
from nefos.schemas.identity import (
    AdminUserUpdate,
    ProfileUpdate,
    UserSettings,
    UserSettingsUpdate,
)
from nefos.services.auth import AuthService
from nefos.services.core import Core
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal, UserSnapshot, authorize_project


class UserService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    async def _load(self, user_id: str) -> User:
        user = await self.session.get(User, user_id, populate_existing=True)
        if user is None:
            raise NotFound("User not found", user_id=user_id)
        return user

    async def update_profile(
        self, principal: Principal, body: ProfileUpdate, *, ip: str | None
    ) -> User:
        changes = body.model_dump(exclude_unset=True, exclude={"current_password"})
        if changes.get("email") and changes["email"] != principal.user.email:
            if not body.current_password:
                raise Unauthorized("Changing the email requires the current password")
            await AuthService(self.core, self.session).verify_current_password(
                await self._load(principal.user_id), body.current_password, ip=ip
            )
        await begin_write(self.session)
        user = await self._load(principal.user_id)
        if changes.get("email") and changes["email"] != user.email:
            if await self.session.scalar(select(User.id).where(User.email == changes["email"])):
                raise Conflict("A user with this email already exists", email="already registered")
            user.email = changes["email"]
        if changes.get("username") and changes["username"] != user.username:
            taken = await self.session.scalar(
                select(User.id).where(func.lower(User.username) == changes["username"].lower())
            )
            if taken and taken != user.id:
                raise Conflict("This username is taken", username="already taken")
            user.username = changes["username"]
        if changes.get("name"):
            user.name = changes["name"]
        try:
            await self.session.commit()
        except IntegrityError as exc:
            await self.session.rollback()
            raise Conflict("Conflicts with an existing account") from exc
        return user

    @staticmethod
    def settings_of(user: User | UserSnapshot) -> UserSettings:
        data: dict[str, Any] = dict(user.settings or {})
        data["default_project_id"] = user.default_project_id
        return UserSettings.model_validate(data)

    async def update_settings(self, principal: Principal, body: UserSettingsUpdate) -> UserSettings:
        changes = body.model_dump(exclude_unset=True)
        if "default_project_id" in changes and changes["default_project_id"] is not None:
            # Only a project the caller can see may become their default.
            await authorize_project(
                self.session, principal, changes["default_project_id"], Permission.PROJECT_READ
            )
        await begin_write(self.session)
        user = await self._load(principal.user_id)
        if "default_project_id" in changes:
            user.default_project_id = changes.pop("default_project_id")
        merged = {**(user.settings or {}), **{k: v for k, v in changes.items() if v is not None}}
        user.settings = merged
        await self.session.commit()
        return self.settings_of(user)

    # --- platform admin -----------------------------------------------------
    async def list_users(self, page: PageParams) -> tuple[Sequence[User], int]:
        return await fetch_page(self.session, User, order_by=(User.created_at, User.id), page=page)

    async def get_user(self, user_id: str) -> User:
        user = await self.session.get(User, user_id)
        if user is None:
            raise NotFound("User not found", user_id=user_id)
        return user

    async def admin_update(self, actor: Principal, user_id: str, body: AdminUserUpdate) -> User:
        changes = body.model_dump(exclude_unset=True)
        if user_id == actor.user_id and (
            changes.get("is_active") is False or changes.get("is_admin") is False
        ):
            raise Conflict("You cannot disable or demote your own account")
        await begin_write(self.session)
        user = await self._load(user_id)
        for name in ("is_admin", "name"):
            if changes.get(name) is not None:
                setattr(user, name, changes[name])
        if changes.get("is_active") is not None and changes["is_active"] != user.is_active:
            user.is_active = changes["is_active"]
            if not user.is_active:
                auth = AuthService(self.core, self.session)
                await auth.revoke_user_sessions(user.id, reason="account_disabled")
                await self.session.execute(
                    update(ApiKey)
                    .where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
                    .values(revoked_at=utcnow())
                )
        await self.session.commit()
        return user

    async def ensure_admin(self) -> tuple[User, str | None] | None:
        """Create the first platform admin if there is none.

        Returns the user and, when the password was generated, that password (to
        be printed once); None when an admin already exists.
        """
        if await self.session.scalar(select(User.id).where(User.is_admin.is_(True)).limit(1)):
            await self.session.commit()
            return None
        s = self.core.settings
        import secrets

        generated = None if s.admin_password else secrets.token_urlsafe(15)
        password = s.admin_password or generated
        assert password is not None
        auth = AuthService(self.core, self.session)
        existing = await self.session.scalar(select(User).where(User.email == s.admin_email))
        if existing is not None:
            await begin_write(self.session)
            existing = await self._load(existing.id)
            existing.is_admin = True
            await self.session.commit()
            return existing, None
        user = await auth.create_user(
            email=s.admin_email,
            password=password,
            name="Administrator",
            username=s.admin_username,
            is_admin=True,
        )
        return user, generated
