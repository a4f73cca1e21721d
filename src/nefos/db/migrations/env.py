"""Alembic environment: runs on the connection Nefos hands over (see db/session.py)."""

from __future__ import annotations

from alembic import context

from nefos.db.models import SEARCH_TABLE_PREFIX, Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - Nefos always passes its connection
    raise RuntimeError("run migrations through nefos.db.session.Database.migrate()")


def include_object(obj: object, name: str | None, kind: str, reflected: bool, _: object) -> bool:
    """Autogenerate leaves the full-text index's tables alone (each database has its
    own kind, made by hand in migration 0018)."""
    table = name if kind == "table" else getattr(getattr(obj, "table", None), "name", "")
    return not str(table or "").startswith(SEARCH_TABLE_PREFIX)


context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_object=include_object,
)
with context.begin_transaction():
    context.run_migrations()
