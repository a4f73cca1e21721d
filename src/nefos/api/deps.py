"""Request dependencies: the database session, the caller, paging and access.

Every route names its access rule with exactly one of:

* ``Authorize(permission, on=...)``: authenticated, the key's scope covers the
  permission, and (with ``on``) the caller's role in the organisation owning the
  path's target grants it. A target the caller cannot see is 404, as a missing one.
* ``Public``: no credentials needed (login, registration, health, ...).

``tests/api/test_access_matrix.py`` walks every route and fails on one with neither.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Receive, Scope, Send

from nefos.db.models import Organisation, Project
from nefos.domain.access import Permission, Role
from nefos.domain.errors import Forbidden, Unauthorized, ValidationFailed
from nefos.domain.paging import MAX_CURSOR_CHARS, CursorCodec, PageParams
from nefos.gateway.client import client_ip
from nefos.services.auth import ClientInfo
from nefos.services.authn import Authenticator, Kind
from nefos.services.billing import resolve_org
from nefos.services.core import Core
from nefos.services.operations import sees_engine_messages
from nefos.services.principal import Principal, authorize_org, authorize_project

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
#: Free text of a query (a search, a category): no control character, so no NUL byte
#: ever reaches the database (PostgreSQL refuses one in text: a 500, not a 422).
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"
_ID = re.compile(ID_PATTERN)


# Dependencies are `async def`: FastAPI runs a plain `def` one in a worker thread,
# which costs a thread hop (and a wait for the GIL) on every request.
async def get_core(request: Request) -> Core:
    return request.app.state.core  # type: ignore[no-any-return]


#: Where the request's session is kept in the ASGI scope (``SessionMiddleware``).
SESSION = "nefos.session"


async def get_session(request: Request) -> AsyncSession:
    """The request's one session, made on first use. It holds no connection until its
    first statement; ``SessionMiddleware`` closes it when the request is over (a plain
    function, not a generator dependency: FastAPI's exit stack around one costs more
    than a whole cached request)."""
    scope = request.scope
    session: AsyncSession | None = scope.get(SESSION)
    if session is None:
        core: Core = request.app.state.core
        session = scope[SESSION] = core.db.sessionmaker()
    return session


class SessionMiddleware:
    """Closes the request's session, if one was made and used, once the app is done."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            session: AsyncSession | None = scope.pop(SESSION, None)
            if session is not None and (
                session.in_transaction() or session.sync_session.identity_map
            ):
                await session.close()


async def _calls_written(request: Request) -> None:
    """Every gateway call this process answered is in the database (they are written
    in groups: nefos.billing.calllog). Before the request's session reads anything."""
    await request.app.state.core.calls.flush()


#: On a route that reads the gateway's calls: its caller sees its own calls at once.
CallsWritten = Depends(_calls_written)

CoreDep = Annotated[Core, Depends(get_core)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]

# The ways in, as /docs shows them (and its Authorize button uses). They are not
# dependencies: ``get_principal`` reads the headers itself, and the OpenAPI document
# names these schemes on every route that needs credentials (``security_schemes``).
_bearer = OAuth2PasswordBearer(
    tokenUrl="/api/v1/auth/token",
    auto_error=False,
    description="A JWT from /auth/login, or an API key (`nfs_...`).",
)
_x_auth_token = APIKeyHeader(name="X-Auth-Token", auto_error=False, description="A JWT.")
_x_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")
SECURITY_SCHEMES = (_bearer, _x_auth_token, _x_api_key)


async def get_principal(request: Request) -> Principal:
    """The caller, from ``Authorization: Bearer`` (a JWT or an API key),
    ``X-Auth-Token`` (a JWT) or ``X-API-Key``, in that order."""
    headers = request.headers
    authenticator: Authenticator = request.app.state.authenticator
    authorization = headers.get("authorization")
    bearer = None
    if authorization is not None:
        scheme, _, bearer = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthorized("Use 'Authorization: Bearer <token>'")
        bearer = bearer.strip()
    credential: str
    kind: Kind
    if bearer:
        credential, kind = bearer, "bearer"
    elif x_auth_token := headers.get("x-auth-token"):
        credential, kind = x_auth_token, "jwt"
    elif x_api_key := headers.get("x-api-key"):
        credential, kind = x_api_key, "api_key"
    else:
        raise Unauthorized("Authentication required")
    session = await get_session(request)
    principal = await authenticator.authenticate(credential, kind=kind, session=session)
    # The verified caller, for the request log (nefos.gateway.requestlog).
    request.state.principal = principal
    # Whether error bodies may carry an engine's raw text (api/errors.py).
    request.state.engine_messages = sees_engine_messages(principal)
    return principal


def needs_credentials(dependant: Any) -> bool:
    """Whether a route's dependencies include the caller (for its OpenAPI security)."""
    return dependant.call is get_principal or any(
        needs_credentials(d) for d in dependant.dependencies
    )


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def client_info(request: Request) -> ClientInfo:
    core: Core = request.app.state.core
    ip = client_ip(request.scope, core.settings.forwarded_allow_ips)
    return ClientInfo(ip=ip, user_agent=request.headers.get("user-agent"))


ClientDep = Annotated[ClientInfo, Depends(client_info)]


@dataclass
class Access:
    """What ``Authorize`` established: who, and the target it checked."""

    principal: Principal
    session: AsyncSession
    permission: Permission
    role: Role | None = None
    organisation: Organisation | None = None
    project: Project | None = None
    #: The request's state, where the request log reads the organisation it counts under.
    state: Any = None

    @property
    def target_org(self) -> Organisation:
        assert self.organisation is not None, "route is not Authorize(on='org')"
        return self.organisation

    @property
    def target_project(self) -> Project:
        assert self.project is not None, "route is not Authorize(on='project')"
        return self.project

    @property
    def target_role(self) -> Role:
        assert self.role is not None, "route has no target"
        return self.role

    async def check_org(self, org_id: str) -> tuple[Organisation, Role]:
        """Apply this route's permission to an organisation named in the body."""
        org, role = await authorize_org(self.session, self.principal, org_id, self.permission)
        self.log_under(org.id)
        return org, role

    async def org(
        self,
        org_id: str | None,
        permission: Permission,
        *,
        missing: tuple[str, str] | None = None,
    ) -> Organisation:
        """The organisation a route acts for, named by the query, a header or the body
        (none: the caller's default), checked against ``permission``; with ``missing``
        (kind, id), one the caller may not see reads as that object not found. The
        request is logged under it."""
        org, _ = await resolve_org(
            self.session, self.principal, org_id, permission, missing=missing
        )
        self.log_under(org.id)
        return org

    def log_under(self, org_id: str) -> None:
        """Count this request under ``org_id`` in the request log (and its analytics)."""
        if self.state is not None:
            self.state.organisation_id = org_id


def _path_id(request: Request, name: str) -> str:
    """The target's id from the path. Dependencies run before FastAPI validates the
    path, so the route's pattern is applied here (a NUL byte must not reach the database)."""
    value: str = request.path_params[name]
    if not _ID.fullmatch(value):
        raise RequestValidationError(
            [
                {
                    "type": "string_pattern_mismatch",
                    "loc": ("path", name),
                    "msg": f"String should match pattern '{ID_PATTERN}'",
                    "input": value,
                }
            ]
        )
    return value


class Authorize:
    """Dependency: the route's permission, checked against its path target."""

    def __init__(
        self, permission: Permission, *, on: Literal["org", "project"] | None = None
    ) -> None:
        self.permission = permission
        self.on = on

    async def __call__(
        self, request: Request, principal: PrincipalDep, session: SessionDep
    ) -> Access:
        access = Access(
            principal=principal, session=session, permission=self.permission, state=request.state
        )
        if self.permission is Permission.PLATFORM_ADMIN:
            principal.require_scope(self.permission)
            if not principal.is_admin:
                raise Forbidden("Platform administrators only")
        elif self.on == "org":
            access.organisation, access.role = await authorize_org(
                session, principal, _path_id(request, "org_id"), self.permission
            )
            access.log_under(access.organisation.id)
        elif self.on == "project":
            access.project, access.role = await authorize_project(
                session, principal, _path_id(request, "project_id"), self.permission
            )
            access.log_under(access.project.organisation_id)
        else:
            principal.require_scope(self.permission)
        return access

    def __repr__(self) -> str:
        return f"Authorize({self.permission.value!r}, on={self.on!r})"


def authorize(permission: Permission, *, on: Literal["org", "project"] | None = None) -> Any:
    return Depends(Authorize(permission, on=on))


class PublicMarker:
    """Dependency marking a route that needs no credentials."""

    async def __call__(self) -> None:
        return None

    def __repr__(self) -> str:
        return "Public"


Public = Depends(PublicMarker())


_API_PREFIX = re.compile(r"^/api(?:/v\d+)?(?=/|$)")
_PAGING_PARAMS = frozenset({"page", "skip", "limit", "cursor"})


def list_scope(request: Request) -> str:
    """What a cursor is bound to: the list (its path, the same under ``/api`` and
    ``/api/v1``) and its filters (every query parameter but the paging ones)."""
    path = _API_PREFIX.sub("", request.url.path) or "/"
    filters = sorted(
        (k, v) for k, v in request.query_params.multi_items() if k not in _PAGING_PARAMS
    )
    return "\n".join([path, *(f"{k}={v}" for k, v in filters)])


async def page_params(
    request: Request,
    page: Annotated[int | None, Query(ge=1, le=10_000_000, description="Page, from 1.")] = None,
    skip: Annotated[
        int | None, Query(ge=0, le=10**12, description="Items to skip (instead of page).")
    ] = None,
    limit: Annotated[
        int | None, Query(ge=1, le=10**9, description="Items per page (default 20, max 500).")
    ] = None,
    cursor: Annotated[
        str | None,
        Query(
            max_length=MAX_CURSOR_CHARS,
            description="Keyset paging: the `next_cursor` of the previous page (instead of "
            "`page`/`skip`). Opaque; valid for this list with the same filters.",
        ),
    ] = None,
) -> PageParams:
    settings = request.app.state.core.settings
    size = min(limit or settings.page_default_limit, settings.page_max_limit)
    codec = CursorCodec.for_list(settings.jwt_secret, list_scope(request))
    if cursor is not None:
        if page is not None or skip is not None:
            raise ValidationFailed(
                "Give either a cursor or page/skip, not both",
                cursor="cannot be combined with page or skip",
            )
        return PageParams(offset=0, limit=size, after=codec.decode(cursor), cursors=codec)
    if skip is not None:
        return PageParams(offset=skip, limit=size, cursors=codec)
    return PageParams(offset=((page or 1) - 1) * size, limit=size, cursors=codec)


PageDep = Annotated[PageParams, Depends(page_params)]

OrgId = Annotated[str, Path(pattern=ID_PATTERN, description="Organisation id.")]
ProjectId = Annotated[str, Path(pattern=ID_PATTERN, description="Project id.")]
ObjectId = Annotated[str, Path(pattern=ID_PATTERN)]


F = TypeVar("F", bound=Callable[..., Any])


def deprecated_route(sunset: datetime) -> Callable[[F], F]:
    """Mark an endpoint deprecated: it answers with Deprecation and Sunset headers."""
    value = sunset.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")

    def mark(fn: F) -> F:
        fn.__nefos_sunset__ = value  # type: ignore[attr-defined]
        return fn

    return mark


async def project_hint(
    project_id: Annotated[
        str | None,
        Query(pattern=ID_PATTERN, description="Project to act in (default: your default project)."),
    ] = None,
    x_project_id: Annotated[
        str | None,
        Header(alias="X-Project-ID", pattern=ID_PATTERN, description="Project to act in."),
    ] = None,
) -> str | None:
    """The project a request names in its query or ``X-Project-ID`` (the query wins)."""
    return project_id or x_project_id


ProjectHint = Annotated[str | None, Depends(project_hint)]


async def org_hint(
    organisation_id: Annotated[
        str | None,
        Query(
            pattern=ID_PATTERN,
            description="Organisation to act for (default: your default project's).",
        ),
    ] = None,
    x_organisation_id: Annotated[
        str | None,
        Header(alias="X-Organisation-ID", pattern=ID_PATTERN, description="Organisation."),
    ] = None,
) -> str | None:
    """The organisation a billing request names (query, else ``X-Organisation-ID``)."""
    return organisation_id or x_organisation_id


OrgHint = Annotated[str | None, Depends(org_hint)]
