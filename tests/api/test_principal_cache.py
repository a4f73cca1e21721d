"""The cached caller (services.authn): read from no database once known, and forgotten
the moment a commit changes what it holds.

Each invalidation test first makes the caller cached (a request that succeeds, and a
second one that the cache answers), then makes the change through the API, then
checks that the very next request through the same credential sees it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import event, text

from tests.conftest import PASSWORD, Account, join_org

V1 = "/api/v1"


@contextmanager
def identity_reads(app: Any) -> Iterator[list[str]]:
    """The statements that read users, sessions or API keys while the block runs
    (background loops run statements of their own, on other tables)."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        lowered = statement.lower()
        if any(t in lowered for t in ("from users", "join auth_sessions", "from api_keys")):
            seen.append(statement)

    engine = app.state.core.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


async def cached(client: httpx.AsyncClient, app: Any, headers: dict[str, str]) -> None:
    """Make the caller of ``headers`` known, and check the next request reads nothing."""
    assert (await client.get(f"{V1}/auth/me", headers=headers)).status_code == 200
    with identity_reads(app) as reads:
        r = await client.get(f"{V1}/auth/me", headers=headers)
    assert r.status_code == 200, r.text
    assert reads == [], reads


async def api_key(
    client: httpx.AsyncClient, who: Account, scopes: list[str], **extra: Any
) -> dict[str, str]:
    r = await client.post(
        f"{V1}/api-keys", headers=who.headers, json={"name": "k", "scopes": scopes, **extra}
    )
    assert r.status_code == 201, r.text
    return {"X-API-Key": r.json()["data"]["key"], "_id": r.json()["data"]["id"]}


def key_headers(key: dict[str, str]) -> dict[str, str]:
    return {"X-API-Key": key["X-API-Key"]}


def reason(r: httpx.Response) -> str:
    return str(r.json()["error"]["details"].get("reason"))


# --- the fast path ------------------------------------------------------------------------
async def test_a_known_caller_reads_no_database(client: Any, app: Any, register: Any) -> None:
    user = await register()
    await cached(client, app, user.headers)
    key = await api_key(client, user, ["account:read"])
    await cached(client, app, key_headers(key))
    # Making the key was a change to the user's credentials: their principals were
    # forgotten, and the next request reads them again. Then the /api alias is the same
    # route, with the same cache.
    await cached(client, app, user.headers)
    with identity_reads(app) as reads:
        assert (await client.get("/api/auth/me", headers=user.headers)).status_code == 200
    assert reads == []


async def test_the_cache_is_off_with_no_ttl(client: Any, app: Any, register: Any) -> None:
    user = await register()
    cache = app.state.core.principals
    ttl, cache.ttl = cache.ttl, 0.0
    try:
        await client.get(f"{V1}/auth/me", headers=user.headers)
        with identity_reads(app) as reads:
            assert (await client.get(f"{V1}/auth/me", headers=user.headers)).status_code == 200
        assert reads != []
    finally:
        cache.ttl = ttl


async def test_a_change_made_behind_nefos_is_seen_after_the_ttl(
    client: Any, app: Any, register: Any
) -> None:
    """A write straight into the database escapes the commit hooks: only the entry's
    lifetime bounds it. Expiring the entry by hand stands for the time passing."""
    user = await register()
    await cached(client, app, user.headers)
    async with app.state.core.db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE users SET is_active = false WHERE id = :id"), {"id": user.id}
        )
    assert (await client.get(f"{V1}/auth/me", headers=user.headers)).status_code == 200
    cache = app.state.core.principals
    for key, (_, principal) in list(cache._entries.items()):
        cache._entries[key] = (0.0, principal)
    r = await client.get(f"{V1}/auth/me", headers=user.headers)
    assert r.status_code == 401 and reason(r) == "account_disabled"


# --- every change a cached principal must see at once ---------------------------------------
async def test_logout(client: Any, app: Any, register: Any) -> None:
    user = await register()
    await cached(client, app, user.headers)
    assert (await client.post(f"{V1}/auth/logout", headers=user.headers)).status_code == 200
    r = await client.get(f"{V1}/auth/me", headers=user.headers)
    assert r.status_code == 401 and reason(r) == "session_revoked"


async def test_a_session_revoked_by_a_refresh_token_replayed(
    client: Any, app: Any, register: Any
) -> None:
    user = await register()
    await cached(client, app, user.headers)
    first = await client.post(f"{V1}/auth/refresh", json={"refresh_token": user.refresh_token})
    assert first.status_code == 200
    # The spent token again: it leaked, so the whole session goes.
    again = await client.post(f"{V1}/auth/refresh", json={"refresh_token": user.refresh_token})
    assert again.status_code == 401
    r = await client.get(f"{V1}/auth/me", headers=user.headers)
    assert r.status_code == 401 and reason(r) == "session_revoked"


async def test_an_api_key_revoked(client: Any, app: Any, register: Any) -> None:
    user = await register()
    key = await api_key(client, user, ["account:read"])
    await cached(client, app, key_headers(key))
    r = await client.delete(f"{V1}/api-keys/{key['_id']}", headers=user.headers)
    assert r.status_code == 200, r.text
    r = await client.get(f"{V1}/auth/me", headers=key_headers(key))
    assert r.status_code == 401 and reason(r) == "invalid_api_key"


async def test_a_password_changed(client: Any, app: Any, register: Any) -> None:
    user = await register()
    key = await api_key(client, user, ["account:read"])
    await cached(client, app, user.headers)
    await cached(client, app, key_headers(key))
    r = await client.put(
        f"{V1}/users/password",
        headers=user.headers,
        json={
            "current_password": PASSWORD,
            "new_password": "another-long-password-42",
            "revoke_api_keys": True,
        },
    )
    assert r.status_code == 200, r.text
    r = await client.get(f"{V1}/auth/me", headers=user.headers)
    assert r.status_code == 401 and reason(r) == "session_revoked"
    r = await client.get(f"{V1}/auth/me", headers=key_headers(key))
    assert r.status_code == 401 and reason(r) == "invalid_api_key"
    # The session the change opened works.
    fresh = {"Authorization": f"Bearer {r_token(await login(client, user))}"}
    assert (await client.get(f"{V1}/auth/me", headers=fresh)).status_code == 200


async def login(client: httpx.AsyncClient, user: Account) -> httpx.Response:
    return await client.post(
        f"{V1}/auth/login", json={"email": user.email, "password": "another-long-password-42"}
    )


def r_token(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["data"]["access_token"])


async def test_an_account_disabled(client: Any, app: Any, register: Any, admin: Account) -> None:
    user = await register()
    key = await api_key(client, user, ["account:read"])
    await cached(client, app, user.headers)
    await cached(client, app, key_headers(key))
    r = await client.patch(
        f"{V1}/admin/users/{user.id}", headers=admin.headers, json={"is_active": False}
    )
    assert r.status_code == 200, r.text
    r = await client.get(f"{V1}/auth/me", headers=user.headers)
    assert r.status_code == 401 and reason(r) == "session_revoked", r.text  # disabling ends them
    r = await client.get(f"{V1}/auth/me", headers=key_headers(key))
    assert r.status_code == 401 and reason(r) == "invalid_api_key", r.text  # and its keys


async def test_the_user_row_changed(client: Any, app: Any, register: Any, admin: Account) -> None:
    """What /auth/me shows comes from the snapshot: it follows the row at once."""
    user = await register()
    await cached(client, app, user.headers)
    r = await client.put(f"{V1}/users/profile", headers=user.headers, json={"name": "Renamed"})
    assert r.status_code == 200, r.text
    me = (await client.get(f"{V1}/auth/me", headers=user.headers)).json()["data"]
    assert me["name"] == "Renamed"
    assert me["is_admin"] is False
    r = await client.patch(
        f"{V1}/admin/users/{user.id}", headers=admin.headers, json={"is_admin": True}
    )
    assert r.status_code == 200, r.text
    me = (await client.get(f"{V1}/auth/me", headers=user.headers)).json()["data"]
    assert me["is_admin"] is True
    assert (await client.get(f"{V1}/admin/users", headers=user.headers)).status_code == 200


async def test_a_membership_removed_ends_a_key_bound_to_the_organisation(
    client: Any, app: Any, register: Any
) -> None:
    owner = await register()
    member = await register()
    r = await client.post(f"{V1}/organisations", headers=owner.headers, json={"name": "Team"})
    org_id = r.json()["data"]["id"]
    await join_org(client, org_id, owner.headers, member, "member")
    key = await api_key(client, member, ["org:read", "account:read"], organisation_id=org_id)
    await cached(client, app, key_headers(key))
    assert (
        await client.get(f"{V1}/organisations/{org_id}", headers=key_headers(key))
    ).status_code == 200
    r = await client.delete(
        f"{V1}/organisations/{org_id}/members/{member.id}", headers=owner.headers
    )
    assert r.status_code == 200, r.text
    r = await client.get(f"{V1}/auth/me", headers=key_headers(key))
    assert r.status_code == 401 and reason(r) == "invalid_api_key", r.text


async def test_a_role_changed(client: Any, app: Any, register: Any) -> None:
    owner = await register()
    member = await register()
    r = await client.post(f"{V1}/organisations", headers=owner.headers, json={"name": "Team"})
    org_id = r.json()["data"]["id"]
    await join_org(client, org_id, owner.headers, member, "admin")
    await cached(client, app, member.headers)
    rename = {"name": "Renamed team"}
    r = await client.put(f"{V1}/organisations/{org_id}", headers=member.headers, json=rename)
    assert r.status_code == 200, r.text
    r = await client.put(
        f"{V1}/organisations/{org_id}/members/{member.id}",
        headers=owner.headers,
        json={"role": "viewer"},
    )
    assert r.status_code == 200, r.text
    r = await client.put(f"{V1}/organisations/{org_id}", headers=member.headers, json=rename)
    assert r.status_code == 403, r.text


async def test_an_organisation_deleted_ends_its_keys(client: Any, app: Any, register: Any) -> None:
    owner = await register()
    r = await client.post(f"{V1}/organisations", headers=owner.headers, json={"name": "Gone"})
    org_id = r.json()["data"]["id"]
    key = await api_key(client, owner, ["org:read", "account:read"], organisation_id=org_id)
    await cached(client, app, key_headers(key))
    r = await client.delete(f"{V1}/organisations/{org_id}", headers=owner.headers)
    assert r.status_code == 200, r.text
    r = await client.get(f"{V1}/auth/me", headers=key_headers(key))
    assert r.status_code == 401, r.text


# --- the seams ------------------------------------------------------------------------------
async def test_a_lookup_that_raced_an_invalidation_is_not_stored(
    client: Any, app: Any, register: Any
) -> None:
    """A principal read before a revocation committed must not be cached after it."""
    user = await register()
    cache = app.state.core.principals
    cache.invalidate("all")
    generation = cache.generation
    cache.invalidate([user.id])  # what a concurrent commit does meanwhile
    from nefos.services.principal import Principal, UserSnapshot

    async with app.state.core.db.session() as session:
        from nefos.db.models import User

        row = await session.get(User, user.id)
        assert row is not None
        stale = Principal(user=UserSnapshot.of(row), session_id="s")
    cache.put(("s", "s"), stale, generation)
    assert cache.get(("s", "s")) is None
    cache.put(("s", "s"), stale, cache.generation)
    assert cache.get(("s", "s")) is stale


async def test_the_auth_rate_limit_group_is_only_the_credential_routes() -> None:
    from nefos.domain.rate_limits import group_of

    for path in ("/auth/login", "/auth/register", "/auth/token", "/auth/refresh"):
        assert group_of(V1 + path) == "auth"
        assert group_of("/api" + path) == "auth"
    assert group_of(f"{V1}/users/password") == "auth"
    for path in ("/auth/me", "/auth/logout", "/users/profile", "/users/settings"):
        assert group_of(V1 + path) is None, path


async def test_an_organisation_made_under_one_a_cached_caller_sees(
    client: Any, app: Any, register: Any
) -> None:
    """The organisations a caller sees are remembered with the principal: a customer
    organisation made under their reseller shows in their very next list."""
    owner = await register()
    staff = await register()
    r = await client.post(
        f"{V1}/organisations", headers=owner.headers, json={"name": "Resell", "kind": "reseller"}
    )
    assert r.status_code == 201, r.text
    reseller = r.json()["data"]["id"]
    await join_org(client, reseller, owner.headers, staff, "viewer")
    await cached(client, app, staff.headers)

    async def seen() -> set[str]:
        r = await client.get(f"{V1}/organisations", headers=staff.headers, params={"limit": 500})
        return {o["id"] for o in r.json()["data"]["items"]}

    before = await seen()
    assert reseller in before
    r = await client.post(
        f"{V1}/organisations/{reseller}/children", headers=owner.headers, json={"name": "Cust"}
    )
    assert r.status_code == 201, r.text
    assert await seen() == before | {r.json()["data"]["id"]}
