"""The cursor codec and what counts as a write for the kept counts (pure parts)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import delete, insert, select, text, update

from nefos.db.models import Operation, Project
from nefos.domain.paging import CursorCodec, InvalidCursor
from nefos.services.paging import _after, _sort_columns, _written

KEY = (datetime(2026, 12, 6, 1, 2, 3, 456789, tzinfo=UTC), "0b7d", 7, Decimal("1.50"), True)


def test_a_cursor_round_trips_its_sort_key_exactly() -> None:
    codec = CursorCodec.for_list("secret", "/projects\norganisation_id=x")
    assert codec.decode(codec.encode(KEY)) == KEY


@pytest.mark.parametrize(
    "other",
    [
        CursorCodec.for_list("another installation", "/projects\norganisation_id=x"),
        CursorCodec.for_list("secret", "/projects\norganisation_id=y"),
        CursorCodec.for_list("secret", "/vms\norganisation_id=x"),
    ],
)
def test_a_cursor_is_refused_by_another_list_filter_or_installation(other: CursorCodec) -> None:
    token = CursorCodec.for_list("secret", "/projects\norganisation_id=x").encode(KEY)
    with pytest.raises(InvalidCursor):
        other.decode(token)


def test_a_key_on_a_mixed_order_bounds_the_first_column() -> None:
    spec = _sort_columns((Operation.created_at.desc(), Operation.id))
    sql = str(select(Operation.id).where(_after(spec, KEY[:2])))
    assert "operations.created_at <=" in sql and "operations.id >" in sql
    spec = _sort_columns((Project.created_at, Project.id))
    assert "(projects.created_at, projects.id) >" in str(
        select(Project.id).where(_after(spec, KEY[:2]))
    )


def test_writes_are_told_apart_from_reads() -> None:
    assert _written(insert(Project)) == {"projects"}
    assert _written(update(Project)) == {"projects"}
    # A delete reaches the rows that cascade from it.
    assert {"projects", "operations", "project_quotas"} <= _written(delete(Project))  # type: ignore[operator]
    assert _written(text("DELETE FROM projects")) is None  # unknown tables: all
    assert _written("TRUNCATE projects") is None
    assert _written(text("SELECT 1")) is False
    assert _written(select(Project)) is False
