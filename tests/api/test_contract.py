"""The HTTP conventions of API.md: prefixes, envelope, versions, paging, errors."""

from __future__ import annotations

import re

V1 = "/api/v1"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def test_every_route_answers_under_both_prefixes(client, register):
    acct = await register()
    for prefix in ("/api/v1", "/api"):
        r = await client.get(f"{prefix}/auth/me", headers=acct.headers)
        assert r.status_code == 200, prefix
        body = r.json()
        assert body["success"] is True and body["error"] is None
        assert ISO_Z.match(body["timestamp"]) and ISO_Z.match(body["data"]["created_at"])


async def test_seed_004_register_and_login(client):
    r = await client.post(
        "/api/auth/register",
        json={"email": "user@example.com", "password": "securepassword123", "name": "John Doe"},
    )
    assert r.status_code == 201
    data = r.json()["data"]
    assert data["user"]["name"] == "John Doe" and data["token"] == data["access_token"]
    r = await client.post(
        "/api/auth/login", json={"email": "user@example.com", "password": "securepassword123"}
    )
    assert r.status_code == 200
    assert r.json()["data"]["user"]["email"] == "user@example.com"
    assert r.json()["data"]["token"]


async def test_seed_003_register_and_login_by_username(client):
    r = await client.post(
        f"{V1}/auth/register",
        json={"username": "newuser", "email": "user@example.com", "password": "password123"},
    )
    assert r.status_code == 201
    r = await client.post(
        f"{V1}/auth/login", json={"username": "newuser", "password": "password123"}
    )
    assert r.status_code == 200
    body = r.json()
    # Seed 003 reads access_token and token_type at the top level.
    assert body["access_token"] == body["data"]["access_token"]
    assert body["token_type"] == "bearer"


async def test_oauth2_password_form_for_docs(client, register):
    acct = await register()
    r = await client.post(
        f"{V1}/auth/token", data={"username": acct.email, "password": acct.password}
    )
    assert r.status_code == 200
    token = r.json()["access_token"]
    me = await client.get(f"{V1}/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["data"]["id"] == acct.id


async def test_error_envelope_with_detail_alias(client):
    r = await client.post(f"{V1}/auth/register", json={"email": "nope", "password": "short"})
    assert r.status_code == 422
    body = r.json()
    assert body["success"] is False and body["data"] is None
    assert body["error"]["code"] == "VALIDATION_ERROR"
    assert body["error"]["details"]["email"] == "Invalid email format"
    assert "password" in body["error"]["details"]
    assert body["detail"] == body["error"]["message"]
    r = await client.post(
        f"{V1}/auth/register", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_unknown_route_and_method(client):
    r = await client.get(f"{V1}/no-such-thing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    r = await client.delete(f"{V1}/auth/me")
    assert r.status_code == 405 and r.json()["success"] is False


async def test_versions_by_accept_header(client, register):
    acct = await register()
    ok = await client.get(
        f"{V1}/auth/me", headers={**acct.headers, "Accept": "application/vnd.nefos.v1+json"}
    )
    assert ok.status_code == 200
    bad = await client.get(
        f"{V1}/auth/me", headers={**acct.headers, "Accept": "application/vnd.nefos.v9+json"}
    )
    assert bad.status_code == 406 and bad.json()["error"]["code"] == "UNSUPPORTED_VERSION"


async def test_request_id_is_echoed_or_made(client):
    r = await client.get(f"{V1}/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await client.get(f"{V1}/health", headers={"X-Request-ID": "bad id\twith junk"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


async def test_health_reports_the_database(client):
    for path in ("/health", "/api/health", f"{V1}/health"):
        r = await client.get(path)
        assert r.status_code == 200
        assert r.json()["data"]["services"]["database"] == "healthy"


async def test_both_paging_styles_and_the_limit_cap(client, register):
    acct = await register()
    for i in range(7):
        r = await client.post(f"{V1}/projects", json={"name": f"p{i}"}, headers=acct.headers)
        assert r.status_code == 201
    # 8 projects in all, the default first.
    r = await client.get(f"{V1}/projects", params={"page": 2, "limit": 3}, headers=acct.headers)
    data = r.json()["data"]
    assert [p["name"] for p in data["items"]] == ["p2", "p3", "p4"]
    next_cursor = data["pagination"].pop("next_cursor")
    assert data["pagination"] == {"page": 2, "limit": 3, "total": 8, "pages": 3}
    assert next_cursor  # more follow: where a keyset walk goes on (test_paging.py)
    r = await client.get(f"{V1}/projects", params={"skip": 6, "limit": 3}, headers=acct.headers)
    data = r.json()["data"]
    assert [p["name"] for p in data["items"]] == ["p5", "p6"]
    assert data["pagination"]["page"] == 3
    r = await client.get(f"{V1}/projects", params={"limit": 100000}, headers=acct.headers)
    assert r.json()["data"]["pagination"]["limit"] == 500
    r = await client.get(f"{V1}/projects", headers=acct.headers)
    assert r.json()["data"]["pagination"]["limit"] == 20
    r = await client.get(f"{V1}/projects", params={"page": 0}, headers=acct.headers)
    assert r.status_code == 422


async def test_profile_and_settings(client, register):
    acct = await register(name="Old")
    r = await client.put(
        f"{V1}/users/profile", json={"name": "New", "username": "newname"}, headers=acct.headers
    )
    assert r.status_code == 200 and r.json()["data"]["username"] == "newname"
    r = await client.put(
        f"{V1}/users/profile", json={"email": "other@example.com"}, headers=acct.headers
    )
    assert r.status_code == 401  # the e-mail needs the current password
    r = await client.put(
        f"{V1}/users/profile",
        json={"email": "other@example.com", "current_password": acct.password},
        headers=acct.headers,
    )
    assert r.status_code == 200 and r.json()["data"]["email"] == "other@example.com"

    s = (await client.get(f"{V1}/users/settings", headers=acct.headers)).json()["data"]
    assert s["theme"] == "system" and s["default_project_id"] == acct.project_id
    r = await client.put(
        f"{V1}/users/settings",
        json={"theme": "dark", "timezone": "Europe/Dublin"},
        headers=acct.headers,
    )
    assert r.json()["data"]["theme"] == "dark"
    assert (await client.get(f"{V1}/users/settings", headers=acct.headers)).json()["data"][
        "timezone"
    ] == "Europe/Dublin"
    r = await client.put(
        f"{V1}/users/settings", json={"timezone": "Mars/Olympus"}, headers=acct.headers
    )
    assert r.status_code == 422
    other = await register()
    r = await client.put(
        f"{V1}/users/settings", json={"default_project_id": other.project_id}, headers=acct.headers
    )
    assert r.status_code == 404


async def test_nul_bytes_are_refused_not_stored(client, register):
    acct = await register()
    r = await client.post(f"{V1}/projects", json={"name": "bad\u0000name"}, headers=acct.headers)
    assert r.status_code == 422
