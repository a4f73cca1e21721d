"""Alembic environment: runs on the connection Nefos hands over (see db/session.py)."""

from __future__ import annotations

from alembic import context

from nefos.db.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - Nefos always passes its connection
    raise RuntimeError("run migrations through nefos.db.session.Database.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
