"""Models and Alembic migrations must describe the same schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from nefos.db.models import SEARCH_TABLE_PREFIX, Base


def include_object(obj, name, kind, reflected, compare_to) -> bool:  # type: ignore[no-untyped-def]
    """The full-text index's tables are each database's own (migration 0018)."""
    table = name if kind == "table" else getattr(getattr(obj, "table", None), "name", "")
    return not str(table or "").startswith(SEARCH_TABLE_PREFIX)


async def test_migrations_match_the_models(app) -> None:
    db = app.state.core.db

    def diff(conn):
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": include_object}
        )
        return compare_metadata(ctx, Base.metadata)

    async with db.engine.connect() as conn:
        changes = await conn.run_sync(diff)
    assert changes == [], f"models and migrations differ; add a migration: {changes}"


async def test_migrating_twice_is_a_no_op(app) -> None:
    db = app.state.core.db
    await db.migrate()
    async with db.engine.connect() as conn:
        heads = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    assert len(heads) == 1
