"""The SDK's keyset iteration: every item once, in order, over many pages."""

from __future__ import annotations

from typing import Any

import pytest

from nefos.sdk import TooManyPagesError, ValidationError, iterate


def test_iterate_follows_next_cursor_to_the_end(new_user: Any) -> None:
    c = new_user()
    org = c.organisations.create(name="Iterate Inc")
    made = [c.projects.create(name=f"p{i}", organisation_id=org.id).id for i in range(7)]

    walked = [p.id for p in iterate(c.projects.list, organisation_id=org.id, limit=3)]
    assert walked == made

    # Pages by hand: the cursor, and what it says about the page.
    page = c.projects.list(organisation_id=org.id, limit=3)
    assert page.pagination.total == 7 and page.pagination.next_cursor
    after = c.projects.list(organisation_id=org.id, limit=3, cursor=page.pagination.next_cursor)
    assert [p.id for p in after.items] == made[3:6]
    assert after.pagination.page is None and after.pagination.pages is None

    # A list of another shape: newest first (API keys), by position arguments.
    for i in range(3):
        c.api_keys.create(name=f"k{i}", scopes=["org:read"])
    keys = [k.id for k in c.api_keys.list(limit=500).items]
    assert [k.id for k in iterate(c.api_keys.list, limit=1)] == keys
    assert [o.id for o in iterate(c.organisations.list_children, org.id)] == []


def test_iterate_stops_at_max_pages(new_user: Any) -> None:
    c = new_user()
    org = c.organisations.create(name="Bounded Inc")
    made = [c.projects.create(name=f"p{i}", organisation_id=org.id).id for i in range(5)]
    seen: list[str] = []
    with pytest.raises(TooManyPagesError) as caught:
        for p in iterate(c.projects.list, organisation_id=org.id, limit=2, max_pages=2):
            seen.append(p.id)
    assert seen == made[:4]
    rest = iterate(
        c.projects.list, organisation_id=org.id, limit=2, cursor=caught.value.next_cursor
    )
    assert [p.id for p in rest] == made[4:]


def test_a_bad_cursor_is_a_validation_error(new_user: Any) -> None:
    c = new_user()
    with pytest.raises(ValidationError) as caught:
        c.projects.list(cursor="not-a-cursor")
    assert "cursor" in caught.value.details
