"""Keyset pagination (``?cursor=``) and the offset pages beside it, on both databases."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest

from nefos.domain.access import Role
from nefos.services import paging
from tests.api.conftest import V1, World
from tests.conftest import Account


async def _get(world: World, path: str, who: Account, **params: Any) -> Any:
    r = await world.client.get(V1 + path, headers=who.headers, params=params)
    assert r.status_code == 200, r.text
    return r.json()["data"]


async def _refused(world: World, path: str, who: Account, **params: Any) -> dict[str, Any]:
    r = await world.client.get(V1 + path, headers=who.headers, params=params)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["success"] is False and body["error"]["code"] == "VALIDATION_ERROR"
    assert "cursor" in body["error"]["details"]
    return dict(body["error"])


async def _projects(world: World, org_id: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        p = await world.ok(
            "POST",
            "/projects",
            world.owner,
            json={"name": f"p-{uuid.uuid4().hex[:8]}", "organisation_id": org_id},
        )
        ids.append(p["id"])
    return ids


async def _walk(world: World, path: str, who: Account, **params: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    data = await _get(world, path, who, **params)
    for _ in range(100):
        seen += data["items"]
        cursor = data["pagination"]["next_cursor"]
        if cursor is None:
            return seen
        data = await _get(world, path, who, cursor=cursor, **params)
        assert data["pagination"]["page"] is None and data["pagination"]["pages"] is None
    raise AssertionError("the walk did not end")


async def test_a_cursor_walk_yields_every_item_once_in_order(world: World) -> None:
    org = await world.new_org()
    made = await _projects(world, org, 9)
    everything = await _get(world, "/projects", world.owner, organisation_id=org, limit=500)
    ordered = [p["id"] for p in everything["items"]]
    assert ordered == made
    assert everything["pagination"]["next_cursor"] is None

    walked = await _walk(world, "/projects", world.owner, organisation_id=org, limit=2)
    assert [p["id"] for p in walked] == ordered

    first = await _get(world, "/projects", world.owner, organisation_id=org, limit=4)
    assert first["pagination"] == {
        "page": 1,
        "limit": 4,
        "total": 9,
        "pages": 3,
        "next_cursor": first["pagination"]["next_cursor"],
    }
    assert first["pagination"]["next_cursor"]
    after = await _get(
        world,
        "/projects",
        world.owner,
        organisation_id=org,
        limit=4,
        cursor=first["pagination"]["next_cursor"],
    )
    second = await _get(world, "/projects", world.owner, organisation_id=org, limit=4, page=2)
    assert after["items"] == second["items"]
    assert after["pagination"]["total"] == 9


async def test_items_inserted_or_deleted_between_pages_neither_repeat_nor_skip(
    world: World,
) -> None:
    org = await world.new_org()
    await _projects(world, org, 7)
    ordered = [
        p["id"] for p in (await _get(world, "/projects", world.owner, organisation_id=org))["items"]
    ]
    assert len(ordered) == 7

    page1 = await _get(world, "/projects", world.owner, organisation_id=org, limit=3)
    assert [p["id"] for p in page1["items"]] == ordered[:3]
    # Between pages: one seen and one unseen project go, one is made.
    for gone in (ordered[2], ordered[3]):
        await world.ok("DELETE", f"/projects/{gone}", world.owner)
    (new,) = await _projects(world, org, 1)
    # With an offset, page 2 would now skip an item; after the cursor it does not.
    cursor = page1["pagination"]["next_cursor"]
    seen = [p["id"] for p in page1["items"]]
    while cursor is not None:
        data = await _get(
            world, "/projects", world.owner, organisation_id=org, limit=3, cursor=cursor
        )
        seen += [p["id"] for p in data["items"]]
        cursor = data["pagination"]["next_cursor"]
    assert seen == ordered[:3] + ordered[4:] + [new]
    assert len(set(seen)) == len(seen)


async def test_lists_in_newest_first_order_walk_by_cursor_too(world: World) -> None:
    # API keys: created_at descending, id ascending (a mixed order).
    for i in range(4):
        await world.ok(
            "POST", "/api-keys", world.owner, json={"name": f"k{i}", "scopes": ["org:read"]}
        )
    everything = [k["id"] for k in (await _get(world, "/api-keys", world.owner))["items"]]
    assert len(everything) == 5
    walked = await _walk(world, "/api-keys", world.owner, limit=2)
    assert [k["id"] for k in walked] == everything
    # Organisations (ascending), and the /api alias takes the /api/v1 cursor.
    orgs = [o["id"] for o in (await _get(world, "/organisations", world.owner))["items"]]
    assert [o["id"] for o in await _walk(world, "/organisations", world.owner, limit=1)] == orgs
    first = await _get(world, "/organisations", world.owner, limit=1)
    r = await world.client.get(
        "/api/organisations",
        headers=world.owner.headers,
        params={"limit": 1, "cursor": first["pagination"]["next_cursor"]},
    )
    assert r.status_code == 200 and [o["id"] for o in r.json()["data"]["items"]] == orgs[1:2]


async def test_bad_cursors_are_a_422_in_the_envelope(world: World) -> None:
    org = await world.new_org()
    await _projects(world, org, 3)
    data = await _get(world, "/projects", world.owner, organisation_id=org, limit=1)
    good = data["pagination"]["next_cursor"]
    raw = base64.urlsafe_b64decode(good + "=" * (-len(good) % 4))
    forged_raw = raw[:-17] + bytes([raw[-17] ^ 1]) + raw[-16:]  # the payload altered
    forged = base64.urlsafe_b64encode(forged_raw).rstrip(b"=").decode()
    for bad in ("garbage", "", good[:-3], good + "AA", forged, "!!!!", "A" * 2000):
        await _refused(world, "/projects", world.owner, organisation_id=org, cursor=bad)
    # Foreign: another list's, or the same list's with other filters.
    orgs = await _get(world, "/organisations", world.owner, limit=1)
    await _refused(
        world,
        "/projects",
        world.owner,
        cursor=orgs["pagination"]["next_cursor"],
        organisation_id=org,
    )
    await _refused(world, "/projects", world.owner, cursor=good)  # without the filter
    # A cursor with page or skip.
    for extra in ({"page": 1}, {"skip": 0}):
        error = await _refused(
            world, "/projects", world.owner, organisation_id=org, cursor=good, **extra
        )
        assert "page" in error["message"]
    # Another list's cursor on the members list: refused, not its first page again.
    await _refused(world, f"/organisations/{org}/members", world.owner, cursor=good)


async def test_members_walk_by_cursor(world: World) -> None:
    org = await world.new_org()
    for role in (Role.ADMIN, Role.MEMBER, Role.VIEWER):
        await world.add_member(org, await world.register(), role)
    path = f"/organisations/{org}/members"
    everything = await _get(world, path, world.owner, limit=500)
    assert everything["pagination"]["total"] == 4
    walked = await _walk(world, path, world.owner, limit=1)
    assert [m["user_id"] for m in walked] == [m["user_id"] for m in everything["items"]]
    assert walked[0]["user_id"] == world.owner.id and walked[0]["role"] == "owner"


async def test_a_cursor_shows_no_other_tenant_anything(world: World) -> None:
    # A's cursor, in B's hands, is a position in B's own list: the filters are B's.
    mine = await _get(world, "/projects", world.owner, limit=1)
    assert mine["pagination"]["total"] == 3
    cursor = mine["pagination"]["next_cursor"]
    theirs = await _get(world, "/projects", world.other, cursor=cursor, limit=500)
    assert not {p["id"] for p in theirs["items"]} & set(world.a_project_ids)
    assert {p["organisation_id"] for p in theirs["items"]} <= {world.b_org_id}
    # Nor through a filter naming A's organisation.
    a_org = await world.new_org()
    await _projects(world, a_org, 3)
    mine = await _get(world, "/projects", world.owner, organisation_id=a_org, limit=1)
    theirs = await _get(
        world,
        "/projects",
        world.other,
        organisation_id=a_org,
        cursor=mine["pagination"]["next_cursor"],
    )
    assert theirs["items"] == [] and theirs["pagination"]["next_cursor"] is None


async def test_offset_pages_keep_their_shape(world: World) -> None:
    org = await world.new_org()
    await _projects(world, org, 5)
    for params in ({"page": 2, "limit": 2}, {"skip": 2, "limit": 2}):
        data = await _get(world, "/projects", world.owner, organisation_id=org, **params)
        p = data["pagination"]
        assert (p["page"], p["limit"], p["total"], p["pages"]) == (2, 2, 5, 3)
        assert p["next_cursor"]
    last = await _get(world, "/projects", world.owner, organisation_id=org, page=3, limit=2)
    assert last["pagination"]["total"] == 5 and last["pagination"]["next_cursor"] is None
    beyond = await _get(world, "/projects", world.owner, organisation_id=org, page=9, limit=2)
    assert beyond["items"] == [] and beyond["pagination"]["total"] == 5


async def test_kept_counts_and_deep_pages_follow_writes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counts and deep-page starts kept for long lists (here: from 3 rows) are exact
    after every write made through this process."""
    monkeypatch.setattr(paging, "CACHE_FROM", 3)
    org = await world.new_org()
    await _projects(world, org, 10)

    async def pages() -> list[list[str]]:
        out = []
        for n in (1, 2, 3, 4):
            data = await _get(world, "/projects", world.owner, organisation_id=org, page=n, limit=3)
            out.append([p["id"] for p in data["items"]])
        return out

    def expected(ids: list[str]) -> list[list[str]]:
        return [ids[i : i + 3] for i in range(0, 12, 3)]

    async def ordered() -> tuple[list[str], int]:
        data = await _get(world, "/projects", world.owner, organisation_id=org, limit=500)
        return [p["id"] for p in data["items"]], data["pagination"]["total"]

    ids, total = await ordered()
    assert total == 10
    assert await pages() == expected(ids)
    kept = [e for st in paging._states.values() for e in st.entries.values()]
    assert any(e.marks for e in kept) and any(e.total == 10 for e in kept)
    assert await pages() == expected(ids)  # now from the kept starts
    data = await _get(world, "/projects", world.owner, organisation_id=org, page=2, limit=3)
    assert data["pagination"]["total"] == 10

    for gone in (ids[1], ids[4]):
        await world.ok("DELETE", f"/projects/{gone}", world.owner)
    (new,) = await _projects(world, org, 1)
    ids = [i for i in ids if i not in (ids[1], ids[4])] + [new]
    assert await pages() == expected(ids)
    data = await _get(world, "/projects", world.owner, organisation_id=org, page=2, limit=3)
    assert data["pagination"]["total"] == 9
    walked = await _walk(world, "/projects", world.owner, organisation_id=org, limit=3)
    assert [p["id"] for p in walked] == ids
