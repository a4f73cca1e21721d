from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from nefos.api.deps import Access, CoreDep, ObjectId, PageDep, SessionDep, authorize
from nefos.domain.access import Permission
from nefos.gateway.envelope import ok, page
from nefos.schemas.common import Envelope, Page
from nefos.schemas.identity import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic
from nefos.services.api_keys import ApiKeyService

router = APIRouter(prefix="/api-keys", tags=["api-keys"])
MANAGE = Permission.API_KEY_MANAGE


@router.get("", response_model=Envelope[Page[ApiKeyPublic]])
async def list_keys(
    core: CoreDep, session: SessionDep, params: PageDep, access: Access = authorize(MANAGE)
) -> Response:
    rows, total = await ApiKeyService(core, session).list(access.principal, params)
    return ok(page([ApiKeyPublic.model_validate(k) for k in rows], total, params))


@router.post("", status_code=201, response_model=Envelope[ApiKeyCreated])
async def create_key(
    body: ApiKeyCreate, core: CoreDep, session: SessionDep, access: Access = authorize(MANAGE)
) -> Response:
    """Create a key. Its secret is in this answer only; Nefos keeps just a hash."""
    key, raw = await ApiKeyService(core, session).create(access.principal, body)
    created = ApiKeyCreated(**ApiKeyPublic.model_validate(key).model_dump(), key=raw)
    return ok(created, 201, headers={"Cache-Control": "no-store"})


@router.get("/{key_id}", response_model=Envelope[ApiKeyPublic])
async def get_key(
    key_id: ObjectId, core: CoreDep, session: SessionDep, access: Access = authorize(MANAGE)
) -> Response:
    return ok(
        ApiKeyPublic.model_validate(
            await ApiKeyService(core, session).get(access.principal, key_id)
        )
    )


@router.delete("/{key_id}", response_model=Envelope[ApiKeyPublic])
async def revoke_key(
    key_id: ObjectId, core: CoreDep, session: SessionDep, access: Access = authorize(MANAGE)
) -> Response:
    """Revoke a key: it fails from the next call on."""
    key = await ApiKeyService(core, session).revoke(access.principal, key_id)
    return ok(ApiKeyPublic.model_validate(key))
