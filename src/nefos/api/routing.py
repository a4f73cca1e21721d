"""Routes registered once, found by their first path segment.

FastAPI's router tries its routes one after the other: with every route served
under ``/api/v1`` and again under ``/api`` it tried about 340 of them, and a route
late in the list cost more to find than to answer. Here each route exists once,
under ``/api/v1``:

* ``/api/...``, ``/health`` and ``/ws`` reach it by a path rewrite
  (``nefos.gateway.paths``), not by a second copy of the route;
* the routes are grouped by the first segment after the prefix
  (``/api/v1/auth``, ``/api/v1/projects``, ...): the router tests one string prefix
  per group, then only that group's handful of routes (``PrefixGroup``).

The OpenAPI document is made from the flat list of routes, so it is the same as
before: it documents ``/api/v1`` only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, APIWebSocketRoute
from fastapi.security.base import SecurityBase
from starlette.routing import BaseRoute, Match, NoMatchFound, compile_path
from starlette.types import Receive, Scope, Send

#: Where the matched route is kept in the scope between ``matches`` and ``handle``.
_ROUTE = "nefos.route"


class PrefixGroup(BaseRoute):
    """The routes under one literal path prefix: tested only when the path has it."""

    def __init__(self, prefix: str, routes: list[BaseRoute]) -> None:
        self.prefix = prefix
        self._below = prefix + "/"
        self.routes = routes

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path: str = scope["path"]
        if path != self.prefix and not path.startswith(self._below):
            return Match.NONE, {}
        partial: Scope | None = None
        for route in self.routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return Match.FULL, {**child, "route": route, _ROUTE: route}
            if match is Match.PARTIAL and partial is None:
                partial = {**child, "route": route, _ROUTE: route}
        if partial is not None:
            return Match.PARTIAL, partial
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        route: BaseRoute = scope[_ROUTE]
        await route.handle(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        for route in self.routes:
            try:
                return route.url_path_for(name, **path_params)
            except NoMatchFound:
                continue
        raise NoMatchFound(name, path_params)

    def __repr__(self) -> str:
        return f"PrefixGroup({self.prefix!r}, {len(self.routes)} routes)"


def _prefixed(route: BaseRoute, prefix: str, responses: dict[int | str, Any]) -> BaseRoute:
    """A copy of ``route`` served under ``prefix``, with the shared error responses
    (the module's router is left as it is: several apps are built from it)."""
    if not isinstance(route, APIRoute | APIWebSocketRoute):
        raise TypeError(f"unexpected route {route!r}")
    clone = copy.copy(route)
    clone.path = prefix + route.path
    clone.path_regex, clone.path_format, clone.param_convertors = compile_path(clone.path)
    if isinstance(clone, APIRoute) and isinstance(route, APIRoute):
        clone.responses = {**responses, **route.responses}
    return clone


def flat_routes(
    routers: Iterable[APIRouter], prefix: str, responses: dict[int | str, Any]
) -> list[BaseRoute]:
    """Every route of ``routers``, in order, under ``prefix``."""
    return [_prefixed(route, prefix, responses) for router in routers for route in router.routes]


def _first_segment(path: str, prefix: str) -> str:
    rest = path[len(prefix) :].lstrip("/")
    return rest.split("/", 1)[0]


def grouped(routes: list[BaseRoute], prefix: str) -> list[BaseRoute]:
    """``routes`` in groups by their first literal segment after ``prefix``, keeping
    the order of the routes within each group (the first match wins, as before). A
    route whose first segment is a parameter would need every group: there is none,
    and one is refused here rather than silently shadowed."""
    groups: dict[str, list[BaseRoute]] = {}
    for route in routes:
        path: str = route.path  # type: ignore[attr-defined]
        segment = _first_segment(path, prefix)
        if not segment or "{" in segment:
            raise ValueError(f"route {path!r} has no literal first segment after {prefix}")
        groups.setdefault(segment, []).append(route)
    return [PrefixGroup(f"{prefix}/{segment}", members) for segment, members in groups.items()]


def walk(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route, with the groups opened."""
    for route in routes:
        if isinstance(route, PrefixGroup):
            yield from route.routes
        else:
            yield route


def install(
    app: FastAPI,
    routes: list[BaseRoute],
    prefix: str,
    *,
    schemes: Sequence[SecurityBase] = (),
    secured: Callable[[Any], bool] = lambda _dependant: False,
) -> None:
    """Serve ``routes`` (already under ``prefix``) in groups, and document them flat:
    the operations whose dependant is ``secured`` name ``schemes`` as their security
    (the credentials are read by a dependency of the app's, not by FastAPI's security
    classes, which would run on every request)."""
    app.router.routes.extend(grouped(routes, prefix))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            flat = list(walk(app.router.routes))
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=flat
            )
            _document_security(schema, flat, schemes, secured)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_security(
    schema: dict[str, Any],
    routes: list[BaseRoute],
    schemes: Sequence[SecurityBase],
    secured: Callable[[Any], bool],
) -> None:
    if not schemes:
        return
    models = {
        s.scheme_name: s.model.model_dump(mode="json", by_alias=True, exclude_none=True)
        for s in schemes
    }
    requirement: list[dict[str, list[str]]] = [{name: []} for name in models]
    schema.setdefault("components", {})["securitySchemes"] = models
    for route in routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        if not secured(route.dependant):
            continue
        operations = schema["paths"].get(route.path_format, {})
        for method in route.methods or ():
            operation = operations.get(method.lower())
            if operation is not None:
                operation["security"] = requirement
