"""Refresh tokens rotate; replaying a spent one revokes the whole family (RFC 9700 4.14)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import jwt
from sqlalchemy import select, update

from nefos.db.models import AuthSession, RefreshToken
from nefos.db.types import utcnow
from tests.security.conftest import API, bearer, login

ME = f"{API}/auth/me"
REFRESH = f"{API}/auth/refresh"


async def _refresh(client: Any, token: str) -> Any:
    return await client.post(REFRESH, json={"refresh_token": token})


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


async def test_refresh_returns_a_new_pair_and_spends_the_old_token(
    client: Any, register: Any
) -> None:
    acct = await register()
    r = await _refresh(client, acct.refresh_token)
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    data = r.json()["data"]
    assert data["access_token"] == data["token"]
    assert data["access_token"] != acct.access_token
    assert data["refresh_token"] != acct.refresh_token
    assert data["user"]["id"] == acct.id
    # Same session (family), fresh token ids.
    old, new = _claims(acct.refresh_token), _claims(data["refresh_token"])
    assert new["sid"] == old["sid"]
    assert new["jti"] != old["jti"]
    # The new pair works.
    assert (await client.get(ME, headers=bearer(data["access_token"]))).status_code == 200
    r2 = await _refresh(client, data["refresh_token"])
    assert r2.status_code == 200, r2.text


async def test_spent_refresh_token_is_marked_used(client: Any, register: Any, core: Any) -> None:
    acct = await register()
    jti = _claims(acct.refresh_token)["jti"]
    assert (await _refresh(client, acct.refresh_token)).status_code == 200
    async with core.db.session() as s:
        row = await s.get(RefreshToken, jti)
        assert row is not None and row.used_at is not None


async def test_replaying_a_spent_refresh_token_revokes_the_whole_family(
    client: Any, register: Any, core: Any
) -> None:
    acct = await register()
    first = await _refresh(client, acct.refresh_token)
    assert first.status_code == 200
    second_pair = first.json()["data"]
    third = await _refresh(client, second_pair["refresh_token"])
    assert third.status_code == 200
    newest = third.json()["data"]
    assert (await client.get(ME, headers=bearer(newest["access_token"]))).status_code == 200

    # The attacker (or the victim) replays the first, long-spent refresh token.
    replay = await _refresh(client, acct.refresh_token)
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "UNAUTHORIZED"

    # Every token of the family is dead: the newest refresh token ...
    assert (await _refresh(client, newest["refresh_token"])).status_code == 401
    # ... and every access token the session ever issued.
    for access in (acct.access_token, second_pair["access_token"], newest["access_token"]):
        r = await client.get(ME, headers=bearer(access))
        assert r.status_code == 401, r.text
    sid = _claims(acct.refresh_token)["sid"]
    async with core.db.session() as s:
        session = await s.get(AuthSession, sid)
        assert session is not None
        assert session.revoked_at is not None
        assert session.revoked_reason == "refresh_token_reuse"


async def test_replaying_a_spent_refresh_token_spares_other_sessions(
    client: Any, register: Any
) -> None:
    acct = await register()
    other_login = await login(client, acct)
    assert other_login.status_code == 200
    other = other_login.json()["data"]

    assert (await _refresh(client, acct.refresh_token)).status_code == 200
    assert (await _refresh(client, acct.refresh_token)).status_code == 401

    # The user's other login (another family) is untouched.
    assert (await client.get(ME, headers=bearer(other["access_token"]))).status_code == 200
    assert (await _refresh(client, other["refresh_token"])).status_code == 200


async def test_replay_right_after_rotation_is_detected(client: Any, register: Any) -> None:
    """The legitimate client rotated; the thief's copy of the old token must not work,
    and the legitimate client is logged out too (the family cannot be trusted)."""
    acct = await register()
    legit = await _refresh(client, acct.refresh_token)
    assert legit.status_code == 200
    legit_pair = legit.json()["data"]

    thief = await _refresh(client, acct.refresh_token)
    assert thief.status_code == 401
    assert "access_token" not in thief.text

    assert (await client.get(ME, headers=bearer(legit_pair["access_token"]))).status_code == 401
    assert (await _refresh(client, legit_pair["refresh_token"])).status_code == 401


async def test_concurrent_uses_of_one_refresh_token_yield_at_most_one_pair(
    client: Any, register: Any, core: Any
) -> None:
    acct = await register()
    results = await asyncio.gather(
        _refresh(client, acct.refresh_token), _refresh(client, acct.refresh_token)
    )
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) <= 1, statuses
    assert all(s in (200, 401) for s in statuses), [r.text for r in results]
    # Exactly one successor token exists in the family, whatever the interleaving.
    sid = _claims(acct.refresh_token)["sid"]
    async with core.db.session() as s:
        tokens = (await s.scalars(select(RefreshToken).where(RefreshToken.session_id == sid))).all()
    assert len(tokens) == 1 + statuses.count(200)


async def test_many_concurrent_uses_of_one_refresh_token_yield_at_most_one_pair(
    client: Any, register: Any
) -> None:
    acct = await register()
    results = await asyncio.gather(*(_refresh(client, acct.refresh_token) for _ in range(8)))
    statuses = [r.status_code for r in results]
    assert statuses.count(200) <= 1, statuses
    assert set(statuses) <= {200, 401}, [r.text for r in results]


async def test_logout_ends_the_refresh_token_too(client: Any, register: Any) -> None:
    acct = await register()
    r = await client.post(
        f"{API}/auth/logout", json={"refresh_token": acct.refresh_token}, headers=acct.headers
    )
    assert r.status_code == 200
    assert (await client.get(ME, headers=acct.headers)).status_code == 401
    assert (await _refresh(client, acct.refresh_token)).status_code == 401


async def test_logout_cannot_end_another_users_session(client: Any, register: Any) -> None:
    attacker = await register()
    victim = await register()
    r = await client.post(
        f"{API}/auth/logout",
        json={"refresh_token": victim.refresh_token},
        headers=attacker.headers,
    )
    assert r.status_code == 200
    assert (await client.get(ME, headers=victim.headers)).status_code == 200
    assert (await _refresh(client, victim.refresh_token)).status_code == 200


async def test_expired_refresh_row_is_refused(client: Any, register: Any, core: Any) -> None:
    """The database's expiry is enforced even while the JWT itself is still valid."""
    acct = await register()
    jti = _claims(acct.refresh_token)["jti"]
    async with core.db.session() as s:
        await s.execute(
            update(RefreshToken)
            .where(RefreshToken.id == jti)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await s.commit()
    assert (await _refresh(client, acct.refresh_token)).status_code == 401
