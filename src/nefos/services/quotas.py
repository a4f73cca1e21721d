"""Project quotas: what a project holds, and the check before anything new is made.

Usage counts the database, not the hosts: ``containers`` is the number of engine
containers (replicas, so a scale cannot dodge it), ``instances`` the number of
VMs; ``vcpus`` and ``memory_gb`` sum both kinds; ``storage_gb`` sums container
storage, VM root disks and volumes. The check runs in the caller's write
transaction, after a lock on the quota row (PostgreSQL) or under SQLite's write
lock, so two concurrent requests of one project cannot both squeeze in.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import Container, ContainerReplica, ProjectQuota, Vm, Volume
from nefos.domain.errors import ResourceExhausted


@dataclass(frozen=True)
class Usage:
    containers: int = 0
    instances: int = 0
    cpu_milli: int = 0
    memory_mb: int = 0
    storage_gb: int = 0


async def project_usage(session: AsyncSession, project_id: str) -> Usage:
    c = (
        await session.execute(
            select(
                func.count(ContainerReplica.id),
                func.coalesce(func.sum(ContainerReplica.cpu_milli), 0),
                func.coalesce(func.sum(ContainerReplica.memory_mb), 0),
                func.coalesce(func.sum(ContainerReplica.storage_gb), 0),
            )
            .join(Container, Container.id == ContainerReplica.container_id)
            .where(Container.project_id == project_id)
        )
    ).one()
    v = (
        await session.execute(
            select(
                func.count(Vm.id),
                func.coalesce(func.sum(Vm.cpu_cores), 0),
                func.coalesce(func.sum(Vm.memory_mb), 0),
                func.coalesce(func.sum(Vm.storage_gb), 0),
            ).where(Vm.project_id == project_id)
        )
    ).one()
    volumes = await session.scalar(
        select(func.coalesce(func.sum(Volume.size_gb), 0)).where(Volume.project_id == project_id)
    )
    return Usage(
        containers=int(c[0]),
        instances=int(v[0]),
        cpu_milli=int(c[1]) + int(v[1]) * 1000,
        memory_mb=int(c[2]) + int(v[2]),
        storage_gb=int(c[3]) + int(v[3]) + int(volumes or 0),
    )


async def check_quota(
    session: AsyncSession,
    project_id: str,
    *,
    containers: int = 0,
    instances: int = 0,
    cpu_milli: int = 0,
    memory_mb: int = 0,
    storage_gb: int = 0,
) -> None:
    """Raise ``ResourceExhausted`` if adding these to the project exceeds a limit."""
    quota = await session.scalar(
        select(ProjectQuota).where(ProjectQuota.project_id == project_id).with_for_update()
    )
    if quota is None:
        return
    used = await project_usage(session, project_id)
    checks = [
        ("containers", quota.containers, used.containers, containers),
        ("instances", quota.instances, used.instances, instances),
        ("vcpus", quota.vcpus, used.cpu_milli / 1000, cpu_milli / 1000),
        ("memory_gb", quota.memory_gb, used.memory_mb / 1024, memory_mb / 1024),
        ("storage_gb", quota.storage_gb, used.storage_gb, storage_gb),
    ]
    for name, limit, current, wanted in checks:
        if wanted <= 0 or limit is None:
            continue
        if current + wanted > limit + 1e-9:
            raise ResourceExhausted(
                f"Project quota exceeded: {name} (limit {limit}, in use "
                f"{round(current, 3)}, requested {round(wanted, 3)})",
                quota=name,
                limit=limit,
                used=round(current, 3),
                requested=round(wanted, 3),
            )
