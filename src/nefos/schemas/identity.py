"""Users, sessions and API keys on the wire."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from nefos.schemas.common import Email, Id, Name, Public, Request, ShortName, Username

Password = Annotated[str, Field(min_length=1, max_length=1024)]
NewPassword = Annotated[str, Field(min_length=8, max_length=1024)]


class UserPublic(Public):
    id: str
    email: str
    username: str | None
    name: str
    is_active: bool
    is_admin: bool
    default_project_id: str | None
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None = None


class RegisterRequest(Request):
    email: Email
    password: NewPassword
    name: Name | None = None
    username: Username | None = None


class LoginRequest(Request):
    """Log in by e-mail (seed 004) or username (seed 003); ``api_key`` as in seed 001."""

    email: Email | None = None
    username: Annotated[str, Field(min_length=1, max_length=320)] | None = None
    password: Password
    api_key: Annotated[str, Field(max_length=200)] | None = None

    @model_validator(mode="after")
    def _one_identifier(self) -> LoginRequest:
        if not self.email and not self.username:
            raise ValueError("email or username is required")
        return self


class RefreshRequest(Request):
    refresh_token: Annotated[str, Field(min_length=1, max_length=4096)]


class LogoutRequest(Request):
    refresh_token: Annotated[str, Field(max_length=4096)] | None = None


class AuthResult(Public):
    """``token`` and ``access_token`` are the same JWT (seed 004 and seed 003 names)."""

    user: UserPublic
    token: str
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    refresh_expires_in: int


class OAuth2Token(Public):
    """RFC 6749 section 5.1 token response of ``POST /auth/token``."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    refresh_token: str


class ProfileUpdate(Request):
    name: Name | None = None
    username: Username | None = None
    email: Email | None = None
    current_password: Password | None = Field(
        None, description="Required to change the e-mail address."
    )


class UserSettings(Public):
    theme: Literal["light", "dark", "system"] = "system"
    language: Annotated[str, Field(min_length=2, max_length=16)] = "en"
    timezone: Annotated[str, Field(max_length=64)] = "UTC"
    email_notifications: bool = True
    default_project_id: str | None = None


class UserSettingsUpdate(Request):
    theme: Literal["light", "dark", "system"] | None = None
    language: Annotated[str, Field(min_length=2, max_length=16)] | None = None
    timezone: Annotated[str, Field(max_length=64)] | None = None
    email_notifications: bool | None = None
    default_project_id: Id | None = None

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone") from None
        return v


class PasswordChange(Request):
    current_password: Password
    new_password: NewPassword
    revoke_api_keys: bool = Field(False, description="Also revoke every API key of the account.")


class AdminUserCreate(Request):
    email: Email
    password: NewPassword
    name: Name | None = None
    username: Username | None = None
    is_admin: bool = False


class AdminUserUpdate(Request):
    is_active: bool | None = None
    is_admin: bool | None = None
    name: Name | None = None


class ApiKeyCreate(Request):
    name: ShortName
    scopes: list[Annotated[str, Field(max_length=32)]] = Field(
        min_length=1,
        max_length=32,
        examples=[["compute:read", "compute:write"]],
        description="Scopes such as `compute:read`; `*` grants every scope you may grant "
        "(`admin` only for platform admins).",
    )
    expires_in_days: Annotated[int, Field(ge=1, le=3650)] | None = None
    organisation_id: Id | None = Field(
        None, description="Bind the key to one organisation: it can reach no other."
    )


class ApiKeyPublic(Public):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    organisation_id: str | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="The secret. Shown only in this response.")


class SessionPublic(Public):
    """One sign-in of the caller (a browser tab, the CLI, a script's login): where
    it came from and until when its refresh token may renew it."""

    id: str
    created_at: datetime
    expires_at: datetime
    ip_address: str | None
    user_agent: str | None
    revoked_at: datetime | None = None
    current: bool = Field(False, description="The session this request was made with.")
