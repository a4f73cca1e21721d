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
building the ORM expression anew for every claim cost more than running it (see
docs/benchmarks.md, bench_placement.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

from sqlalchemy import Integer, String, Table, Update, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.config import Settings
from nefos.db.models import ContainerReplica, Host
from nefos.scheduler import HostPool, HostState, NoValidHost, PlacementRequest, SchedulerConfig

#: How often one request re-places after losing a race before giving up.
MAX_RACES = 8


@dataclass(frozen=True, slots=True)
class Allocation:
    host_id: str
    cpu_milli: int
    memory_mb: int
    storage_gb: int


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

    async def allocate(self, session: AsyncSession, request: PlacementRequest) -> list[Allocation]:
        """Claim a host for each replica of ``request`` in ``session``'s transaction.

        Raises ``NoValidHost`` (nothing claimed) when a replica fits nowhere. The
        caller commits; if it rolls back instead it must call :meth:`invalidate`.
        Callers hold :attr:`lock` so this process's pool has one user at a time.
        """
        pool = await self._pool_for(session)
        cpu_milli = round(request.cpus * 1000)
        for _ in range(MAX_RACES):
            placements = pool.place(request)
            lost: list[str] = []
            done: list[str] = []
            for p in placements:
                if await self._claim(session, p.host_id, request, cpu_milli):
                    done.append(p.host_id)
                else:
                    lost.append(p.host_id)
            if not lost:
                return [Allocation(h, cpu_milli, request.memory_mb, request.disk_gb) for h in done]
            # Undo this round's claims in the database and re-read the hosts that lost.
            for host_id in done:
                await self.release(session, host_id, request, pool_only=False)
            for host_id in {p.host_id for p in placements}:
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
        return bool(result.rowcount)  # type: ignore[attr-defined]

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
