"""Limits that keep a leaked credential from lasting or guessing without end."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher, Type
from sqlalchemy import update

from nefos.db.models import AuthSession, User
from nefos.db.types import utcnow
from tests.conftest import PASSWORD
from tests.security.conftest import API, bearer, unverified_claims


async def test_a_stronger_stored_hash_is_not_downgraded_at_login(
    client: Any, register: Any, user_row: Any, core: Any
) -> None:
    acct = await register()
    s = core.settings
    strong = PasswordHasher(
        time_cost=s.argon2_time_cost + 1,
        memory_cost=s.argon2_memory_kib,
        parallelism=s.argon2_parallelism,
        type=Type.ID,
    ).hash(PASSWORD)
    async with core.db.session() as db:
        await db.execute(update(User).where(User.id == acct.id).values(password_hash=strong))
        await db.commit()
    r = await client.post(f"{API}/auth/login", json={"email": acct.email, "password": PASSWORD})
    assert r.status_code == 200
    assert (await user_row(acct.id)).password_hash == strong


async def test_a_session_cannot_be_refreshed_past_its_lifetime(
    client: Any, register: Any, core: Any
) -> None:
    acct = await register()
    sid = unverified_claims(acct.access_token)["sid"]
    r = await client.post(f"{API}/auth/refresh", json={"refresh_token": acct.refresh_token})
    assert r.status_code == 200
    fresh = r.json()["data"]
    # Rotation slides the refresh token, never past the session's end.
    assert fresh["refresh_expires_in"] <= core.settings.refresh_token_ttl
    async with core.db.session() as db:
        await db.execute(
            update(AuthSession)
            .where(AuthSession.id == sid)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await db.commit()
    r = await client.post(f"{API}/auth/refresh", json={"refresh_token": fresh["refresh_token"]})
    assert r.status_code == 401
    assert r.json()["error"]["details"]["reason"] == "session_expired"


async def test_guessing_the_current_password_with_a_stolen_token_is_limited(
    client: Any, register: Any, core: Any
) -> None:
    acct = await register()
    limit = core.settings.login_max_failures
    body = {"current_password": "guess", "new_password": "a-brand-new-password"}
    for _ in range(limit):
        r = await client.put(f"{API}/users/password", json=body, headers=acct.headers)
        assert r.status_code == 401
    r = await client.put(f"{API}/users/password", json=body, headers=acct.headers)
    assert r.status_code == 429 and "retry-after" in r.headers
    # The e-mail change shares the counter.
    r = await client.put(
        f"{API}/users/profile",
        json={"email": "elsewhere@example.com", "current_password": PASSWORD},
        headers=acct.headers,
    )
    assert r.status_code == 429


async def test_a_right_current_password_does_not_count_as_a_failure(
    client: Any, register: Any, core: Any
) -> None:
    acct = await register()
    headers = acct.headers
    for i in range(core.settings.login_max_failures + 2):
        r = await client.put(
            f"{API}/users/profile",
            json={"email": f"me{i}@example.com", "current_password": PASSWORD},
            headers=headers,
        )
        assert r.status_code == 200, r.text


async def test_a_key_minted_by_a_key_never_outlives_it(
    client: Any, register: Any, create_key: Any
) -> None:
    acct = await register()
    parent = await create_key(acct.headers, expires_in_days=1)
    r = await client.post(
        f"{API}/api-keys",
        json={"name": "child", "scopes": ["org:read"]},
        headers=bearer(parent["key"]),
    )
    assert r.status_code == 201, r.text
    assert r.json()["data"]["expires_at"] == parent["expires_at"]
    r = await client.post(
        f"{API}/api-keys",
        json={"name": "child", "scopes": ["org:read"], "expires_in_days": 30},
        headers=bearer(parent["key"]),
    )
    assert r.json()["data"]["expires_at"] == parent["expires_at"]


QUOTED_CONTAINER = {"type": "container", "cpu": "0.5", "memory": "256m", "image": "nginx:alpine"}
BIDI_AND_INVISIBLE = [
    "evil\u202etxt.exe",  # RIGHT-TO-LEFT OVERRIDE (Cf)
    "ad\u200bmin",  # ZERO WIDTH SPACE (Cf)
    "a\u2066b",  # LEFT-TO-RIGHT ISOLATE (Cf)
    "a\ufeffb",  # ZERO WIDTH NO-BREAK SPACE (Cf)
    "a\x07b",  # BEL (Cc)
    "a\ue000b",  # private use (Co)
    "a\u0378b",  # unassigned (Cn)
    "a\u2028b",  # LINE SEPARATOR (Zl)
]


async def test_names_refuse_bidi_overrides_and_invisible_characters(
    client: Any, register: Any
) -> None:
    """Names and slugs are shown to other people: characters that reorder or hide text
    are refused with a 422 saying so (issue 14), wherever a name is taken."""
    acct = await register()
    h = acct.headers

    def bodies(bad: str) -> list[tuple[str, str, dict[str, Any]]]:
        return [
            ("PUT", f"{API}/users/profile", {"name": bad}),
            ("PUT", f"{API}/users/profile", {"username": bad}),
            ("POST", f"{API}/organisations", {"name": bad}),
            ("POST", f"{API}/organisations", {"name": "Acme", "slug": bad}),
            ("POST", f"{API}/projects", {"name": bad}),
            ("POST", f"{API}/api-keys", {"name": bad, "scopes": ["*"]}),
            ("POST", f"{API}/containers", {"name": bad, "image": "nginx:alpine"}),
            ("POST", f"{API}/quotes", {"name": bad, "items": [QUOTED_CONTAINER]}),
        ]

    for bad in BIDI_AND_INVISIBLE:
        for method, path, body in bodies(bad):
            r = await client.request(method, path, json=body, headers=h)
            assert r.status_code == 422, (method, path, repr(bad), r.text)
            error = r.json()["error"]
            assert error["code"] == "VALIDATION_ERROR", error
    r = await client.post(f"{API}/organisations", json={"name": "evil\u202etxt"}, headers=h)
    assert "invisible or control characters" in r.text, r.text
    # Letters of any script, accents and emoji stay welcome.
    for name in ("Zoë Ünal", "東京チーム", "Ωmega ✨"):
        r = await client.post(f"{API}/organisations", json={"name": name}, headers=h)
        assert r.status_code == 201, r.text
        assert r.json()["data"]["name"] == name
    r = await client.put(f"{API}/users/profile", json={"name": "Zoë Ünal"}, headers=h)
    assert r.status_code == 200, r.text
    r = await client.post(f"{API}/quotes", json={"items": [QUOTED_CONTAINER]}, headers=h)
    assert r.status_code == 201, r.text  # a quote's name may be left out
