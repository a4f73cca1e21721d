"""Server-owned fields cannot be set through request bodies (mass assignment)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from nefos.db.models import ApiKey, Membership, Organisation, Project, User
from tests.security.conftest import API

SERVER_OWNED = ("role", "organisation_id", "is_admin", "id", "user_id", "balance", "is_active")
CHOSEN_ID = "00000000-0000-4000-8000-000000000001"


@pytest.fixture
async def scene(client: Any, register: Any) -> dict[str, Any]:
    """An attacker, a victim with an organisation, and the values an attacker would send."""
    attacker = await register()
    victim = await register()
    r = await client.post(
        f"{API}/organisations", json={"name": "Victim Co"}, headers=victim.headers
    )
    assert r.status_code == 201
    victim_org = r.json()["data"]["id"]
    values = {
        "role": "owner",
        "organisation_id": victim_org,
        "is_admin": True,
        "id": CHOSEN_ID,
        "user_id": victim.id,
        "balance": "1000000.00",
        "is_active": False,
    }
    return {"attacker": attacker, "victim": victim, "victim_org": victim_org, "values": values}


async def _snapshot(core: Any, model: Any, **where: Any) -> list[dict[str, Any]]:
    """Every column (but ``updated_at``) of the matching rows, straight from the database."""
    async with core.db.session() as s:
        query = select(model).filter_by(**where)
        rows = (await s.scalars(query)).all()
        cols = [c.key for c in model.__table__.columns if c.key != "updated_at"]
        return sorted(
            ({c: getattr(row, c) for c in cols} for row in rows),
            key=lambda d: str(sorted(d.items())),
        )


def _rejected_or_ignored(r: Any, field: str) -> bool:
    """True if rejected with 422 VALIDATION_ERROR naming the field; False if accepted."""
    if r.status_code == 422:
        body = r.json()
        assert body["success"] is False
        assert body["error"]["code"] == "VALIDATION_ERROR"
        assert field in body["error"]["details"], body
        return True
    assert r.status_code in (200, 201), r.text
    return False


async def _count(core: Any, model: Any, **where: Any) -> int:
    async with core.db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(model).filter_by(**where)) or 0)


@pytest.mark.parametrize("field", SERVER_OWNED)
async def test_register_cannot_set_server_owned_fields(
    client: Any, scene: dict[str, Any], core: Any, field: str
) -> None:
    email = f"mass-{field}@example.com"
    r = await client.post(
        f"{API}/auth/register",
        json={"email": email, "password": "long-enough-pw", field: scene["values"][field]},
    )
    if _rejected_or_ignored(r, field):
        assert await _count(core, User, email=email) == 0
        return
    [user] = await _snapshot(core, User, email=email)
    assert user["id"] != CHOSEN_ID
    assert user["is_admin"] is False
    assert user["is_active"] is True
    assert (
        await _count(core, Membership, user_id=user["id"], organisation_id=scene["victim_org"]) == 0
    )


@pytest.mark.parametrize("field", SERVER_OWNED)
async def test_profile_update_cannot_set_server_owned_fields(
    client: Any, scene: dict[str, Any], core: Any, field: str
) -> None:
    attacker = scene["attacker"]
    before = await _snapshot(core, User, id=attacker.id)
    r = await client.put(
        f"{API}/users/profile",
        json={"name": "Renamed", field: scene["values"][field]},
        headers=attacker.headers,
    )
    after = await _snapshot(core, User, id=attacker.id)
    if _rejected_or_ignored(r, field):
        assert after == before
    else:
        changed = {k for k in after[0] if after[0][k] != before[0][k]}
        assert changed <= {"name"}, changed
    assert (
        await _count(core, Membership, user_id=attacker.id, organisation_id=scene["victim_org"])
        == 0
    )


@pytest.mark.parametrize("field", [*SERVER_OWNED, "default_project_id", "password_hash"])
async def test_settings_update_cannot_set_server_owned_fields(
    client: Any, scene: dict[str, Any], core: Any, field: str
) -> None:
    attacker = scene["attacker"]
    before = await _snapshot(core, User, id=attacker.id)
    value = scene["values"].get(field, "x")
    if field == "default_project_id":
        value = scene["victim"].project_id  # allowed field, but not someone else's project
    r = await client.put(f"{API}/users/settings", json={field: value}, headers=attacker.headers)
    assert r.status_code in (404, 422), r.text
    assert await _snapshot(core, User, id=attacker.id) == before


@pytest.mark.parametrize("field", [*SERVER_OWNED, "is_default"])
async def test_project_update_cannot_set_server_owned_fields(
    client: Any, scene: dict[str, Any], core: Any, field: str
) -> None:
    attacker = scene["attacker"]
    r = await client.post(f"{API}/projects", json={"name": "side"}, headers=attacker.headers)
    assert r.status_code == 201
    project_id = r.json()["data"]["id"]
    before = await _snapshot(core, Project, id=project_id)
    victim_projects = await _snapshot(core, Project, organisation_id=scene["victim_org"])
    value = scene["values"].get(field, True)
    r = await client.put(
        f"{API}/projects/{project_id}",
        json={"description": "changed", field: value},
        headers=attacker.headers,
    )
    after = await _snapshot(core, Project, id=project_id)
    if _rejected_or_ignored(r, field):
        assert after == before
    else:
        changed = {k for k in after[0] if after[0][k] != before[0][k]}
        assert changed <= {"description"}, changed
    # The victim's organisation did not gain (or lose) a project.
    assert await _snapshot(core, Project, organisation_id=scene["victim_org"]) == victim_projects


@pytest.mark.parametrize("field", [*SERVER_OWNED, "kind", "parent_id", "is_personal"])
async def test_organisation_update_cannot_set_server_owned_fields(
    client: Any, scene: dict[str, Any], core: Any, field: str
) -> None:
    attacker = scene["attacker"]
    r = await client.post(f"{API}/organisations", json={"name": "Mine"}, headers=attacker.headers)
    org_id = r.json()["data"]["id"]
    before = await _snapshot(core, Organisation, id=org_id)
    members_before = await _snapshot(core, Membership, organisation_id=org_id)
    value = {
        "kind": "reseller",
        "parent_id": scene["victim_org"],
        "is_personal": True,
    }.get(field, scene["values"].get(field))
    r = await client.put(
        f"{API}/organisations/{org_id}",
        json={"description": "changed", field: value},
        headers=attacker.headers,
    )
    after = await _snapshot(core, Organisation, id=org_id)
    if _rejected_or_ignored(r, field):
        assert after == before
    else:
        changed = {k for k in after[0] if after[0][k] != before[0][k]}
        assert changed <= {"description"}, changed
    assert await _snapshot(core, Membership, organisation_id=org_id) == members_before


@pytest.mark.parametrize(
    "field",
    [f for f in SERVER_OWNED if f != "organisation_id"]
    + ["key", "key_hash", "prefix", "revoked_at", "last_used_at", "expires_at", "created_at"],
)
async def test_api_key_creation_cannot_set_server_owned_fields(
    client: Any, scene: dict[str, Any], core: Any, field: str
) -> None:
    attacker, victim = scene["attacker"], scene["victim"]
    value = {
        "key": "nfs_" + "k" * 40,
        "key_hash": "0" * 64,
        "prefix": "nfs_chosen",
        "revoked_at": None,
        "last_used_at": "2020-01-01T00:00:00Z",
        "expires_at": "2999-01-01T00:00:00Z",
        "created_at": "2020-01-01T00:00:00Z",
    }.get(field, scene["values"].get(field))
    victim_keys = await _snapshot(core, ApiKey, user_id=victim.id)
    r = await client.post(
        f"{API}/api-keys",
        json={"name": "k", "scopes": ["account:read"], field: value},
        headers=attacker.headers,
    )
    mine = await _snapshot(core, ApiKey, user_id=attacker.id)
    if _rejected_or_ignored(r, field):
        assert mine == []
    else:
        [key] = mine
        created = r.json()["data"]
        assert key["id"] != CHOSEN_ID
        assert key["user_id"] == attacker.id
        assert key["scopes"] == ["account:read"]
        assert key["expires_at"] is None
        assert created["key"] != value
    assert await _snapshot(core, ApiKey, user_id=victim.id) == victim_keys


async def test_api_key_organisation_id_is_checked_not_trusted(
    client: Any, scene: dict[str, Any], core: Any
) -> None:
    """``organisation_id`` is a real field of a key, but only for the caller's own orgs."""
    r = await client.post(
        f"{API}/api-keys",
        json={"name": "k", "scopes": ["org:read"], "organisation_id": scene["victim_org"]},
        headers=scene["attacker"].headers,
    )
    assert r.status_code == 404
    assert await _snapshot(core, ApiKey, user_id=scene["attacker"].id) == []


@pytest.mark.parametrize("field", ["id", "is_default", "user_id", "balance"])
async def test_project_creation_cannot_set_server_owned_fields(
    client: Any, scene: dict[str, Any], core: Any, field: str
) -> None:
    attacker = scene["attacker"]
    value = scene["values"].get(field, True)
    r = await client.post(
        f"{API}/projects", json={"name": "new", field: value}, headers=attacker.headers
    )
    if _rejected_or_ignored(r, field):
        assert await _count(core, Project, name="new") == 0
    else:
        [p] = await _snapshot(core, Project, name="new")
        assert p["id"] != CHOSEN_ID
        assert p["is_default"] is False


@pytest.mark.parametrize("field", ["id", "parent_id", "is_personal", "role", "balance"])
async def test_organisation_creation_cannot_set_server_owned_fields(
    client: Any, scene: dict[str, Any], core: Any, field: str
) -> None:
    attacker = scene["attacker"]
    value = {"parent_id": scene["victim_org"], "is_personal": True}.get(
        field, scene["values"].get(field)
    )
    r = await client.post(
        f"{API}/organisations", json={"name": "Sneaky", field: value}, headers=attacker.headers
    )
    if _rejected_or_ignored(r, field):
        assert await _count(core, Organisation, name="Sneaky") == 0
    else:
        [o] = await _snapshot(core, Organisation, name="Sneaky")
        assert o["id"] != CHOSEN_ID
        assert o["parent_id"] is None
        assert o["is_personal"] is False
