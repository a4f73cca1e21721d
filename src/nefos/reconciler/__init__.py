"""The reconciler: desired state (the database) against what each driver reports.

One pass (``Reconciler.run_once``):

1. Operations whose worker stopped heartbeating for ``operation_lease`` seconds go
   back to pending, so a worker runs them again (their handlers are idempotent):
   that finishes, or fails, what a crash interrupted.
2. For each active host, one ``driver.list()``:
   * an engine container labelled ``nefos.managed`` and with this installation's
     ``nefos.installation``, whose ``nefos.id`` names no replica row, is an orphan
     (made by this Nefos, no longer known) and is destroyed;
   * a replica the engine no longer has is ``missing``; one that stopped behind
     Nefos's back is ``stopped``; its container's status is derived again.
   Containers with an operation in progress are left to it.
   For a libvirt host the same holds of domains and VM rows (``_vm_host``): orphan
   domains are destroyed, a VM whose domain vanished is ``error``, one stopped or
   started behind Nefos's back takes that status; a network this installation made
   whose row is gone is removed (volumes and backups carry no installation label,
   so only Nefos's own deletes remove them).
3. A host that cannot be listed is marked offline; the host checker brings it back
   (and the next pass reconciles it) when it answers again.

``Background`` holds the host checker; the bootstrap (nefos.bootstrap) runs it and
the reconciler on their intervals, in the one process holding each one's lease.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from nefos.db.models import Container, ContainerReplica, Host, Network, Operation, Vm
from nefos.db.session import begin_write
from nefos.domain.lifecycle import Desired, VmStatus
from nefos.drivers.base import LABEL_ID, DriverError, HostUnreachable, InstanceInfo, InstanceState
from nefos.operations import queue
from nefos.services import idempotency
from nefos.services.containers import LABEL_INSTALLATION, derive_status, installation_id
from nefos.services.core import Core
from nefos.services.drivers import VM_DRIVERS, supported_driver
from nefos.services.hosts import ACTIVE, HostService
from nefos.services.vms import SETTLED, seen_status

log = logging.getLogger("nefos.reconciler")

_STATE = {
    InstanceState.RUNNING: "running",
    InstanceState.PAUSED: "running",
    InstanceState.CREATED: "stopped",
    InstanceState.STOPPED: "stopped",
    InstanceState.ERROR: "error",
    InstanceState.MISSING: "missing",
}


@dataclass
class Report:
    requeued: list[str] = field(default_factory=list)
    orphans_removed: list[str] = field(default_factory=list)
    replicas_changed: dict[str, str] = field(default_factory=dict)
    hosts_unreachable: list[str] = field(default_factory=list)


class Reconciler:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._lock = asyncio.Lock()

    async def run_once(self) -> Report:
        async with self._lock:
            report = Report()
            async with self.core.db.sessionmaker() as session:
                report.requeued = await queue.requeue_stale(
                    session, self.core.settings.operation_lease
                )
                await idempotency.prune(session)
            if report.requeued:
                log.warning("requeued interrupted operations: %s", report.requeued)
                self.core.workers.notify()
            async with self.core.db.sessionmaker() as session:
                hosts = (await session.scalars(select(Host).where(Host.status == ACTIVE))).all()
            for host in hosts:
                if supported_driver(host.driver):
                    await self._host(host, report)
            return report

    async def _host(self, host: Host, report: Report) -> None:
        driver = self.core.drivers.for_host(host)
        try:
            listed = await driver.list()
        except DriverError as exc:
            report.hosts_unreachable.append(host.id)
            if not (isinstance(exc, HostUnreachable) and exc.slow):
                # A slow answer is the host checker's to judge, not this pass's.
                async with self.core.db.sessionmaker() as session:
                    await HostService(self.core, session).mark_offline(host.id, exc.message)
            return
        if host.driver in VM_DRIVERS:
            await self._vm_host(host, listed, report)
            return
        mine = installation_id(self.core)
        engine = {i.nefos_id: i for i in listed if i.nefos_id}
        async with self.core.db.sessionmaker() as session:
            busy = set(
                (
                    await session.scalars(select(Operation.lock).where(Operation.lock.is_not(None)))
                ).all()
            )
            replicas = (
                await session.scalars(
                    select(ContainerReplica).where(ContainerReplica.host_id == host.id)
                )
            ).all()
            # Orphans: labelled by Nefos, known to no replica row (on any host).
            unknown = [i for i in engine if i not in {r.id for r in replicas}]
            if unknown:
                known_elsewhere = set(
                    (
                        await session.scalars(
                            select(ContainerReplica.id).where(ContainerReplica.id.in_(unknown))
                        )
                    ).all()
                )
                orphans = [
                    engine[i]
                    for i in unknown
                    if i not in known_elsewhere and engine[i].labels.get(LABEL_INSTALLATION) == mine
                ]
            else:
                orphans = []
        for info in orphans:
            if info.labels.get("nefos.container") in busy:
                continue  # its container's operation may be about to record it
            try:
                await driver.destroy(info.driver_id)
                report.orphans_removed.append(info.labels.get(LABEL_ID, info.driver_id))
                log.warning("removed orphan %s on %s", info.name, host.hostname)
            except DriverError as exc:
                log.warning("could not remove orphan %s: %s", info.name, exc)
        touched: set[str] = set()
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            for r in replicas:
                if r.container_id in busy or r.state == "pending":
                    continue
                row = await session.get(ContainerReplica, r.id, populate_existing=True)
                if row is None:
                    continue
                found = engine.get(r.id)
                seen = "missing" if found is None else _STATE[found.state]
                if row.state == "terminating" and seen == "running":
                    continue  # being drained by a scale: out of traffic until it goes
                if seen != row.state:
                    row.state = seen
                    report.replicas_changed[row.id] = seen
                    touched.add(row.container_id)
            for container_id in touched:
                container = await session.get(Container, container_id, populate_existing=True)
                if container is None:
                    continue
                states = (
                    await session.scalars(
                        select(ContainerReplica.state).where(
                            ContainerReplica.container_id == container_id
                        )
                    )
                ).all()
                container.status, container.status_reason = derive_status(
                    container.desired, list(states)
                )
            await session.commit()

    async def _vm_host(self, host: Host, listed: list[InstanceInfo], report: Report) -> None:
        """VMs: a Nefos domain of this installation with no VM row is an orphan; a VM
        whose domain is gone is ``error``; one that stopped or started behind Nefos's
        back is ``stopped`` or ``running``. VMs with an operation are left to it."""
        mine = installation_id(self.core)
        domains = {i.nefos_id: i for i in listed if i.nefos_id}
        async with self.core.db.sessionmaker() as session:
            busy = set(
                (
                    await session.scalars(select(Operation.lock).where(Operation.lock.is_not(None)))
                ).all()
            )
            vms = (await session.scalars(select(Vm).where(Vm.host_id == host.id))).all()
            unknown = [i for i in domains if i not in {v.id for v in vms}]
            known = (
                set((await session.scalars(select(Vm.id).where(Vm.id.in_(unknown)))).all())
                if unknown
                else set()
            )
        for nefos_id in unknown:
            info = domains[nefos_id]
            if nefos_id in known or nefos_id in busy or info.labels.get(LABEL_INSTALLATION) != mine:
                continue
            try:
                await self.core.drivers.for_host(host).destroy(info.driver_id)
                report.orphans_removed.append(nefos_id)
                log.warning("removed orphan VM domain %s on %s", info.name, host.hostname)
            except DriverError as exc:
                log.warning("could not remove orphan VM %s: %s", info.name, exc)
        await self._orphan_networks(host, mine, report)
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            for v in vms:
                if v.id in busy or v.status not in SETTLED:
                    continue
                row = await session.get(Vm, v.id, populate_existing=True)
                if row is None or row.id in busy or row.status not in SETTLED:
                    continue
                found = domains.get(row.id)
                if found is None:
                    if row.driver_id is None:
                        continue  # never made (a create that failed early)
                    status, reason = VmStatus.ERROR, "the domain was removed outside Nefos"
                else:
                    seen = seen_status(found.state) or VmStatus.ERROR
                    if seen == row.status:
                        continue
                    reason = {
                        "stopped": "stopped outside Nefos",
                        "running": "started outside Nefos",
                        "error": "the domain crashed",
                    }[seen]
                    status = seen
                if (status, reason) != (row.status, row.status_reason):
                    row.status, row.status_reason = status, reason
                    if status in (VmStatus.RUNNING, VmStatus.STOPPED):
                        row.desired = Desired(status.value)
                    report.replicas_changed[row.id] = status
            await session.commit()

    async def _orphan_networks(self, host: Host, mine: str, report: Report) -> None:
        """Networks this installation made on the host whose row is gone (and which no
        domain uses any more) are removed."""
        driver: Any = self.core.drivers.for_host(host)
        try:
            networks = await driver.list_networks({LABEL_INSTALLATION: mine})
        except DriverError as exc:
            log.warning("could not list the networks of %s: %s", host.hostname, exc)
            return
        if not networks:
            return
        async with self.core.db.sessionmaker() as session:
            known = set(
                (
                    await session.scalars(
                        select(Network.id).where(Network.id.in_([n.network_id for n in networks]))
                    )
                ).all()
            )
        for net in networks:
            if net.network_id in known:
                continue
            try:
                await driver.delete_network(net.network_id)
                report.orphans_removed.append(net.name)
                log.warning("removed orphan network %s on %s", net.name, host.hostname)
            except DriverError as exc:
                log.info("orphan network %s kept for now: %s", net.name, exc)


class Background:
    """The host checker, and the reconciler it calls when a host changed. The
    bootstrap runs ``check_hosts`` and ``reconciler.run_once`` on their intervals,
    each under its singleton lease (nefos.operations.leases)."""

    def __init__(self, core: Core, reconciler: Reconciler) -> None:
        self.core = core
        self.reconciler = reconciler

    async def check_hosts(self) -> None:
        async with self.core.db.sessionmaker() as session:
            changed = await HostService(self.core, session).check_all()
        if changed:
            await self.reconciler.run_once()
            self.core.workers.notify()
