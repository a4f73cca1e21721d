"""What ``GET /health`` reports: each dependency, checked for real.

* ``database``: a ``SELECT 1``. Required: without it Nefos serves nothing (503).
* ``event_bus``: the bus's pump is running. Required (503).
* ``redis``: a ``PING`` when ``NEFOS_REDIS_URL`` is set, else ``disabled``. Not
  required: while it is away the bus delivers in this process only, so the
  platform is ``degraded``, not down.
* ``hosts``: a ping of every enabled host's driver, at once, each with a short
  timeout; ``degraded`` when some do not answer, ``none`` with no hosts.
* ``orchestrator``: the operation workers of this process (``disabled`` with 0).
* ``billing``: some process holds the ``billing`` lease (so the pass runs there),
  and, when it is this one, its last pass did not fail (``disabled`` when
  ``NEFOS_BILLING_ENABLED`` is false). Not required.
* ``leases`` (beside ``services``): every singleton lease, who holds it and until
  when (nefos.operations.leases), and whether this process is the holder.

Host pings are cached for a few seconds, so that a load balancer polling
``/health`` does not turn into a ping storm on the hypervisors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import select

from nefos.db.models import Host
from nefos.drivers.base import DriverError
from nefos.operations import leases
from nefos.operations.leases import LeaseView, Singleton
from nefos.services.core import Core
from nefos.services.drivers import supported_driver

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
HOST_PING_TIMEOUT = 3.0
HOST_CACHE_SECONDS = 5.0
REQUIRED = ("database", "event_bus")


class Checked(Protocol):
    """What reports its own health (the gateway's rate limiter)."""

    async def check(self) -> str: ...


@dataclass
class HealthReport:
    status: str
    services: dict[str, str]
    hosts: dict[str, str] = field(default_factory=dict)
    leases: list[LeaseView] = field(default_factory=list)
    held_here: set[str] = field(default_factory=set)

    @property
    def http_status(self) -> int:
        return 503 if self.status == UNHEALTHY else 200


class HealthChecker:
    def __init__(
        self,
        core: Core,
        limiter: Checked | None = None,
        singletons: Sequence[Singleton] = (),
    ) -> None:
        self.core = core
        self.limiter = limiter
        self.singletons = {s.name: s for s in singletons}  # this process's leases
        self._hosts: tuple[float, dict[str, str]] | None = None
        self._lock = asyncio.Lock()

    async def report(self) -> HealthReport:
        services: dict[str, str] = {}
        database, bus, redis, hosts, limiter, held = await asyncio.gather(
            self._database(),
            self.core.events.check(),
            self.core.events.check_redis(),
            self._ping_hosts(),
            self._rate_limiter(),
            self._leases(),
        )
        services["database"] = database
        services["event_bus"] = bus
        services["redis"] = redis or "disabled"
        services["orchestrator"] = self._orchestrator()
        services["billing"] = self._billing(held)
        services["rate_limiter"] = limiter
        if database == HEALTHY:
            services["hosts"] = (
                "none"
                if not hosts
                else HEALTHY
                if all(v == HEALTHY for v in hosts.values())
                else DEGRADED
            )
        else:
            services["hosts"] = "unknown"
        if any(services[name] != HEALTHY for name in REQUIRED):
            status = UNHEALTHY
        elif any(v in (UNHEALTHY, DEGRADED) for v in services.values()):
            status = DEGRADED
        else:
            status = HEALTHY
        here = {n for n, s in self.singletons.items() if s.held}
        return HealthReport(
            status=status, services=services, hosts=hosts, leases=held, held_here=here
        )

    async def _database(self) -> str:
        try:
            await asyncio.wait_for(self.core.db.ping(), 5.0)
        except Exception:  # any failure to reach the database means unhealthy
            return UNHEALTHY
        return HEALTHY

    async def _rate_limiter(self) -> str:
        """``disabled``, ``healthy``, or with Redis down ``degraded`` (failing open:
        counted per process) or ``unhealthy`` (failing closed: requests get 503)."""
        return "disabled" if self.limiter is None else await self.limiter.check()

    def _orchestrator(self) -> str:
        if not self.core.settings.workers:
            return "disabled"
        return HEALTHY if self.core.workers.running else UNHEALTHY

    async def _leases(self) -> list[LeaseView]:
        try:
            return await asyncio.wait_for(leases.listing(self.core.db), 5.0)
        except Exception:  # the database check says what went wrong
            return []

    def _billing(self, held: list[LeaseView]) -> str:
        """Healthy while some process holds the billing lease (its pass runs there);
        degraded when that is this process and its last pass failed."""
        if not self.core.settings.billing_enabled:
            return "disabled"
        lease = next((v for v in held if v.name == "billing"), None)
        if lease is None or not lease.live():
            return UNHEALTHY
        mine = self.singletons.get("billing")
        if mine is not None and mine.held and any(p.last_error for p in mine.passes):
            return DEGRADED
        return HEALTHY

    async def _ping_hosts(self) -> dict[str, str]:
        async with self._lock:
            cached = self._hosts
            if cached is not None and time.monotonic() - cached[0] < HOST_CACHE_SECONDS:
                return cached[1]
            try:
                async with self.core.db.sessionmaker() as session:
                    hosts = (
                        await session.scalars(select(Host).where(Host.enabled.is_(True)))
                    ).all()
            except Exception:  # the database check says what went wrong
                return {}
            results = await asyncio.gather(*(self._ping(h) for h in hosts))
            found = {h.hostname: r for h, r in zip(hosts, results, strict=True)}
            self._hosts = (time.monotonic(), found)
            return found

    async def _ping(self, host: Host) -> str:
        if not supported_driver(host.driver):
            return UNHEALTHY
        try:
            driver = self.core.drivers.for_host(host)
            await asyncio.wait_for(driver.ping(), HOST_PING_TIMEOUT)
        except (DriverError, TimeoutError, OSError):
            return UNHEALTHY
        return HEALTHY
