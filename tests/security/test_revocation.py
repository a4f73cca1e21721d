"""Revocation takes effect on the next call: disabled users, removed members, deleted
organisations, revoked keys and changed passwords."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from nefos.db.models import User
from tests.conftest import join_org
from tests.security.conftest import API, bearer, login

ME = f"{API}/auth/me"
REFRESH = f"{API}/auth/refresh"


def _key(raw: str) -> dict[str, str]:
    return {"X-API-Key": raw}


async def _refresh(client: Any, token: str) -> Any:
    return await client.post(REFRESH, json={"refresh_token": token})


async def _org(client: Any, acct: Any, **body: Any) -> dict[str, Any]:
    r = await client.post(
        f"{API}/organisations", json={"name": "Acme", **body}, headers=acct.headers
    )
    assert r.status_code == 201, r.text
    return dict(r.json()["data"])


async def _add_member(client: Any, owner: Any, org_id: str, member: Any, role: str) -> None:
    await join_org(client, org_id, owner.headers, member, role, API)


# --- disabling a user --------------------------------------------------------------
async def test_disabling_a_user_ends_their_tokens_and_keys(
    client: Any, register: Any, admin: Any, create_key: Any
) -> None:
    victim = await register()
    second = (await login(client, victim)).json()["data"]
    key = (await create_key(victim.headers))["key"]
    # Everything works before.
    assert (await client.get(ME, headers=victim.headers)).status_code == 200
    assert (await client.get(ME, headers=bearer(key))).status_code == 200

    r = await client.patch(
        f"{API}/admin/users/{victim.id}", json={"is_active": False}, headers=admin.headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"]["is_active"] is False

    for headers in (
        victim.headers,
        bearer(second["access_token"]),
        {"X-Auth-Token": victim.access_token},
        bearer(key),
        _key(key),
    ):
        r = await client.get(ME, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"]["code"] == "UNAUTHORIZED"
    assert (await _refresh(client, victim.refresh_token)).status_code == 401
    assert (await _refresh(client, second["refresh_token"])).status_code == 401
    # Nor can the disabled user log in again.
    assert (await login(client, victim)).status_code == 401
    # Other users are untouched.
    assert (await client.get(ME, headers=admin.headers)).status_code == 200


async def test_re_enabling_a_user_does_not_revive_old_tokens_or_keys(
    client: Any, register: Any, admin: Any, create_key: Any
) -> None:
    victim = await register()
    key = (await create_key(victim.headers))["key"]
    for active in (False, True):
        r = await client.patch(
            f"{API}/admin/users/{victim.id}", json={"is_active": active}, headers=admin.headers
        )
        assert r.status_code == 200
    assert (await client.get(ME, headers=victim.headers)).status_code == 401
    assert (await _refresh(client, victim.refresh_token)).status_code == 401
    assert (await client.get(ME, headers=_key(key))).status_code == 401
    # A fresh login works again.
    r = await login(client, victim)
    assert r.status_code == 200
    fresh = r.json()["data"]["access_token"]
    assert (await client.get(ME, headers=bearer(fresh))).status_code == 200


async def test_a_user_disabled_in_the_database_is_refused_at_once(
    client: Any, register: Any, create_key: Any, core: Any
) -> None:
    """Even without the admin endpoint's revocations, each call re-reads the user."""
    victim = await register()
    key = (await create_key(victim.headers))["key"]
    async with core.db.session() as s:
        await s.execute(update(User).where(User.id == victim.id).values(is_active=False))
        await s.commit()
    assert (await client.get(ME, headers=victim.headers)).status_code == 401
    assert (await client.get(ME, headers=_key(key))).status_code == 401
    assert (await _refresh(client, victim.refresh_token)).status_code == 401


async def test_non_admin_cannot_disable_users(client: Any, register: Any) -> None:
    attacker = await register()
    victim = await register()
    r = await client.patch(
        f"{API}/admin/users/{victim.id}", json={"is_active": False}, headers=attacker.headers
    )
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "FORBIDDEN"
    assert (await client.get(ME, headers=victim.headers)).status_code == 200


# --- removing a member ---------------------------------------------------------------
async def test_removing_a_member_makes_their_keys_bound_to_the_org_fail(
    client: Any, register: Any, create_key: Any
) -> None:
    owner = await register()
    member = await register()
    org = await _org(client, owner)
    await _add_member(client, owner, org["id"], member, "admin")
    bound = (await create_key(member.headers, organisation_id=org["id"]))["key"]
    unbound = (await create_key(member.headers))["key"]
    org_url = f"{API}/organisations/{org['id']}"
    assert (await client.get(org_url, headers=_key(bound))).status_code == 200
    assert (await client.get(org_url, headers=bearer(unbound))).status_code == 200
    assert (await client.get(org_url, headers=member.headers)).status_code == 200

    r = await client.delete(f"{org_url}/members/{member.id}", headers=owner.headers)
    assert r.status_code == 200, r.text

    # The key bound to the organisation is dead for every call, not just for the org.
    for headers in (_key(bound), bearer(bound)):
        assert (await client.get(org_url, headers=headers)).status_code == 401
        assert (await client.get(ME, headers=headers)).status_code == 401
    # The member's own login and unbound key still work, but no longer reach the org.
    assert (await client.get(ME, headers=member.headers)).status_code == 200
    assert (await client.get(ME, headers=_key(unbound))).status_code == 200
    assert (await client.get(org_url, headers=member.headers)).status_code == 404
    assert (await client.get(org_url, headers=_key(unbound))).status_code == 404
    assert (await client.get(f"{org_url}/members", headers=member.headers)).status_code == 404
    # The owner is unaffected.
    assert (await client.get(org_url, headers=owner.headers)).status_code == 200


async def test_removing_a_member_of_a_reseller_ends_their_keys_bound_to_its_children(
    client: Any, register: Any, create_key: Any
) -> None:
    owner = await register()
    staff = await register()
    reseller = await _org(client, owner, name="Hosting Co", kind="reseller")
    await _add_member(client, owner, reseller["id"], staff, "admin")
    r = await client.post(
        f"{API}/organisations/{reseller['id']}/children",
        json={"name": "Customer"},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    child = r.json()["data"]
    key = (await create_key(staff.headers, organisation_id=child["id"]))["key"]
    child_url = f"{API}/organisations/{child['id']}"
    assert (await client.get(child_url, headers=_key(key))).status_code == 200

    r = await client.delete(
        f"{API}/organisations/{reseller['id']}/members/{staff.id}", headers=owner.headers
    )
    assert r.status_code == 200
    assert (await client.get(child_url, headers=_key(key))).status_code == 401
    assert (await client.get(ME, headers=_key(key))).status_code == 401
    assert (await client.get(child_url, headers=staff.headers)).status_code == 404


# --- deleting an organisation --------------------------------------------------------
async def test_deleting_an_organisation_makes_keys_bound_to_it_fail(
    client: Any, register: Any, create_key: Any
) -> None:
    owner = await register()
    member = await register()
    org = await _org(client, owner)
    await _add_member(client, owner, org["id"], member, "member")
    owner_key = (await create_key(owner.headers, organisation_id=org["id"]))["key"]
    member_key = (await create_key(member.headers, organisation_id=org["id"]))["key"]
    org_url = f"{API}/organisations/{org['id']}"
    for headers in (_key(owner_key), _key(member_key), member.headers):
        assert (await client.get(org_url, headers=headers)).status_code == 200

    r = await client.delete(org_url, headers=owner.headers)
    assert r.status_code == 200, r.text

    for raw in (owner_key, member_key):
        for headers in (_key(raw), bearer(raw)):
            assert (await client.get(ME, headers=headers)).status_code == 401
            assert (await client.get(org_url, headers=headers)).status_code == 401
    # Ex-members (and the ex-owner) see it as missing.
    for acct in (member, owner):
        r = await client.get(org_url, headers=acct.headers)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "NOT_FOUND"
        listed = (await client.get(f"{API}/organisations", headers=acct.headers)).json()
        assert org["id"] not in [o["id"] for o in listed["data"]["items"]]
    # Their accounts are otherwise fine.
    assert (await client.get(ME, headers=member.headers)).status_code == 200


async def test_a_member_cannot_delete_the_organisation(
    client: Any, register: Any, create_key: Any
) -> None:
    owner = await register()
    member = await register()
    org = await _org(client, owner)
    await _add_member(client, owner, org["id"], member, "admin")
    key = (await create_key(owner.headers, organisation_id=org["id"]))["key"]
    r = await client.delete(f"{API}/organisations/{org['id']}", headers=member.headers)
    assert r.status_code == 403
    assert (await client.get(ME, headers=_key(key))).status_code == 200


# --- revoking a key --------------------------------------------------------------------
async def test_a_revoked_key_fails_on_the_next_call(
    client: Any, register: Any, create_key: Any
) -> None:
    acct = await register()
    created = await create_key(acct.headers)
    keep = await create_key(acct.headers)
    raw = created["key"]
    assert (await client.get(ME, headers=_key(raw))).status_code == 200
    r = await client.delete(f"{API}/api-keys/{created['id']}", headers=acct.headers)
    assert r.status_code == 200
    assert r.json()["data"]["revoked_at"] is not None
    for headers in (_key(raw), bearer(raw)):
        r = await client.get(ME, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "UNAUTHORIZED"
    # Other keys and the session are untouched.
    assert (await client.get(ME, headers=_key(keep["key"]))).status_code == 200
    assert (await client.get(ME, headers=acct.headers)).status_code == 200


async def test_a_key_can_revoke_itself(client: Any, register: Any, create_key: Any) -> None:
    acct = await register()
    created = await create_key(acct.headers, scopes=["account:read", "account:write"])
    r = await client.delete(f"{API}/api-keys/{created['id']}", headers=_key(created["key"]))
    assert r.status_code == 200
    assert (await client.get(ME, headers=_key(created["key"]))).status_code == 401


async def test_another_users_key_cannot_be_revoked(
    client: Any, register: Any, create_key: Any
) -> None:
    owner = await register()
    attacker = await register()
    created = await create_key(owner.headers)
    r = await client.delete(f"{API}/api-keys/{created['id']}", headers=attacker.headers)
    assert r.status_code == 404
    assert (await client.get(ME, headers=_key(created["key"]))).status_code == 200


# --- changing the password -----------------------------------------------------------
async def _change_password(client: Any, acct: Any, new: str, **extra: Any) -> Any:
    return await client.put(
        f"{API}/users/password",
        json={"current_password": acct.password, "new_password": new, **extra},
        headers=acct.headers,
    )


async def test_changing_the_password_ends_old_tokens_and_the_new_pair_works(
    client: Any, register: Any, create_key: Any
) -> None:
    acct = await register()
    other = (await login(client, acct)).json()["data"]
    key = (await create_key(acct.headers))["key"]

    r = await _change_password(client, acct, "a-brand-new-password")
    assert r.status_code == 200, r.text
    new = r.json()["data"]

    # Old access and refresh tokens, of this session and of the other one, fail.
    for access in (acct.access_token, other["access_token"]):
        assert (await client.get(ME, headers=bearer(access))).status_code == 401
    for refresh in (acct.refresh_token, other["refresh_token"]):
        assert (await _refresh(client, refresh)).status_code == 401
    # The new pair works.
    assert (await client.get(ME, headers=bearer(new["access_token"]))).status_code == 200
    r = await _refresh(client, new["refresh_token"])
    assert r.status_code == 200, r.text
    # Old password out, new password in.
    assert (await login(client, acct)).status_code == 401
    assert (await login(client, acct.email, "a-brand-new-password")).status_code == 200
    # API keys survive unless asked otherwise.
    assert (await client.get(ME, headers=_key(key))).status_code == 200


async def test_changing_the_password_can_revoke_every_api_key(
    client: Any, register: Any, create_key: Any
) -> None:
    acct = await register()
    keys = [(await create_key(acct.headers))["key"] for _ in range(2)]
    r = await _change_password(client, acct, "a-brand-new-password", revoke_api_keys=True)
    assert r.status_code == 200, r.text
    for raw in keys:
        assert (await client.get(ME, headers=_key(raw))).status_code == 401


async def test_changing_the_password_needs_the_current_one(client: Any, register: Any) -> None:
    acct = await register()
    r = await client.put(
        f"{API}/users/password",
        json={"current_password": "not-my-password", "new_password": "a-brand-new-password"},
        headers=acct.headers,
    )
    assert r.status_code == 401
    # Nothing was revoked by the failed attempt.
    assert (await client.get(ME, headers=acct.headers)).status_code == 200
    assert (await login(client, acct)).status_code == 200
