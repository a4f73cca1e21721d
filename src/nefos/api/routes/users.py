from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from nefos.api.deps import Access, ClientDep, CoreDep, SessionDep, authorize
from nefos.api.routes.auth import AuthEnvelope, _tokens
from nefos.domain.access import Permission
from nefos.gateway.envelope import ok
from nefos.schemas.common import Envelope
from nefos.schemas.identity import (
    PasswordChange,
    ProfileUpdate,
    UserPublic,
    UserSettings,
    UserSettingsUpdate,
)
from nefos.services.auth import AuthService
from nefos.services.users import UserService

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/profile", response_model=Envelope[UserPublic])
async def get_profile(access: Access = authorize(Permission.ACCOUNT_READ)) -> Response:
    return ok(UserPublic.model_validate(access.principal.user))


@router.put("/profile", response_model=Envelope[UserPublic])
async def update_profile(
    body: ProfileUpdate,
    core: CoreDep,
    session: SessionDep,
    client: ClientDep,
    access: Access = authorize(Permission.ACCOUNT_WRITE),
) -> Response:
    user = await UserService(core, session).update_profile(access.principal, body, ip=client.ip)
    return ok(UserPublic.model_validate(user))


@router.get("/settings", response_model=Envelope[UserSettings])
async def get_settings(access: Access = authorize(Permission.ACCOUNT_READ)) -> Response:
    return ok(UserService.settings_of(access.principal.user))


@router.put("/settings", response_model=Envelope[UserSettings])
async def update_settings(
    body: UserSettingsUpdate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.ACCOUNT_WRITE),
) -> Response:
    return ok(await UserService(core, session).update_settings(access.principal, body))


@router.put("/password", response_model=AuthEnvelope)
async def change_password(
    body: PasswordChange,
    core: CoreDep,
    session: SessionDep,
    client: ClientDep,
    access: Access = authorize(Permission.ACCOUNT_WRITE),
) -> Response:
    """Change the password. Every session ends; a new token pair is returned."""
    pair = await AuthService(core, session).change_password(
        access.principal,
        current_password=body.current_password,
        new_password=body.new_password,
        revoke_api_keys=body.revoke_api_keys,
        client=client,
    )
    return _tokens(pair)
