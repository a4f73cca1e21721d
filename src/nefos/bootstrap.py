"""The composition root: the parts of one Nefos process, for its role, started and
stopped in order.

``Process.build`` makes every part (no I/O): the ``Core`` infrastructure (database,
event bus, drivers, placer, operation workers, metric store), the metrics collector
with the alert engine listening to it, the billing engine, the webhook dispatcher,
the reconciler and host checker, and the singleton leases that decide which process
runs which loop. ``start`` brings them up in order, ``stop`` takes them down in the
reverse order. The FastAPI lifespan (``nefos.api.app``) only calls these two.

Roles (``NEFOS_ROLE``, ``nefos serve --role``):

* ``all``: everything in one process (the embedded install; SQLite or PostgreSQL).
* ``api``: HTTP only: no operation workers, no loops. Requests that start work
  enqueue operations, which a ``worker`` (or ``all``) process runs.
* ``worker``: operation workers and the singleton loops; its HTTP port serves only
  ``/health``.

Every singleton loop runs under a lease of its own (``nefos.operations.leases``):
``collector`` (samples, and the alert engine on each pass), ``billing``,
``reconciler``, ``host-checks``, ``webhooks`` (the dispatcher), ``retention``
(metric rollups and pruning, the request log's retention) and ``port-mesh`` (the
listeners on containers' fixed host ports, ``nefos.gateway.mesh``). Each ``all``/``worker``
process competes for every lease; one holds each, and another takes over within a
lease period (``NEFOS_LEASE_SECONDS``) of its death. Operation workers claim
operations with leases of their own and run in every ``all``/``worker`` process.

SQLite is one process: ``role=all``, ``processes=1``, and a ``process`` lease that
a second process on the same database finds held (``RoleError``).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text, update

from nefos.billing import metering
from nefos.billing.engine import BillingEngine
from nefos.config import Settings, is_sqlite
from nefos.db.models import Lease
from nefos.db.session import Database, begin_write
from nefos.db.types import utcnow
from nefos.gateway.ingress import Ingress
from nefos.gateway.limiter import RateLimiter
from nefos.gateway.mesh import PortMesh
from nefos.gateway.requestlog import PRUNE_INTERVAL, RequestLog
from nefos.monitoring.alerts import AlertEngine
from nefos.monitoring.collector import MAINTENANCE_INTERVAL, Collector
from nefos.monitoring.servicehealth import TICK, HealthChecker
from nefos.monitoring.webhooks import WebhookDispatcher
from nefos.operations import leases
from nefos.operations.leases import LeaseView, Pass, Singleton
from nefos.reconciler import Background, Reconciler
from nefos.services.containers import ContainerOps
from nefos.services.core import Core
from nefos.services.hosts import HostService
from nefos.services.images import ImageOps
from nefos.services.loadtests import LoadTestOps
from nefos.services.quotes import QuoteOps
from nefos.services.storage import StorageOps
from nefos.services.suspension import suspender
from nefos.services.users import UserService
from nefos.services.vms import VmOps

log = logging.getLogger("nefos")

ROLES = ("all", "api", "worker")
# The whole SQLite database's lease: held by its one process.
PROCESS_LEASE = "process"
# Startup (migrations, the first admin) of several processes at once, one at a time.
STARTUP_LOCK = 0x6E65666F  # "nefo"
STARTUP_LOCK_TIMEOUT = "120s"


class RoleError(Exception):
    """This role, process count and database do not go together (or another process
    already serves this SQLite database): a message for the operator, no traceback."""


def check_role(settings: Settings) -> None:
    """Refuse what SQLite cannot do: more than one process."""
    if not is_sqlite(settings.resolved_database_url):
        return
    if settings.role != "all":
        raise RoleError(
            f"--role {settings.role} needs PostgreSQL: on SQLite Nefos is one process "
            "(--role all). Set NEFOS_DATABASE_URL to a PostgreSQL database to run API "
            "and worker processes apart."
        )
    if settings.processes > 1:
        raise RoleError(
            f"--processes {settings.processes} needs PostgreSQL: SQLite takes one process. "
            "Set NEFOS_DATABASE_URL to a PostgreSQL database to run several."
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _dead_here(holder: str | None) -> bool:
    """Held by a process of this host that is gone (killed)? SQLite's processes are
    all on one host, so the pid says it for certain there."""
    if holder is None:
        return False
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    return host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))


def _same_process(holder: str | None) -> bool:
    if holder is None:
        return False
    host, _, rest = holder.partition(":")
    return host == socket.gethostname() and rest.partition(":")[0] == str(os.getpid())


async def take_from_dead(db: Database, name: str) -> bool:
    """On SQLite: expire a lease whose holder (on this host) is dead, so that it can be
    taken now rather than a period later (a restart after ``kill -9``)."""
    current = await leases.get(db, name)
    if current is None or not current.live() or not _dead_here(current.holder):
        return False
    async with db.sessionmaker() as session:
        await begin_write(session)
        result = await session.execute(
            update(Lease)
            .where(Lease.name == name, Lease.holder == current.holder)
            .where(Lease.token == current.token)
            .values(holder=None, expires_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        await session.commit()
    if result.rowcount:  # type: ignore[attr-defined]
        log.warning("lease %s: its holder %s is gone; taken over now", name, current.holder)
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def check_sqlite_free(db: Database) -> None:
    """Refuse a second process on one SQLite database (RoleError)."""
    await take_from_dead(db, PROCESS_LEASE)
    current = await leases.get(db, PROCESS_LEASE)
    if current is not None and current.live() and not _same_process(current.holder):
        raise RoleError(
            f"another Nefos process ({current.holder}) serves this SQLite database "
            f"(its lease runs until {current.expires_at.isoformat(timespec='seconds')}). "
            "SQLite takes one process: stop that one, or use PostgreSQL for more."
        )


async def preflight(settings: Settings) -> None:
    """What ``nefos serve`` checks before it listens: the role against the database,
    then (SQLite) that no other process serves the database. RoleError if not."""
    check_role(settings)
    if not is_sqlite(settings.resolved_database_url):
        return
    db = Database(settings.resolved_database_url)
    try:
        await db.migrate()
        await check_sqlite_free(db)
    finally:
        await db.dispose()


class _SqliteSingleton(Singleton):
    """A lease on SQLite, where a dead holder's lease is taken over at once."""

    async def _try_acquire(self) -> None:
        try:
            await take_from_dead(self.db, self.name)
        except Exception:
            log.warning("lease %s: cannot look at its holder", self.name, exc_info=True)
        await super()._try_acquire()


@dataclass
class Process:
    """One process's parts; see the module docstring."""

    settings: Settings
    core: Core
    holder: str
    collector: Collector
    alerts: AlertEngine
    billing: BillingEngine
    webhooks: WebhookDispatcher
    reconciler: Reconciler
    background: Background
    health: HealthChecker
    request_log: RequestLog | None = None
    limiter: RateLimiter | None = None
    ingress: Ingress | None = None
    mesh: PortMesh | None = None
    singletons: list[Singleton] = field(default_factory=list)
    created: tuple[Any, str | None] | None = None
    _process_lease: Singleton | None = None
    _started: list[str] = field(default_factory=list)

    @property
    def role(self) -> str:
        return self.settings.role

    @property
    def runs_loops(self) -> bool:
        return self.settings.role in ("all", "worker")

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        request_log: RequestLog | None = None,
        limiter: RateLimiter | None = None,
        ingress: Ingress | None = None,
    ) -> Process:
        check_role(settings)
        core = Core.build(settings)
        if settings.billing_enabled:
            metering.install(core.db)  # usage is metered in every process that writes
        billing = BillingEngine(core, suspend=suspender(core))
        if settings.billing_enabled:
            core.balances = billing  # a top-up through any API process lifts a 402 now
        webhooks = WebhookDispatcher.from_settings(core.db, settings)
        # Alerts: the engine listens to the collector's passes; deliveries of webhooks
        # go out from the dispatcher.
        alerts = AlertEngine(core.db, on_deliveries=webhooks.wake)
        collector = Collector(core)
        collector.listeners.append(alerts)
        reconciler = Reconciler(core)
        process = cls(
            settings=settings,
            core=core,
            holder=leases.new_holder(),
            collector=collector,
            alerts=alerts,
            billing=billing,
            webhooks=webhooks,
            reconciler=reconciler,
            background=Background(core, reconciler),
            health=HealthChecker(core),
            request_log=request_log,
            limiter=limiter,
            ingress=ingress,
            mesh=PortMesh(core.db, settings) if settings.port_mesh_enabled else None,
        )
        process.singletons = process._leases()
        return process

    def _lease(
        self, name: str, passes: Sequence[Pass] = (), services: Sequence[Any] = ()
    ) -> Singleton:
        kind = _SqliteSingleton if self.core.db.is_sqlite else Singleton
        return kind(
            self.core.db,
            name,
            self.holder,
            self.settings.lease_seconds,
            passes=passes,
            services=services,
        )

    def _leases(self) -> list[Singleton]:
        s = self.settings
        retention = [Pass("metrics-maintenance", MAINTENANCE_INTERVAL, self.collector.maintain)]
        if self.request_log is not None:
            retention.append(Pass("request-log-retention", PRUNE_INTERVAL, self.request_log.prune))
        found = [
            self._lease(
                "collector", [Pass("metrics", s.metrics_interval, self.collector.run_once)]
            ),
            self._lease(
                "reconciler", [Pass("reconcile", s.reconcile_interval, self.reconciler.run_once)]
            ),
            self._lease(
                "host-checks",
                [Pass("host-checks", s.host_check_interval, self.background.check_hosts)],
            ),
            self._lease("service-checks", [Pass("service-checks", TICK, self.health.run_once)]),
            self._lease("webhooks", services=[self.webhooks]),
            self._lease("retention", retention),
        ]
        if self.mesh is not None:
            # One process listens on the meshed ports; it closes them when it loses
            # the lease, and the next holder opens them.
            found.append(
                self._lease(
                    "port-mesh",
                    [Pass("port-mesh", s.port_mesh_interval, self.mesh.sync)],
                    services=[self.mesh],
                )
            )
        if s.billing_enabled:
            # The first pass waits one interval: a process starting charges nothing
            # under the feet of what it is starting up.
            found.append(
                self._lease(
                    "billing",
                    [
                        Pass(
                            "billing", s.billing_interval, self.billing.run_once, s.billing_interval
                        )
                    ],
                )
            )
        return found

    # --- life -------------------------------------------------------------------------
    async def start(self) -> None:
        core, s = self.core, self.settings
        await self._setup()
        if core.db.is_sqlite:
            await check_sqlite_free(core.db)
            self._process_lease = self._lease(PROCESS_LEASE)
            await self._process_lease.start()
        await core.events.start()
        self._started.append("events")
        for ops in (ContainerOps, VmOps, QuoteOps, ImageOps, StorageOps, LoadTestOps):
            ops(core).register()  # every process may enqueue; workers run them
        if self.runs_loops:
            if s.register_local_hosts:
                async with core.db.session() as session:
                    hosts = await HostService(core, session).register_local()
                for host in hosts:
                    log.info("local %s host: %s (%s)", host.driver, host.hostname, host.uri)
            if s.workers:
                core.workers.start()
                self._started.append("workers")
            for singleton in self.singletons:
                await singleton.start()
            self._started.append("singletons")
        if self.request_log is not None:
            # The writer runs in every process serving HTTP (each logs its own
            # requests); retention runs under the "retention" lease.
            self.request_log.prune_in_writer = False
            self.request_log.start(core.db)
            self._started.append("request_log")
        if self.limiter is not None:
            self.limiter.start(core)  # it reads tokens and overrides through core
            self._started.append("limiter")
        if self.ingress is not None:
            self.ingress.start(core.db, core.events)
            self._started.append("ingress")
            core.calls.start()  # the gateway's calls, written in groups
            self._started.append("calls")

    async def _setup(self) -> None:
        """Migrations and the first admin. On PostgreSQL under an advisory lock: the
        processes of one installation starting at once do it one at a time."""
        db = self.core.db
        if db.is_sqlite:
            await db.migrate()
            await self._first_admin()
            return
        async with db.engine.connect() as conn:
            await conn.execute(text(f"SET lock_timeout = '{STARTUP_LOCK_TIMEOUT}'"))
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": STARTUP_LOCK})
            await conn.commit()
            try:
                await db.migrate()
                await self._first_admin()
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": STARTUP_LOCK})
                await conn.commit()

    async def _first_admin(self) -> None:
        async with self.core.db.session() as session:
            self.created = await UserService(self.core, session).ensure_admin()

    async def stop(self) -> None:
        """Everything down, the reverse of ``start``; leases released at once. A step
        that fails is logged and the next ones still run."""
        core, started = self.core, self._started
        steps: list[tuple[str, Any]] = []
        if "ingress" in started and self.ingress is not None:
            steps.append(("ingress", self.ingress.stop))
        if "calls" in started:
            steps.append(("gateway calls", core.calls.stop))  # writes what waits
        if "request_log" in started and self.request_log is not None:
            steps.append(("request log", self.request_log.stop))  # writes what is queued
        if "limiter" in started and self.limiter is not None:
            steps.append(("rate limiter", self.limiter.stop))
        if "singletons" in started:
            steps += [(f"lease {s.name}", s.stop) for s in reversed(self.singletons)]
        if "workers" in started:
            steps.append(("operation workers", core.workers.stop))
        if self._process_lease is not None:
            steps.append(("lease process", self._process_lease.stop))
        if "events" in started:
            steps.append(("event bus", core.events.stop))
        steps += [
            ("webhooks", self.webhooks.stop),  # its HTTP client, also where it never ran
            ("health checks", self.health.close),
            ("drivers", core.drivers.close),
            ("database", core.db.dispose),
        ]
        for what, step in steps:
            try:
                await step()
            except Exception:
                log.exception("stopping the %s failed", what)
        self._started = []

    async def leases(self) -> list[LeaseView]:
        """Every lease of the installation (who runs which loop, until when)."""
        return await leases.listing(self.core.db)
