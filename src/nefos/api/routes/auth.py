from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response

from nefos.api.deps import (
    Access,
    ClientDep,
    CoreDep,
    ObjectId,
    PageDep,
    Public,
    SessionDep,
    authorize,
)
from nefos.domain.access import Permission
from nefos.gateway.envelope import ok, page
from nefos.schemas.common import Envelope, Message, Page
from nefos.schemas.identity import (
    AuthResult,
    LoginRequest,
    LogoutRequest,
    RefreshRequest,
    RegisterRequest,
    SessionPublic,
    UserPublic,
)
from nefos.services.auth import AuthService, TokenPair

router = APIRouter(prefix="/auth", tags=["auth"])


class AuthEnvelope(Envelope[AuthResult]):
    """The envelope, plus RFC 6749's fields at the top level for OAuth2 and seed-003 clients."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str


def _tokens(pair: TokenPair, status_code: int = 200) -> Response:
    result = AuthResult(
        user=UserPublic.model_validate(pair.user),
        token=pair.access_token,
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
        refresh_expires_in=pair.refresh_expires_in,
    )
    return ok(
        result,
        status_code,
        headers={"Cache-Control": "no-store"},
        access_token=pair.access_token,
        token_type="bearer",
        expires_in=pair.expires_in,
        refresh_token=pair.refresh_token,
    )


@router.post("/register", status_code=201, response_model=AuthEnvelope, dependencies=[Public])
async def register(
    body: RegisterRequest, core: CoreDep, session: SessionDep, client: ClientDep
) -> Response:
    """Create an account with a personal organisation and a default project."""
    return _tokens(await AuthService(core, session).register(body, client), 201)


@router.post("/login", response_model=AuthEnvelope, dependencies=[Public])
async def login(
    body: LoginRequest, core: CoreDep, session: SessionDep, client: ClientDep
) -> Response:
    """Log in with `email` or `username` and `password` (and optionally an `api_key`)."""
    return _tokens(await AuthService(core, session).login(body, client))


@router.post("/token", response_model=AuthEnvelope, dependencies=[Public])
async def token(
    username: Annotated[str, Form(min_length=1, max_length=320)],
    password: Annotated[str, Form(min_length=1, max_length=1024)],
    core: CoreDep,
    session: SessionDep,
    client: ClientDep,
) -> Response:
    """OAuth2 password grant (form-encoded), for the Authorize button of /docs."""
    try:
        body = LoginRequest(username=username, password=password)
    except ValidationError as exc:  # the form checks lengths only; the model also bans NUL
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None
    return _tokens(await AuthService(core, session).login(body, client))


@router.post("/refresh", response_model=AuthEnvelope, dependencies=[Public])
async def refresh(body: RefreshRequest, core: CoreDep, session: SessionDep) -> Response:
    """Spend a refresh token for a new pair. Replaying a spent one revokes the session."""
    return _tokens(await AuthService(core, session).refresh(body.refresh_token))


@router.post("/logout", response_model=Envelope[Message])
async def logout(
    core: CoreDep,
    session: SessionDep,
    body: LogoutRequest | None = None,
    access: Access = authorize(Permission.ACCOUNT_READ),
) -> Response:
    """End the current session: its access and refresh tokens stop working."""
    await AuthService(core, session).logout(access.principal, body.refresh_token if body else None)
    return ok(Message(message="Logged out"))


@router.get("/me", response_model=Envelope[UserPublic])
async def me(access: Access = authorize(Permission.ACCOUNT_READ)) -> Response:
    return ok(UserPublic.model_validate(access.principal.user))


def _session(row: object, access: Access) -> SessionPublic:
    public = SessionPublic.model_validate(row)
    return public.model_copy(update={"current": public.id == access.principal.session_id})


@router.get("/sessions", response_model=Envelope[Page[SessionPublic]])
async def list_sessions(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    access: Access = authorize(Permission.ACCOUNT_READ),
) -> Response:
    """Your live sessions (sign-ins not ended, not expired), newest first; `current`
    marks the one this request was made with."""
    rows, total = await AuthService(core, session).list_sessions(access.principal, params)
    return ok(page([_session(r, access) for r in rows], total, params))


@router.delete("/sessions/{session_id}", response_model=Envelope[SessionPublic])
async def revoke_session(
    session_id: ObjectId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.ACCOUNT_WRITE),
) -> Response:
    """End one of your sessions (a lost laptop's): its tokens stop working at once.
    Ending the current one signs this client out."""
    revoked = await AuthService(core, session).revoke_session(access.principal, session_id)
    return ok(_session(revoked, access))
