"""Placement's one call to the database (``db.batch.run_batch``), on SQLite and
PostgreSQL: statements run in the session's transaction with the columns' defaults
and SQLAlchemy's errors; a placement writes its replica rows with its claims, and a
lost race gives its won claims back; a SQLite connection returned to the pool with
a transaction open is still rolled back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from sqlalchemy import Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from nefos.config import async_database_url
from nefos.db.batch import Statements, run_batch
from nefos.db.models import Container, ContainerReplica, Host, Organisation, Project
from nefos.db.session import Database, begin_write
from nefos.scheduler import PlacementRequest, SchedulerConfig
from nefos.services.placement import Placer, ReplicaRows
from tests.conftest import DatabaseFactory

HOSTS = cast(Table, Host.__table__)
# Soft anti-affinity: a container's replicas may share a host.
CONFIG = SchedulerConfig(anti_affinity="soft")


def _kind() -> str:
    """A driver name of the test's own: the module's database holds other tests' hosts,
    and a placement considers only hosts of the request's driver."""
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
async def database(databases: DatabaseFactory) -> AsyncIterator[Database]:
    url = await asyncio.to_thread(databases.new_url)
    db = Database(async_database_url(url))
    await db.migrate()
    yield db
    await db.dispose()


def _host(name: str, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "hostname": f"{name}-{uuid.uuid4().hex[:8]}",
        "driver": "sim",
        "uri": f"sim://{name}",
        "hypervisor_type": "sim",
        "status": "active",
        "cpu_cores": 4,
        "memory_mb": 4096,
        "storage_gb": 100,
    }
    row.update(kw)
    return row


async def _container(db: Database) -> str:
    async with db.sessionmaker() as session:
        org = Organisation(name="Org", slug=f"org-{uuid.uuid4().hex[:8]}", kind="standard")
        session.add(org)
        await session.flush()
        project = Project(organisation_id=org.id, name="p")
        session.add(project)
        await session.flush()
        container = Container(
            project_id=project.id,
            name=f"c-{uuid.uuid4().hex[:8]}",
            image="x:latest",
            cpu_milli=1000,
            memory_mb=1024,
            status="creating",
        )
        session.add(container)
        await session.commit()
        return container.id


async def test_batch_fills_in_defaults_as_the_orm_does(database: Database) -> None:
    row = _host("defaults")
    before = datetime.now(UTC)
    async with database.sessionmaker() as session:
        await begin_write(session)
        await run_batch(session, lambda db: db.execute(insert(HOSTS), row))
        await session.commit()
    async with database.sessionmaker() as session:
        host = await session.get(Host, row["id"])
    assert host is not None
    # Not given: the columns' defaults, the timestamps aware and in UTC.
    assert (host.enabled, host.used_cpu_milli, host.instance_count) == (True, 0, 0)
    assert host.created_at.tzinfo is not None and host.created_at >= before
    assert host.updated_at >= host.created_at


async def test_batch_runs_in_the_session_transaction(database: Database) -> None:
    orm_row = _host("orm")

    def claim(db: Statements) -> tuple[int, int]:
        guarded = (
            update(HOSTS)
            .where(HOSTS.c.id == orm_row["id"], HOSTS.c.used_cpu_milli + 3000 <= 4000)
            .values(used_cpu_milli=HOSTS.c.used_cpu_milli + 3000)
        )
        return db.execute(guarded, {}), db.execute(guarded, {})

    async with database.sessionmaker() as session:
        await begin_write(session)
        session.add(Host(**orm_row))
        await session.flush()  # the batch sees what the session sent before it
        assert await run_batch(session, claim) == (1, 0)  # the guard holds the second
        await session.rollback()
    async with database.sessionmaker() as session:
        assert await session.get(Host, orm_row["id"]) is None  # rolled back together


async def test_batch_errors_are_sqlalchemys(database: Database) -> None:
    row = _host("twice")
    async with database.sessionmaker() as session:
        await begin_write(session)
        with pytest.raises(IntegrityError):
            await run_batch(session, lambda db: db.executemany(insert(HOSTS), [row, row]))
        await session.rollback()
    async with database.sessionmaker() as session:
        assert await session.get(Host, row["id"]) is None


async def test_allocate_writes_the_replica_rows_with_the_claims(database: Database) -> None:
    container_id = await _container(database)
    kind = _kind()
    row = _host("rows", cpu_cores=64, memory_mb=65536, driver=kind)
    async with database.sessionmaker() as session:
        await begin_write(session)
        await run_batch(session, lambda db: db.execute(insert(HOSTS), row))
        await session.commit()
    placer = Placer(CONFIG)
    request = PlacementRequest(kind, 0.5, 256, 1, count=3, anti_affinity_group=container_id)
    async with database.sessionmaker() as session:
        await begin_write(session)
        allocations = await placer.allocate(
            session, request, replicas=ReplicaRows(container_id, first_slot=2)
        )
        await session.commit()
    async with database.sessionmaker() as session:
        replicas = (
            await session.scalars(
                select(ContainerReplica)
                .where(ContainerReplica.container_id == container_id)
                .order_by(ContainerReplica.slot)
            )
        ).all()
        host = await session.get(Host, row["id"])
    assert [r.id for r in replicas] == [a.replica_id for a in allocations]
    assert [(r.slot, r.state, r.published) for r in replicas] == [
        (2, "pending", []),
        (3, "pending", []),
        (4, "pending", []),
    ]
    assert all(r.host_id == row["id"] and r.cpu_milli == 500 for r in replicas)
    assert host is not None
    assert (host.used_cpu_milli, host.used_memory_mb, host.instance_count) == (1500, 768, 3)


async def test_lost_claim_gives_back_the_won_ones(database: Database) -> None:
    """A stale pool sends one of two replicas to a host another process filled: that
    claim loses, the round's won claim is given back, and both land on the other."""
    container_id = await _container(database)
    kind = _kind()
    full, free = _host("full", driver=kind), _host("free", driver=kind)
    async with database.sessionmaker() as session:
        await begin_write(session)
        await run_batch(session, lambda db: db.executemany(insert(HOSTS), [full, free]))
        await session.commit()
    placer = Placer(CONFIG, max_age=3600.0)
    async with database.sessionmaker() as session:
        await placer._pool_for(session)  # both hosts empty in this placer's view
    async with database.sessionmaker() as session:
        await begin_write(session)
        await session.execute(update(Host).where(Host.id == full["id"]).values(used_memory_mb=4096))
        await session.commit()
    # Soft anti-affinity still spreads the two over both hosts while both have room.
    request = PlacementRequest(kind, 0.5, 1024, 1, count=2, anti_affinity_group=container_id)
    async with database.sessionmaker() as session:
        await begin_write(session)
        allocations = await placer.allocate(session, request, replicas=ReplicaRows(container_id))
        await session.commit()
    assert [a.host_id for a in allocations] == [free["id"], free["id"]]
    assert placer.claims_lost == 1
    async with database.sessionmaker() as session:
        both = await session.scalars(select(Host).where(Host.id.in_([full["id"], free["id"]])))
        hosts = {h.id: (h.used_memory_mb, h.instance_count) for h in both}
        slots = (
            await session.scalars(
                select(ContainerReplica.slot).where(ContainerReplica.container_id == container_id)
            )
        ).all()
    assert hosts == {full["id"]: (4096, 0), free["id"]: (2048, 2)}
    assert sorted(slots) == [0, 1]


async def test_sqlite_connection_returned_in_a_transaction_is_rolled_back(
    database: Database,
) -> None:
    if database.dialect != "sqlite":
        pytest.skip("the pool's reset is replaced on SQLite only")
    row = _host("unfinished")
    async with database.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        aio: Any = raw.driver_connection
        # Behind SQLAlchemy's back: a transaction it does not know of, holding the lock.
        await aio.execute("BEGIN IMMEDIATE")
        await aio.execute(
            "INSERT INTO hosts (id, hostname, driver, uri, hypervisor_type, status, enabled, "
            "cpu_cores, memory_mb, storage_gb, used_cpu_milli, used_memory_mb, "
            "used_storage_gb, instance_count, created_at, updated_at) VALUES "
            "(?, ?, 'sim', 'sim://x', 'sim', 'active', 1, 1, 1, 1, 0, 0, 0, 0, "
            "'2026-01-01 00:00:00', '2026-01-01 00:00:00')",
            (row["id"], row["hostname"]),
        )
        assert aio.in_transaction
    async with database.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert raw.driver_connection is aio  # the same connection, back from the pool
        assert not aio.in_transaction
    async with database.sessionmaker() as session:
        await begin_write(session)  # the write lock is free again
        assert await session.get(Host, row["id"]) is None
        await session.commit()
