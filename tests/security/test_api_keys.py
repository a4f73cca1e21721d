"""API keys: shown once, stored hashed, accepted in two headers, expiring, scoped."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from sqlalchemy import text, update

from nefos.db.models import ApiKey
from nefos.db.types import utcnow
from tests.security.conftest import API, bearer

ME = f"{API}/auth/me"
KEYS = f"{API}/api-keys"


def _key(raw: str) -> dict[str, str]:
    return {"X-API-Key": raw}


async def test_key_is_shown_once_with_the_nfs_prefix(client: Any, register: Any) -> None:
    acct = await register()
    r = await client.post(
        KEYS, json={"name": "ci", "scopes": ["account:read"]}, headers=acct.headers
    )
    assert r.status_code == 201, r.text
    assert r.headers["Cache-Control"] == "no-store"
    created = r.json()["data"]
    raw = created["key"]
    assert raw.startswith("nfs_")
    assert len(raw) >= 40
    assert created["prefix"] == raw[:12]
    assert raw[12:] not in created["prefix"]

    listed = (await client.get(KEYS, headers=acct.headers)).json()["data"]["items"]
    one = (await client.get(f"{KEYS}/{created['id']}", headers=acct.headers)).json()["data"]
    assert [k["id"] for k in listed] == [created["id"]]
    for shown in (listed[0], one):
        assert "key" not in shown
        assert raw not in str(shown)
        assert raw[12:] not in str(shown)
        assert shown["prefix"] == raw[:12]


async def test_keys_are_random(client: Any, register: Any, create_key: Any) -> None:
    acct = await register()
    raws = {(await create_key(acct.headers))["key"] for _ in range(5)}
    assert len(raws) == 5
    assert len({r[:12] for r in raws}) == 5


async def test_key_is_stored_only_as_a_hash(
    client: Any, register: Any, create_key: Any, core: Any
) -> None:
    acct = await register()
    created = await create_key(acct.headers, scopes=["account:read"])
    raw = created["key"]
    secret_part = raw[len("nfs_") :]
    async with core.db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM api_keys"))).mappings().all()
    assert len(rows) == 1
    row = rows[0]
    for column, value in row.items():
        assert raw not in str(value), column
        assert secret_part not in str(value), column
        assert secret_part[:20] not in str(value), column
    assert row["key_hash"] == hashlib.sha256(raw.encode()).hexdigest()
    assert row["prefix"] == raw[:12]


async def test_key_works_as_bearer_and_as_x_api_key(
    client: Any, register: Any, create_key: Any
) -> None:
    acct = await register()
    raw = (await create_key(acct.headers, scopes=["account:read"]))["key"]
    for headers in (bearer(raw), _key(raw)):
        r = await client.get(ME, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["data"]["id"] == acct.id


async def test_jwt_works_as_x_auth_token(client: Any, register: Any) -> None:
    acct = await register()
    r = await client.get(ME, headers={"X-Auth-Token": acct.access_token})
    assert r.status_code == 200
    assert r.json()["data"]["id"] == acct.id


async def test_wrong_or_altered_keys_are_refused(
    client: Any, register: Any, create_key: Any
) -> None:
    acct = await register()
    raw = (await create_key(acct.headers))["key"]
    flipped = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    for bad in (flipped, raw[:-1], raw + "x", raw.upper(), "nfs_", raw[:12], "nfs_" + "0" * 40):
        for headers in (bearer(bad), _key(bad)):
            r = await client.get(ME, headers=headers)
            assert r.status_code == 401, (bad, r.text)
            assert r.json()["error"]["code"] == "UNAUTHORIZED"


async def test_an_expired_key_fails(client: Any, register: Any, create_key: Any, core: Any) -> None:
    acct = await register()
    created = await create_key(acct.headers, expires_in_days=1)
    assert created["expires_at"] is not None
    raw = created["key"]
    assert (await client.get(ME, headers=_key(raw))).status_code == 200
    async with core.db.session() as s:
        await s.execute(
            update(ApiKey)
            .where(ApiKey.id == created["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await s.commit()
    for headers in (bearer(raw), _key(raw)):
        r = await client.get(ME, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "UNAUTHORIZED"
    # Nor can it be used to log in alongside the password.
    r = await client.post(
        f"{API}/auth/login",
        json={"email": acct.email, "password": acct.password, "api_key": raw},
    )
    assert r.status_code == 401


async def test_scopes_are_enforced(client: Any, register: Any, create_key: Any) -> None:
    acct = await register()
    raw = (await create_key(acct.headers, scopes=["account:read"]))["key"]
    assert (await client.get(ME, headers=_key(raw))).status_code == 200

    r = await client.post(f"{API}/organisations", json={"name": "Nope"}, headers=_key(raw))
    assert r.status_code == 403
    body = r.json()
    assert body["error"]["code"] == "FORBIDDEN"
    assert body["success"] is False
    # Nothing was made.
    orgs = (await client.get(f"{API}/organisations", headers=acct.headers)).json()["data"]
    assert [o["name"] for o in orgs["items"] if o["name"] == "Nope"] == []

    forbidden = [
        ("GET", f"{API}/organisations", None),
        ("GET", f"{API}/projects", None),
        ("PUT", f"{API}/users/profile", {"name": "Changed"}),
        ("POST", KEYS, {"name": "more", "scopes": ["account:read"]}),
        ("GET", f"{API}/admin/users", None),
    ]
    for method, url, body in forbidden:
        r = await client.request(method, url, json=body, headers=_key(raw))
        assert r.status_code == 403, (method, url, r.text)
        assert r.json()["error"]["code"] == "FORBIDDEN"
    assert (await client.get(ME, headers=acct.headers)).json()["data"]["name"] != "Changed"


async def test_the_same_call_with_the_right_scope_is_allowed(
    client: Any, register: Any, create_key: Any
) -> None:
    """The control for test_scopes_are_enforced: the 403 is the scope's doing."""
    acct = await register()
    raw = (await create_key(acct.headers, scopes=["org:write", "org:read"]))["key"]
    r = await client.post(f"{API}/organisations", json={"name": "Yes"}, headers=_key(raw))
    assert r.status_code == 201, r.text


async def test_a_key_cannot_mint_a_key_with_more_scopes(
    client: Any, register: Any, create_key: Any
) -> None:
    acct = await register()
    parent = (await create_key(acct.headers, scopes=["account:read", "account:write"]))["key"]
    for scopes in (["org:write"], ["account:write", "compute:write"], ["*"], ["admin"]):
        r = await client.post(KEYS, json={"name": "child", "scopes": scopes}, headers=_key(parent))
        assert r.status_code == 403, (scopes, r.text)
        assert r.json()["error"]["code"] == "FORBIDDEN"
    # Only the parent exists.
    listed = (await client.get(KEYS, headers=acct.headers)).json()["data"]["items"]
    assert len(listed) == 1
    # A subset is fine, and the child really is limited to it.
    r = await client.post(
        KEYS, json={"name": "child", "scopes": ["account:read"]}, headers=_key(parent)
    )
    assert r.status_code == 201, r.text
    child = r.json()["data"]
    assert child["scopes"] == ["account:read"]
    r = await client.post(
        KEYS, json={"name": "grandchild", "scopes": ["account:read"]}, headers=_key(child["key"])
    )
    assert r.status_code == 403


async def test_only_admins_mint_admin_keys(
    client: Any, register: Any, admin: Any, create_key: Any
) -> None:
    user = await register()
    r = await client.post(KEYS, json={"name": "x", "scopes": ["admin"]}, headers=user.headers)
    assert r.status_code == 403
    # For a non-admin, '*' is every scope they may hold: all but admin.
    r = await client.post(KEYS, json={"name": "x", "scopes": ["*"]}, headers=user.headers)
    assert r.status_code == 201 and "admin" not in r.json()["data"]["scopes"]
    r = await client.post(KEYS, json={"name": "x", "scopes": ["*"]}, headers=admin.headers)
    assert r.status_code == 201 and "admin" in r.json()["data"]["scopes"]
    # An admin's key without the admin scope cannot mint one with it either.
    limited = (await create_key(admin.headers, scopes=["account:read", "account:write"]))["key"]
    r = await client.post(KEYS, json={"name": "x", "scopes": ["admin"]}, headers=_key(limited))
    assert r.status_code == 403
    # ... and cannot reach admin routes.
    assert (await client.get(f"{API}/admin/users", headers=_key(limited))).status_code == 403
    r = await client.post(KEYS, json={"name": "x", "scopes": ["admin"]}, headers=admin.headers)
    assert r.status_code == 201


async def test_a_bound_key_cannot_mint_a_key_for_another_organisation(
    client: Any, register: Any, create_key: Any
) -> None:
    acct = await register()
    orgs = []
    for name in ("One", "Two"):
        r = await client.post(f"{API}/organisations", json={"name": name}, headers=acct.headers)
        orgs.append(r.json()["data"]["id"])
    bound = (await create_key(acct.headers, organisation_id=orgs[0]))["key"]
    r = await client.post(
        KEYS,
        json={"name": "escape", "scopes": ["org:read"], "organisation_id": orgs[1]},
        headers=_key(bound),
    )
    assert r.status_code == 403
    # Without naming one, the new key inherits the binding.
    r = await client.post(KEYS, json={"name": "same", "scopes": ["org:read"]}, headers=_key(bound))
    assert r.status_code == 201
    assert r.json()["data"]["organisation_id"] == orgs[0]
    # And a bound key does not reach the other organisation.
    r = await client.get(f"{API}/organisations/{orgs[1]}", headers=_key(bound))
    assert r.status_code == 404


async def test_a_key_cannot_be_bound_to_someone_elses_organisation(
    client: Any, register: Any
) -> None:
    owner = await register()
    attacker = await register()
    r = await client.post(f"{API}/organisations", json={"name": "Private"}, headers=owner.headers)
    org_id = r.json()["data"]["id"]
    r = await client.post(
        KEYS,
        json={"name": "sneaky", "scopes": ["org:read"], "organisation_id": org_id},
        headers=attacker.headers,
    )
    assert r.status_code == 404
    listed = (await client.get(KEYS, headers=attacker.headers)).json()["data"]["items"]
    assert listed == []


async def test_keys_of_other_users_are_invisible(
    client: Any, register: Any, create_key: Any
) -> None:
    owner = await register()
    other = await register()
    created = await create_key(owner.headers)
    assert (await client.get(KEYS, headers=other.headers)).json()["data"]["items"] == []
    r = await client.get(f"{KEYS}/{created['id']}", headers=other.headers)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "NOT_FOUND"


async def test_keys_per_user_are_capped_and_revoked_or_expired_ones_do_not_count(
    client: Any, register: Any, create_key: Any, core: Any, monkeypatch: Any
) -> None:
    """Keys are no way to more of anything (issue 14): at most
    ``NEFOS_API_KEYS_PER_USER`` live keys a user; one more is 409 with a clear message."""
    monkeypatch.setattr(core.settings, "api_keys_per_user", 3)
    acct = await register()
    made = [await create_key(acct.headers) for _ in range(3)]
    r = await client.post(KEYS, json={"name": "one-more", "scopes": ["*"]}, headers=acct.headers)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "CONFLICT" and "3 live API keys" in error["message"]
    assert error["details"]["limit"] == 3
    # Another user is not affected.
    other = await register()
    await create_key(other.headers)
    # A revoked key and an expired one free their places.
    r = await client.delete(f"{KEYS}/{made[0]['id']}", headers=acct.headers)
    assert r.status_code == 200, r.text
    await create_key(acct.headers)
    async with core.db.session() as s:
        await s.execute(
            update(ApiKey)
            .where(ApiKey.id == made[1]["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await s.commit()
    await create_key(acct.headers)
    r = await client.post(KEYS, json={"name": "one-more", "scopes": ["*"]}, headers=acct.headers)
    assert r.status_code == 409, r.text
