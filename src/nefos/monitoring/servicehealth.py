"""The service health checker: server-side checks of every instance of every service.

A pass (:meth:`HealthChecker.run_once`, every second under the ``service-checks``
lease) reads which instances exist (container replicas, and VMs that declare a
service port), checks those whose interval is up (each check
bounded by its own timeout, at most ``CONCURRENCY`` at once), and writes what the
results changed in one transaction: each instance's counters, status and bounded
history, and a ``service_health_changed`` event per change of status.

Nothing registers itself: the instances are the replica and VM rows Nefos keeps,
and an instance's health row goes with it (ON DELETE CASCADE). An instance that is
not running is critical at once, whatever the thresholds say (the engine's word is
enough); a running one is checked by its service's check:

* ``http``: a request to the replica's published port (the address and port are
  Nefos's records, the path the tenant's), the status against the expected range;
* ``tcp``: a connection to the published port;
* ``exec``: a command inside the container, through the Engine API's exec;
* ``none``: running is passing (a service that publishes no port).

A VM's checks go to its address on its Nefos network, read from the network's DHCP
leases (libvirt's, not the guest's word) before each check and vetted against the
network's subnet (``domain.publishing.guest_address``); the address found is saved
as the VM's ``ip_address``, where the ingress and load tests find it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from nefos.config import Settings
from nefos.db.models import (
    Container,
    ContainerReplica,
    Host,
    Network,
    ServiceInstanceHealth,
    ServiceSettings,
    Vm,
)
from nefos.db.session import Database, begin_write
from nefos.db.types import utcnow
from nefos.domain.health import (
    CheckSpec,
    Health,
    InstanceState,
    check_from_dict,
    clip,
    default_check,
    exec_result,
    http_result,
)
from nefos.domain.publishing import dial_address, guest_address
from nefos.domain.units import parse_port
from nefos.drivers.base import DriverError
from nefos.drivers.libvirt import domain_name
from nefos.events import EventType, make, record
from nefos.monitoring.collector import HostDrivers

log = logging.getLogger("nefos.monitoring.health")

#: Seconds between passes: each pass checks the instances whose interval is up.
TICK = 1.0
#: Checks in flight at once, all services together.
CONCURRENCY = 200
#: Exec checks in flight at once (each holds a thread while its command runs).
EXEC_CONCURRENCY = 2
#: Bytes of an HTTP check's response body kept as its output.
BODY_LIMIT = 512


class CheckerParts(Protocol):
    @property
    def settings(self) -> Settings: ...
    @property
    def db(self) -> Database: ...
    @property
    def drivers(self) -> HostDrivers: ...


@dataclass(frozen=True, slots=True)
class Target:
    """One instance as a pass sees it: a container replica, or a VM (``vm``)."""

    instance_id: str
    service_id: str
    project_id: str
    state: str  # the replica's state, or the VM's status
    driver_id: str | None
    host: Host
    spec: CheckSpec
    address: str | None
    port: int | None  # the published host port (a VM's: its own port) the check reaches
    vm: bool = False
    subnet: str | None = None  # a VM's network: where its address must lie


@dataclass(frozen=True, slots=True)
class Result:
    health: Health
    output: str
    latency_ms: float | None
    #: A VM's address on its network as this check found it (None: none found).
    address: str | None = None


def _published_port(
    published: Sequence[dict[str, Any]], container_ports: Sequence[str], wanted: int | None
) -> tuple[str | None, int | None]:
    """(published host address, host port) of the check's container port: ``wanted``,
    else the container's first TCP port."""
    if wanted is None:
        tcp = [m for m in map(parse_port, container_ports) if m.protocol == "tcp"]
        if not tcp:
            return None, None
        wanted = tcp[0].container_port
    for p in published:
        if int(p.get("container_port") or 0) == wanted and p.get("protocol", "tcp") == "tcp":
            port = p.get("host_port")
            return p.get("host_ip"), int(port) if port else None
    return None, None


async def lock_live_replicas(session: AsyncSession, targets: Sequence[Target]) -> set[str]:
    """The targets' replicas that still exist, each locked (with its container) until
    the caller's transaction ends, so that its health row can be written.

    The lock order is the one a transaction removing a container takes (the container,
    then its replicas: ``ContainerService.cancel_create``). Left to the new health
    row's two foreign keys, PostgreSQL would lock the replica and the container in its
    own order, and a cancelled create removing both at that moment deadlocked with
    the write. A replica removed meanwhile is not returned (SQLite has one writer and
    no row locks: its ``FOR KEY SHARE`` is not rendered)."""
    if not targets:
        return set()
    containers = sorted({t.service_id for t in targets})
    await session.execute(
        select(Container.id)
        .where(Container.id.in_(containers))
        .order_by(Container.id)
        .with_for_update(key_share=True)
    )
    return set(
        await session.scalars(
            select(ContainerReplica.id)
            .where(ContainerReplica.id.in_(sorted(t.instance_id for t in targets)))
            .order_by(ContainerReplica.id)
            .with_for_update(key_share=True)
        )
    )


class HealthChecker:
    """See the module docstring."""

    def __init__(self, core: CheckerParts) -> None:
        self.core = core
        self._due: dict[str, float] = {}
        self._specs: dict[str, CheckSpec] = {}
        self._inflight: dict[str, asyncio.Task[Result]] = {}
        self._landed: list[tuple[Target, Result]] = []
        # Exec checks hold a thread of the process's pool while they run: two at once.
        self._exec_gate = asyncio.Semaphore(EXEC_CONCURRENCY)
        self._gate = asyncio.Semaphore(CONCURRENCY)
        self._http: httpx.AsyncClient | None = None
        self.passes = 0
        self.checks = 0
        self.lag = 0.0

    # --- a pass -----------------------------------------------------------------------
    async def run_once(self) -> int:
        """Check every instance that is due; how many were checked."""
        targets = await self._load()
        now = time.monotonic()
        first = self.passes == 0
        for t in targets:
            if self._specs.get(t.instance_id) != t.spec:  # new, or its check changed
                self._specs[t.instance_id] = t.spec
                # A process taking the checks over spreads what it inherits over one
                # interval (no burst of every check at once); a new instance, or a
                # changed check, is checked at once.
                self._due[t.instance_id] = (
                    now + random.uniform(0, t.spec.interval) if first else now  # noqa: S311
                )
        # An instance whose last check has not ended yet is not checked again.
        due = [
            t
            for t in targets
            if self._due[t.instance_id] <= now and t.instance_id not in self._inflight
        ]
        # How late the latest of this pass's checks starts (its schedule, not the
        # tick's): the checker keeps up while this stays below a tick or two.
        self.lag = max((now - self._due[t.instance_id] for t in due), default=0.0)
        for t in due:
            self._due[t.instance_id] = now + t.spec.interval
        live = {t.instance_id for t in targets}
        for gone in [k for k in self._due if k not in live]:
            del self._due[gone]
            self._specs.pop(gone, None)
        # Each check runs on its own: a pass saves what ended within half a tick and
        # what ended since the last pass, so a slow check (a long timeout, a port that
        # accepts and never answers) holds up only its own instance.
        started = [self._launch(t) for t in due]
        if started:
            await asyncio.wait(started, timeout=TICK / 2)
        landed, self._landed = self._landed, []
        await self._save_all(landed)
        self.passes += 1
        self.checks += len(landed)
        return len(landed)

    def _launch(self, target: Target) -> asyncio.Task[Result]:
        task = asyncio.create_task(self._check(target), name=f"check-{target.instance_id}")
        self._inflight[target.instance_id] = task

        def landed(done: asyncio.Task[Result]) -> None:
            self._inflight.pop(target.instance_id, None)
            if not done.cancelled() and done.exception() is None:
                self._landed.append((target, done.result()))

        task.add_done_callback(landed)
        return task

    async def _load(self) -> list[Target]:
        async with self.core.db.sessionmaker() as session:
            targets = await self._load_vms(session)
            rows = await session.execute(
                select(ContainerReplica, Container, Host, ServiceSettings.check)
                .join(Container, Container.id == ContainerReplica.container_id)
                .join(Host, Host.id == ContainerReplica.host_id)
                .outerjoin(ServiceSettings, ServiceSettings.id == Container.id)
            )
            for replica, container, host, check in rows:
                spec = check_from_dict(check) if check else default_check(bool(container.ports))
                published_ip, port = _published_port(
                    replica.published or [], container.ports or [], spec.port
                )
                targets.append(
                    Target(
                        instance_id=replica.id,
                        service_id=container.id,
                        project_id=container.project_id,
                        state=replica.state,
                        driver_id=replica.driver_id,
                        host=host,
                        spec=spec,
                        address=dial_address(published_ip, host.ip_address, host.uri),
                        port=port,
                    )
                )
        return targets

    @staticmethod
    async def _load_vms(session: AsyncSession) -> list[Target]:
        rows = await session.execute(
            select(Vm, Host, Network.cidr, ServiceSettings.check)
            .join(Host, Host.id == Vm.host_id)
            .outerjoin(Network, Network.id == Vm.network_id)
            .outerjoin(ServiceSettings, ServiceSettings.id == Vm.id)
            .where(Vm.service_port.is_not(None))
        )
        out = []
        for vm, host, cidr, check in rows:
            spec = check_from_dict(check) if check else default_check(True)
            out.append(
                Target(
                    instance_id=vm.id,
                    service_id=vm.id,
                    project_id=vm.project_id,
                    state=vm.status,
                    driver_id=vm.driver_id or domain_name(vm.id),
                    host=host,
                    spec=spec,
                    address=vm.ip_address,
                    port=spec.port or vm.service_port,
                    vm=True,
                    subnet=cidr,
                )
            )
        return out

    async def _save_all(self, landed: Sequence[tuple[Target, Result]]) -> None:
        """Save the results in one transaction; if a replica went away meanwhile (its
        row, and its health row with it, deleted between our read and our write:
        PostgreSQL reports the foreign key), save them one by one, so that one
        tenant's scale does not cost every other instance its result."""
        if not landed:
            return
        try:
            await self._save([t for t, _ in landed], [r for _, r in landed])
        except (IntegrityError, StaleDataError):
            for target, result in landed:
                try:
                    await self._save([target], [result])
                except (IntegrityError, StaleDataError):
                    log.info("health of %s not saved: its replica is gone", target.instance_id)

    async def _save(
        self,
        due: Sequence[Target],
        results: Sequence[Result],
    ) -> None:
        if not due:
            return
        at = utcnow()
        stamp = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            existing = {
                h.instance_id: h
                for h in await session.scalars(
                    select(ServiceInstanceHealth).where(
                        ServiceInstanceHealth.instance_id.in_([t.instance_id for t in due])
                    )
                )
            }
            live = await lock_live_replicas(session, [t for t in due if not t.vm])
            vms = {
                v.id: v
                for v in await session.scalars(
                    select(Vm).where(Vm.id.in_([t.instance_id for t in due if t.vm]))
                )
            }
            live |= set(vms)
            for target, result in zip(due, results, strict=True):
                if target.instance_id not in live:
                    continue  # removed while it was checked: it left its service
                row = existing.get(target.instance_id)
                if row is None:
                    row = ServiceInstanceHealth.unchecked(
                        target.instance_id, target.service_id, at, vm=target.vm
                    )
                    session.add(row)
                vm = vms.get(target.instance_id)
                if (
                    vm is not None
                    and result.address is not None
                    and target.state == vm.status == "running"
                    and vm.ip_address != result.address
                ):
                    vm.ip_address = result.address
                state = InstanceState(
                    status=Health(row.status),
                    successes=row.successes,
                    failures=row.failures,
                    checks=list(row.checks or []),
                    transitions=list(row.transitions or []),
                )
                spec = target.spec
                if target.state != "running":
                    # The engine's word: no threshold to wait for.
                    spec = CheckSpec(type="none", rise=1, fall=1)
                before = state.status
                changed = state.record(result.health, result.output, stamp, result.latency_ms, spec)
                row.status = state.status.value
                row.successes, row.failures = state.successes, state.failures
                row.checks, row.transitions = state.checks, state.transitions
                row.output = clip(result.output)
                row.checked_at = at
                if changed is not None:
                    row.changed_at = at
                    if not row.maintenance:
                        record(
                            session,
                            make(
                                EventType.SERVICE_HEALTH,
                                {
                                    "service_id": target.service_id,
                                    "instance_id": target.instance_id,
                                    "from": before.value,
                                    "to": changed.value,
                                    "output": clip(result.output),
                                },
                                project_id=target.project_id,
                            ),
                        )
            await session.commit()

    # --- one check --------------------------------------------------------------------
    async def _check(self, t: Target) -> Result:
        if t.state != "running":
            return Result(Health.CRITICAL, f"{'VM' if t.vm else 'replica'} is {t.state}", None)
        spec = t.spec
        async with self._gate:
            started = time.perf_counter()
            try:
                if t.vm:
                    # The lease read now; if it finds none (the read failed, or the
                    # lease is being renewed), the last address vetted stands.
                    found = await asyncio.wait_for(self._vm_address(t), spec.timeout)
                    t = dataclasses.replace(t, address=found or t.address)
                result = await asyncio.wait_for(self._probe(t, spec), spec.timeout)
            except TimeoutError:
                return Result(
                    Health.CRITICAL,
                    f"timed out after {spec.timeout:g} s",
                    (time.perf_counter() - started) * 1000,
                    t.address,
                )
            except Exception as exc:  # an unreachable instance is a result, not a crash
                return Result(
                    Health.CRITICAL,
                    f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                    (time.perf_counter() - started) * 1000,
                    t.address,
                )
            return Result(result[0], result[1], (time.perf_counter() - started) * 1000, t.address)

    async def _vm_address(self, t: Target) -> str | None:
        """The VM's address on its network now, from the network's leases, vetted."""
        driver = self.core.drivers.for_host(t.host)
        leases = getattr(driver, "guest_addresses", None)
        if leases is None:
            return None
        try:
            found = await leases(t.driver_id or domain_name(t.instance_id))
        except DriverError:
            return None
        return guest_address(found, t.subnet)

    async def _probe(self, t: Target, spec: CheckSpec) -> tuple[Health, str]:
        if spec.type == "none":
            return Health.PASSING, f"{'VM' if t.vm else 'replica'} is running"
        if t.vm and spec.type == "exec":
            return Health.CRITICAL, "a VM runs no command check (use http, tcp or none)"
        if t.vm and not t.address:
            return Health.CRITICAL, (
                "the VM has no address on its network yet"
                if t.subnet
                else "the VM is on no Nefos network with a subnet: Nefos cannot reach it"
            )
        if spec.type == "exec":
            driver = self.core.drivers.for_host(t.host)
            if not driver.capabilities.supports_exec:
                return Health.CRITICAL, f"{driver.name} hosts cannot run a command check"
            try:
                async with self._exec_gate:
                    done = await driver.exec(
                        t.driver_id or f"nefos-{t.instance_id}", spec.command, deadline=spec.timeout
                    )
            except DriverError as exc:
                return Health.CRITICAL, str(exc)
            return exec_result(done.exit_code), f"exit {done.exit_code}: {done.output}"
        if not t.address or t.port is None:
            return Health.CRITICAL, "the checked port is not published"
        if spec.type == "tcp":
            _, writer = await asyncio.open_connection(t.address, t.port)
            writer.close()
            return Health.PASSING, f"TCP connect {t.address}:{t.port}: success"
        return await self._http_probe(t.address, t.port, spec)

    async def _http_probe(self, address: str, port: int, spec: CheckSpec) -> tuple[Health, str]:
        if self._http is None:
            # No redirects (a check says what this instance answers, not where it
            # points), no proxies from the environment, no connection reuse across
            # instances needed beyond the pool's own.
            self._http = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                limits=httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=0),
            )
        path, _, query = spec.path.partition("?")
        url = httpx.URL(scheme="http", host=address, port=port, path=path, query=query.encode())
        async with self._http.stream(
            spec.method, url, timeout=spec.timeout, headers={"User-Agent": "nefos-health-check"}
        ) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= BODY_LIMIT:
                    break
        text = bytes(body[:BODY_LIMIT]).decode("utf-8", errors="replace")
        return (
            http_result(response.status_code, spec),
            f"HTTP {spec.method} {spec.path}: {response.status_code} {text}",
        )

    async def close(self) -> None:
        running = list(self._inflight.values())
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=5)
        if self._http is not None:
            await self._http.aclose()
            self._http = None
