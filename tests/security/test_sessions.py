"""A user's sessions (`GET /auth/sessions`, `DELETE /auth/sessions/{id}`): each
sign-in listed with where it came from, and ended from another one at once."""

from __future__ import annotations

from typing import Any

from tests.security.conftest import API, bearer, login

SESSIONS = f"{API}/auth/sessions"
ME = f"{API}/auth/me"


async def _sessions(client: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    r = await client.get(SESSIONS, headers=headers)
    assert r.status_code == 200, r.text
    return list(r.json()["data"]["items"])


async def test_each_sign_in_is_listed_newest_first_with_the_current_one_marked(
    client: Any, register: Any
) -> None:
    user = await register()
    laptop = (await login(client, user)).json()["data"]
    mine = await _sessions(client, user.headers)
    assert len(mine) == 2
    assert [s["current"] for s in mine] == [False, True]  # newest (the laptop's) first
    assert mine[0]["created_at"] >= mine[1]["created_at"]
    assert all(s["expires_at"] > s["created_at"] and s["revoked_at"] is None for s in mine)
    from_laptop = await _sessions(client, bearer(laptop["access_token"]))
    assert [s["current"] for s in from_laptop] == [True, False]
    # A session that signed out is no longer listed.
    r = await client.post(f"{API}/auth/logout", headers=bearer(laptop["access_token"]))
    assert r.status_code == 200
    assert [s["id"] for s in await _sessions(client, user.headers)] == [mine[1]["id"]]


async def test_ending_another_session_stops_its_tokens_at_once_and_keeps_mine(
    client: Any, register: Any
) -> None:
    user = await register()
    lost = (await login(client, user)).json()["data"]
    assert (await client.get(ME, headers=bearer(lost["access_token"]))).status_code == 200
    (target,) = [s for s in await _sessions(client, user.headers) if not s["current"]]

    r = await client.delete(f"{SESSIONS}/{target['id']}", headers=user.headers)
    assert r.status_code == 200, r.text
    ended = r.json()["data"]
    assert ended["id"] == target["id"] and ended["revoked_at"] and ended["current"] is False

    r = await client.get(ME, headers=bearer(lost["access_token"]))
    assert r.status_code == 401 and r.json()["error"]["details"]["reason"] == "session_revoked"
    r = await client.post(f"{API}/auth/refresh", json={"refresh_token": lost["refresh_token"]})
    assert r.status_code == 401
    assert (await client.get(ME, headers=user.headers)).status_code == 200
    # Ended once: ending it again is a 404, as for a session that never was.
    r = await client.delete(f"{SESSIONS}/{target['id']}", headers=user.headers)
    assert r.status_code == 404


async def test_another_users_session_is_not_found_and_keeps_working(
    client: Any, register: Any
) -> None:
    me, other = await register(), await register()
    (theirs,) = await _sessions(client, other.headers)
    r = await client.delete(f"{SESSIONS}/{theirs['id']}", headers=me.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    assert (await client.get(ME, headers=other.headers)).status_code == 200
    assert theirs["id"] not in {s["id"] for s in await _sessions(client, me.headers)}


async def test_ending_the_current_session_signs_this_client_out(client: Any, register: Any) -> None:
    user = await register()
    (current,) = await _sessions(client, user.headers)
    r = await client.delete(f"{SESSIONS}/{current['id']}", headers=user.headers)
    assert r.status_code == 200 and r.json()["data"]["current"] is True
    r = await client.get(ME, headers=user.headers)
    assert r.status_code == 401 and r.json()["error"]["details"]["reason"] == "session_revoked"


async def test_an_api_key_lists_the_sessions_and_none_is_its_own(
    client: Any, register: Any, create_key: Any
) -> None:
    user = await register()
    key = (await create_key(user.headers, scopes=["account:read"]))["key"]
    listed = await _sessions(client, bearer(key))
    assert len(listed) == 1 and listed[0]["current"] is False
    # Ending one needs account:write.
    r = await client.delete(f"{SESSIONS}/{listed[0]['id']}", headers=bearer(key))
    assert r.status_code == 403
