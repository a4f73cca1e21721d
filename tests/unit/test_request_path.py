"""The request path's pure parts: path aliases, prefix groups, verified tokens once."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi import APIRouter
from starlette.routing import Match

from nefos.api.routing import PrefixGroup, flat_routes, grouped
from nefos.gateway.paths import PathMiddleware
from nefos.security.tokens import InvalidToken, TokenCodec


async def _noop(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    return None


PATHS = PathMiddleware(_noop, prefix="/api/v1", alias="/api", roots=("/health", "/ws"))


@pytest.mark.parametrize(
    ("given", "served"),
    [
        ("/api/v1/auth/me", "/api/v1/auth/me"),
        ("/api/auth/me", "/api/v1/auth/me"),
        ("/api/auth/me/", "/api/v1/auth/me"),
        ("/api", "/api/v1"),
        ("/api/v1", "/api/v1"),
        ("/health", "/api/v1/health"),
        ("/health/", "/api/v1/health"),
        ("/ws", "/api/v1/ws"),
        ("/ws/ticket", "/api/v1/ws/ticket"),
        ("/api/health", "/api/v1/health"),
        # Not an alias: left as it is (and answered 404 by the router).
        ("/apix/auth/me", "/apix/auth/me"),
        ("/healthz", "/healthz"),
        ("/wss", "/wss"),
        ("/docs", "/docs"),
        ("/", "/"),
    ],
)
def test_paths_are_made_canonical(given: str, served: str) -> None:
    assert PATHS.canonical(given) == served


def _routers() -> list[APIRouter]:
    a = APIRouter(prefix="/things")

    @a.get("")
    async def list_things() -> None: ...

    @a.get("/{thing_id}")
    async def get_thing(thing_id: str) -> None: ...

    @a.post("/{thing_id}")
    async def post_thing(thing_id: str) -> None: ...

    b = APIRouter(prefix="/thingies")

    @b.get("/x")
    async def thingies() -> None: ...

    return [a, b]


def test_routes_are_grouped_by_their_first_segment() -> None:
    routes = flat_routes(_routers(), "/api/v1", {})
    groups = grouped(routes, "/api/v1")
    assert [g.prefix for g in groups if isinstance(g, PrefixGroup)] == [
        "/api/v1/things",
        "/api/v1/thingies",
    ]
    things, thingies = groups

    def scope(method: str, path: str) -> dict[str, Any]:
        return {"type": "http", "method": method, "path": path, "root_path": ""}

    match, child = things.matches(scope("GET", "/api/v1/things/7"))
    assert match is Match.FULL and child["path_params"] == {"thing_id": "7"}
    assert child["route"].name == "get_thing"
    # A prefix is a whole segment: /thingies is not under /things.
    assert things.matches(scope("GET", "/api/v1/thingies/x"))[0] is Match.NONE
    assert thingies.matches(scope("GET", "/api/v1/thingies/x"))[0] is Match.FULL
    # The path known, the method not: partial (the route answers 405).
    match, child = things.matches(scope("DELETE", "/api/v1/things/7"))
    assert match is Match.PARTIAL and child["route"].name == "get_thing"


def test_a_route_without_a_literal_first_segment_is_refused() -> None:
    r = APIRouter()

    @r.get("/{anything}")
    async def anything(anything: str) -> None: ...

    with pytest.raises(ValueError, match="literal first segment"):
        grouped(flat_routes([r], "/api/v1", {}), "/api/v1")


def test_a_verified_token_is_not_verified_again_but_still_expires() -> None:
    codec = TokenCodec(secret="s" * 40, issuer="nefos", audience="nefos-api")
    token = codec.issue(typ="access", user_id="u", session_id="s", ttl=60).token
    first = codec.decode(token, typ="access")
    assert codec.decode(token, typ="access") is first  # kept, not decoded again
    # A refresh token is never taken for an access token, kept or not.
    with pytest.raises(InvalidToken):
        codec.decode(token, typ="refresh")
    # Time passes past its expiry (and the leeway): the kept claims do not help.
    codec._verified[token] = type(first)(
        sub=first.sub,
        sid=first.sid,
        jti=first.jti,
        typ=first.typ,
        iat=first.iat,
        exp=int(time.time()) - 10,
    )
    with pytest.raises(InvalidToken) as caught:
        codec.decode(token, typ="access")
    assert caught.value.reason == "token_expired"
    # A token altered by one character is verified (and refused), never looked up.
    forged = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(InvalidToken):
        codec.decode(forged, typ="access")
