"""Placement with persisted allocations: the scheduler's choice, made to stick.

``Placer`` keeps the process's view of the fleet in a ``scheduler.HostPool`` and
turns each of its choices into a guarded ``UPDATE`` of the host's ``used_*``
columns, in the caller's transaction::

    UPDATE hosts SET used_cpu_milli = used_cpu_milli + :cpu, ...
     WHERE id = :host AND status = 'active' AND enabled
       AND used_cpu_milli + :cpu <= cpu_cores * :cpu_ratio * 1000
       AND used_memory_mb + :mem <= memory_mb * :mem_ratio - :reserved ...

The database, not the pool, has the last word: when another process (or a stale
pool) made the pool's choice wrong, the ``UPDATE`` matches no row, the pool re-reads
that host and places again. So two concurrent placements never overbook a host, on
SQLite (one writer at a time) and on PostgreSQL (the row lock taken by ``UPDATE``
serialises them and the second re-checks the guard on the new row).

The pool is refreshed from the database when it is older than ``max_age`` seconds,
after any failed transaction (``invalidate``), and host by host after a lost race.

The guarded ``UPDATE`` (and the one that gives resources back) is a Core statement
built once per placement policy, with bind parameters for the host and the sizes:
building the ORM expression anew for every claim cost more than running it. A round
of claims, and the replica rows that go with them (``ReplicaRows``), is one call to
the database connection (``db.batch.run_batch``): on SQLite, one call in aiosqlite's
thread instead of three or four per statement (see docs/benchmarks.md,
bench_placement.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, cast

from sqlalchemy import Integer, String, Table, Update, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.config import Settings
from nefos.db.batch import Statements, run_batch
from nefos.db.models import ContainerReplica, Host
from nefos.db.types import new_id
from nefos.scheduler import HostPool, HostState, NoValidHost, PlacementRequest, SchedulerConfig

#: How often one request re-places after losing a race before giving up.
MAX_RACES = 8


@dataclass(frozen=True, slots=True)
class Allocation:
    host_id: str
    cpu_milli: int
    memory_mb: int
    storage_gb: int
    #: The ``ContainerReplica`` row written with the claim (``allocate(replicas=...)``).
    replica_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReplicaRows:
    """Ask :meth:`Placer.allocate` to write a ``ContainerReplica`` row (state
    ``pending``) per allocation, in slots from ``first_slot``, in the same call to the
    database as the claims. The container's row must exist (flushed) already."""

    container_id: str
    first_slot: int = 0
    generation: int = 1


def scheduler_config(settings: Settings) -> SchedulerConfig:
    return SchedulerConfig(
        cpu_allocation_ratio=settings.cpu_allocation_ratio,
        memory_allocation_ratio=settings.memory_allocation_ratio,
        disk_allocation_ratio=settings.disk_allocation_ratio,
        reserved_host_memory_mb=settings.reserved_host_memory_mb,
        weigher=settings.scheduler_weigher,
        anti_affinity=settings.scheduler_anti_affinity,
    )


_HOSTS = cast(Table, Host.__table__)
_H = _HOSTS.c
# Bind parameter names must differ from the columns' (SQLAlchemy keeps those for SET).
_HOST_ID = bindparam("p_host_id", type_=String)
_CPU = bindparam("p_cpu_milli", type_=Integer)
_MEMORY = bindparam("p_memory_mb", type_=Integer)
_DISK = bindparam("p_disk_gb", type_=Integer)


@lru_cache(maxsize=8)
def claim_statement(c: SchedulerConfig) -> Update:
    """The guarded ``UPDATE`` that claims one replica's resources on a host under
    policy ``c``; it matches no row when the host is not active and enabled or the
    claim would take it past its capacity. Parameters: see :func:`_sizes`.
    ``updated_at`` is set by the column's ``onupdate``."""
    return (
        update(_HOSTS)
        .where(
            _H.id == _HOST_ID,
            _H.status == "active",
            _H.enabled.is_(True),
            _H.used_cpu_milli + _CPU <= _H.cpu_cores * (c.cpu_allocation_ratio * 1000),
            _H.used_memory_mb + _MEMORY
            <= _H.memory_mb * c.memory_allocation_ratio - c.reserved_host_memory_mb,
            _H.used_storage_gb + _DISK
            <= _H.storage_gb * c.disk_allocation_ratio - c.reserved_host_disk_gb,
            (_H.max_instances.is_(None)) | (_H.instance_count < _H.max_instances),
        )
        .values(
            used_cpu_milli=_H.used_cpu_milli + _CPU,
            used_memory_mb=_H.used_memory_mb + _MEMORY,
            used_storage_gb=_H.used_storage_gb + _DISK,
            instance_count=_H.instance_count + 1,
        )
    )


#: Gives one replica's resources back (same parameters as :func:`claim_statement`).
RELEASE = (
    update(_HOSTS)
    .where(_H.id == _HOST_ID)
    .values(
        used_cpu_milli=_H.used_cpu_milli - _CPU,
        used_memory_mb=_H.used_memory_mb - _MEMORY,
        used_storage_gb=_H.used_storage_gb - _DISK,
        instance_count=_H.instance_count - 1,
    )
)


#: Takes one replica's resources back unguarded: only for undoing a release in the same
#: transaction, or putting back what an instance held all along.
RESTORE = (
    update(_HOSTS)
    .where(_H.id == _HOST_ID)
    .values(
        used_cpu_milli=_H.used_cpu_milli + _CPU,
        used_memory_mb=_H.used_memory_mb + _MEMORY,
        used_storage_gb=_H.used_storage_gb + _DISK,
        instance_count=_H.instance_count + 1,
    )
)


_REPLICAS = cast(Table, ContainerReplica.__table__)
#: A replica row with its allocation; the columns' defaults fill in the rest.
INSERT_REPLICA = insert(_REPLICAS)


def _claim_round(
    claim: Update,
    sizes: dict[str, Any],
    hosts: Sequence[str],
    rows: Sequence[dict[str, Any]],
    db: Statements,
) -> tuple[list[str], list[str]]:
    """One round of claims, run in one call to the database: the guarded ``UPDATE``
    per chosen host; then, if every claim matched, the replica rows, and if one did
    not, the won claims given back. The hosts whose claims won and lost."""
    won: list[str] = []
    lost: list[str] = []
    for host_id in hosts:
        sizes["p_host_id"] = host_id
        (won if db.execute(claim, sizes) else lost).append(host_id)
    if lost:
        for host_id in won:
            sizes["p_host_id"] = host_id
            db.execute(RELEASE, sizes)
    else:
        db.executemany(INSERT_REPLICA, rows)
    return won, lost


def _sizes(host_id: str, request: PlacementRequest, cpu_milli: int) -> dict[str, object]:
    return {
        "p_host_id": host_id,
        "p_cpu_milli": cpu_milli,
        "p_memory_mb": request.memory_mb,
        "p_disk_gb": request.disk_gb,
    }


def host_state(host: Host, groups: dict[str, int] | None = None) -> HostState:
    return HostState(
        id=host.id,
        driver=host.driver,
        total_cpus=host.cpu_cores,
        total_memory_mb=host.memory_mb,
        total_disk_gb=host.storage_gb,
        enabled=host.enabled,
        status=host.status,
        used_cpus=host.used_cpu_milli / 1000,
        used_memory_mb=host.used_memory_mb,
        used_disk_gb=host.used_storage_gb,
        instance_count=host.instance_count,
        max_instances=host.max_instances,
        groups=groups or {},
    )


#: What the pool needs of every host, in ``host_state``'s terms.
_POOL_COLUMNS = select(
    _H.id,
    _H.driver,
    _H.cpu_cores,
    _H.memory_mb,
    _H.storage_gb,
    _H.enabled,
    _H.status,
    _H.used_cpu_milli,
    _H.used_memory_mb,
    _H.used_storage_gb,
    _H.instance_count,
    _H.max_instances,
)


class Placer:
    def __init__(self, config: SchedulerConfig, *, max_age: float = 10.0) -> None:
        self.config = config
        self.max_age = max_age
        self._pool: HostPool | None = None
        self._loaded_at = 0.0
        self.lock = asyncio.Lock()
        #: Guarded UPDATEs that matched, and that matched no row (a lost race).
        self.claims_won = 0
        self.claims_lost = 0

    def invalidate(self) -> None:
        self._pool = None

    async def _pool_for(self, session: AsyncSession) -> HostPool:
        if self._pool is None or time.monotonic() - self._loaded_at > self.max_age:
            # Plain rows, not ORM objects: loading thousands of Host instances cost
            # several times as much, inside the caller's write transaction.
            hosts = (await session.execute(_POOL_COLUMNS)).all()
            groups: dict[str, dict[str, int]] = defaultdict(dict)
            rows = await session.execute(
                select(
                    ContainerReplica.host_id, ContainerReplica.container_id, func.count()
                ).group_by(ContainerReplica.host_id, ContainerReplica.container_id)
            )
            for host_id, container_id, n in rows:
                groups[host_id][container_id] = n
            self._pool = HostPool(
                (
                    HostState(
                        id=host_id,
                        driver=driver,
                        total_cpus=cpus,
                        total_memory_mb=memory_mb,
                        total_disk_gb=disk_gb,
                        enabled=enabled,
                        status=status,
                        used_cpus=used_cpu_milli / 1000,
                        used_memory_mb=used_memory_mb,
                        used_disk_gb=used_disk_gb,
                        instance_count=instances,
                        max_instances=max_instances,
                        groups=groups.get(host_id) or {},
                    )
                    for (
                        host_id, driver, cpus, memory_mb, disk_gb, enabled, status,
                        used_cpu_milli, used_memory_mb, used_disk_gb, instances, max_instances,
                    ) in hosts
                ),
                self.config,
            )  # fmt: skip
            self._loaded_at = time.monotonic()
        return self._pool

    async def _reload_host(self, session: AsyncSession, pool: HostPool, host_id: str) -> None:
        host = await session.get(Host, host_id, populate_existing=True)
        if host is None:
            pool.remove(host_id)
            return
        rows = await session.execute(
            select(ContainerReplica.container_id, func.count())
            .where(ContainerReplica.host_id == host_id)
            .group_by(ContainerReplica.container_id)
        )
        pool.update(host_state(host, {c: n for c, n in rows}))

    async def allocate(
        self,
        session: AsyncSession,
        request: PlacementRequest,
        *,
        replicas: ReplicaRows | None = None,
    ) -> list[Allocation]:
        """Claim a host for each replica of ``request`` in ``session``'s transaction,
        and with ``replicas`` write their ``ContainerReplica`` rows too.

        Raises ``NoValidHost`` (nothing claimed, no row written) when a replica fits
        nowhere. The caller commits; if it rolls back instead it must call
        :meth:`invalidate`. Callers hold :attr:`lock` so this process's pool has one
        user at a time.
        """
        pool = await self._pool_for(session)
        cpu_milli = round(request.cpus * 1000)
        sizes: dict[str, Any] = _sizes("", request, cpu_milli)
        claim = claim_statement(self.config)
        # Pending ORM changes go first (the container the replica rows refer to): the
        # claims are Core statements, which do not autoflush.
        await session.flush()
        for _ in range(MAX_RACES):
            hosts = [p.host_id for p in pool.place(request)]
            ids: list[str | None] = [None] * len(hosts)
            rows: list[dict[str, Any]] = []
            if replicas is not None:
                ids = [new_id() for _ in hosts]
                rows = [
                    {
                        "id": ids[i],
                        "container_id": replicas.container_id,
                        "slot": replicas.first_slot + i,
                        "host_id": host_id,
                        "cpu_milli": cpu_milli,
                        "memory_mb": request.memory_mb,
                        "storage_gb": request.disk_gb,
                        "state": "pending",
                        "generation": replicas.generation,
                    }
                    for i, host_id in enumerate(hosts)
                ]
            won, lost = await run_batch(session, partial(_claim_round, claim, sizes, hosts, rows))
            self.claims_won += len(won)
            self.claims_lost += len(lost)
            if not lost:
                return [
                    Allocation(h, cpu_milli, request.memory_mb, request.disk_gb, replica_id)
                    for h, replica_id in zip(hosts, ids, strict=True)
                ]
            # The round's won claims were given back in the database; re-read the hosts.
            for host_id in won:
                pool.release(host_id, request)
            for host_id in set(hosts):
                await self._reload_host(session, pool, host_id)
        raise NoValidHost(hosts=len(pool), rejections={"concurrent placements": len(pool)})

    async def _claim(
        self, session: AsyncSession, host_id: str, request: PlacementRequest, cpu_milli: int
    ) -> bool:
        # Pending ORM changes go first, as the ORM's autoflush did for an ORM UPDATE
        # (a Core statement has none); with nothing pending this costs next to nothing.
        await session.flush()
        result = await session.execute(
            claim_statement(self.config), _sizes(host_id, request, cpu_milli)
        )
        won = bool(result.rowcount)  # type: ignore[attr-defined]
        if won:
            self.claims_won += 1
        else:
            self.claims_lost += 1
        return won

    async def release(
        self,
        session: AsyncSession,
        host_id: str,
        request: PlacementRequest,
        *,
        pool_only: bool = False,
    ) -> None:
        """Give one replica's resources back on ``host_id`` (in the caller's transaction)."""
        if not pool_only:
            cpu_milli = round(request.cpus * 1000)
            await session.flush()  # see _claim
            await session.execute(RELEASE, _sizes(host_id, request, cpu_milli))
        if self._pool is not None:
            self._pool.release(host_id, request)

    async def claim_on(
        self, session: AsyncSession, host_id: str, request: PlacementRequest
    ) -> bool:
        """Claim one instance of ``request`` on this very host (guarded, in the caller's
        transaction); False when it does not fit there. Callers hold :attr:`lock`."""
        if await self._claim(session, host_id, request, round(request.cpus * 1000)):
            self.invalidate()
            return True
        return False

    async def resize(
        self,
        session: AsyncSession,
        host_id: str,
        old: PlacementRequest,
        new: PlacementRequest,
        *,
        guarded: bool = True,
    ) -> bool:
        """Swap an instance's allocation on ``host_id`` from ``old`` to ``new`` in the
        caller's transaction. With ``guarded`` the new size must fit the host (its
        capacity, and the host active and enabled); when it does not, nothing changes
        and the answer is False. Unguarded (undoing an earlier resize) always True."""
        await session.flush()  # see _claim
        await session.execute(RELEASE, _sizes(host_id, old, round(old.cpus * 1000)))
        if not guarded:
            await session.execute(RESTORE, _sizes(host_id, new, round(new.cpus * 1000)))
            self.invalidate()
            return True
        if await self._claim(session, host_id, new, round(new.cpus * 1000)):
            self.invalidate()
            return True
        await session.execute(RESTORE, _sizes(host_id, old, round(old.cpus * 1000)))
        return False

    async def release_many(
        self, session: AsyncSession, replicas: Sequence[ContainerReplica], group: str
    ) -> None:
        for r in replicas:
            await self.release(session, r.host_id, replica_request(r, group))


def replica_request(
    replica: ContainerReplica, group: str, driver: str = "docker"
) -> PlacementRequest:
    return PlacementRequest(
        driver=driver,
        cpus=replica.cpu_milli / 1000,
        memory_mb=replica.memory_mb,
        disk_gb=replica.storage_gb,
        anti_affinity_group=group,
    )
