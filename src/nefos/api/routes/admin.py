from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from nefos.api.deps import Access, CoreDep, ObjectId, PageDep, SessionDep, authorize
from nefos.domain.access import Permission
from nefos.gateway.envelope import ok, page
from nefos.schemas.common import Envelope, Page
from nefos.schemas.identity import AdminUserCreate, AdminUserUpdate, UserPublic
from nefos.services.auth import AuthService
from nefos.services.users import UserService

router = APIRouter(prefix="/admin", tags=["admin"])
ADMIN = Permission.PLATFORM_ADMIN


@router.get("/users", response_model=Envelope[Page[UserPublic]])
async def list_users(
    core: CoreDep, session: SessionDep, params: PageDep, _: Access = authorize(ADMIN)
) -> Response:
    rows, total = await UserService(core, session).list_users(params)
    return ok(page([UserPublic.model_validate(u) for u in rows], total, params))


@router.post("/users", status_code=201, response_model=Envelope[UserPublic])
async def create_user(
    body: AdminUserCreate, core: CoreDep, session: SessionDep, _: Access = authorize(ADMIN)
) -> Response:
    user = await AuthService(core, session).create_user(
        email=body.email,
        password=body.password,
        name=body.name,
        username=body.username,
        is_admin=body.is_admin,
    )
    return ok(UserPublic.model_validate(user), 201)


@router.get("/users/{user_id}", response_model=Envelope[UserPublic])
async def get_user(
    user_id: ObjectId, core: CoreDep, session: SessionDep, _: Access = authorize(ADMIN)
) -> Response:
    return ok(UserPublic.model_validate(await UserService(core, session).get_user(user_id)))


@router.patch("/users/{user_id}", response_model=Envelope[UserPublic])
async def update_user(
    user_id: ObjectId,
    body: AdminUserUpdate,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(ADMIN),
) -> Response:
    """Disable (`is_active: false`) ends the user's sessions and keys at once."""
    user = await UserService(core, session).admin_update(access.principal, user_id, body)
    return ok(UserPublic.model_validate(user))
