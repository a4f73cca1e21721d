"""The collector: every ``metrics_interval``, one sample of everything that runs.

A pass (:meth:`Collector.run_once`) reads from the database which hosts are
active and which container replicas and VMs run on them, then asks every host at
once (one ``counters`` call for its instances and one ``host_usage`` call, each
bounded by ``host_timeout``: a host that hangs costs its own samples, never the
pass). Rates (cpu %, bytes per second) come from the difference between this
read of a counter and the previous pass's, so an instance's first pass gives its
memory only. The samples are stored (``MetricStore.write``), a ``metrics_update``
event goes out per container and VM (seed 004's shape), and then each registered
:class:`~nefos.monitoring.types.SampleListener` (the alert engine) gets them.

A container with several replicas is one series: its cpu % is of all its
replicas' CPUs together, its memory and network the sums.

Driver calls run in threads (docker) or daemon threads (libvirt), so a pass
never blocks the event loop; passes never overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import select

from nefos.config import Settings
from nefos.db.models import Container, ContainerReplica, Host, Vm
from nefos.db.session import Database
from nefos.drivers.base import ComputeDriver, HostUsage, InstanceCounters
from nefos.drivers.libvirt import domain_name
from nefos.events import Event, EventType, make
from nefos.events.bus import EventBus
from nefos.monitoring.store import MetricStore
from nefos.monitoring.types import Metric, ResourceKind, Sample, SampleListener, usage_figures

log = logging.getLogger("nefos.monitoring")

ACTIVE_HOST = "active"
#: How often rollup and pruning run (seconds).
MAINTENANCE_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class _Target:
    """One instance to read: a container replica or a VM."""

    kind: ResourceKind
    resource_id: str  # the Nefos resource (a container, a VM)
    key: str  # what the previous read is kept under (a replica or VM id)
    instance_id: str  # the driver's name for it
    project_id: str


@dataclass
class _Usage:
    """One instance's usage over the last interval (rates None on a first read)."""

    counters: InstanceCounters
    cpu_percent: float | None = None
    rates: dict[Metric, float] = field(default_factory=dict)


def _rate(now: int, before: int, seconds: float) -> float | None:
    return (now - before) / seconds if now >= before else None  # a reset: no rate


def usage_between(previous: InstanceCounters | None, now: InstanceCounters) -> _Usage:
    """The rates between two reads of one instance's counters."""
    usage = _Usage(now)
    if previous is None or not (now.running and previous.running):
        return usage
    seconds = now.read_at - previous.read_at
    if seconds <= 0:
        return usage
    cpu = _rate(now.cpu_time_ns, previous.cpu_time_ns, seconds)
    if cpu is not None:
        usage.cpu_percent = min(max(cpu / 1e9 / max(now.cpus, 1e-3) * 100.0, 0.0), 100.0)
    for metric, a, b in (
        (Metric.NET_RX_BPS, now.net_rx_bytes, previous.net_rx_bytes),
        (Metric.NET_TX_BPS, now.net_tx_bytes, previous.net_tx_bytes),
        (Metric.DISK_READ_BPS, now.disk_read_bytes, previous.disk_read_bytes),
        (Metric.DISK_WRITE_BPS, now.disk_write_bytes, previous.disk_write_bytes),
    ):
        rate = _rate(a, b, seconds)
        if rate is not None:
            usage.rates[metric] = rate
    return usage


def host_cpu_percent(previous: HostUsage | None, now: HostUsage) -> float | None:
    if previous is None or None in (
        previous.cpu_busy_ns,
        previous.cpu_total_ns,
        now.cpu_busy_ns,
        now.cpu_total_ns,
    ):
        return None
    assert now.cpu_busy_ns is not None and previous.cpu_busy_ns is not None
    assert now.cpu_total_ns is not None and previous.cpu_total_ns is not None
    total = now.cpu_total_ns - previous.cpu_total_ns
    busy = now.cpu_busy_ns - previous.cpu_busy_ns
    if total <= 0 or busy < 0:
        return None
    return min(max(busy / total * 100.0, 0.0), 100.0)


class HostDrivers(Protocol):
    def for_host(self, host: Host) -> ComputeDriver: ...


class CollectorParts(Protocol):
    """What the collector uses of the process (the composition root hands it these;
    ``Core`` has them all)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def db(self) -> Database: ...
    @property
    def drivers(self) -> HostDrivers: ...
    @property
    def events(self) -> EventBus: ...
    @property
    def metrics(self) -> MetricStore: ...


class Collector:
    """Samples hosts, VMs and containers; see the module docstring."""

    def __init__(self, core: CollectorParts) -> None:
        self.core = core
        self.listeners: list[SampleListener] = []
        self._previous: dict[str, InstanceCounters] = {}
        self._host_previous: dict[str, HostUsage] = {}
        self._lock = asyncio.Lock()
        self._last_ms = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.passes = 0

    # --- running ------------------------------------------------------------------------
    def start(self) -> None:
        """Sample every ``metrics_interval``; roll up and prune every minute."""
        interval = self.core.settings.metrics_interval
        self._tasks = [
            asyncio.create_task(self._every(interval, self.run_once), name="metrics-collector"),
            asyncio.create_task(
                self._every(MAINTENANCE_INTERVAL, self.maintain), name="metrics-maintenance"
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    async def _every(self, interval: float, job: object) -> None:
        assert callable(job)
        while True:
            started = time.monotonic()
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("metrics job %s failed", getattr(job, "__name__", job))
            await asyncio.sleep(max(interval - (time.monotonic() - started), 0.0))

    async def maintain(self, now: datetime | None = None) -> None:
        """Roll up closed buckets, then prune past retention."""
        await self.core.metrics.rollup(now)
        await self.core.metrics.prune(now)

    # --- one pass -----------------------------------------------------------------------
    async def run_once(self) -> list[Sample]:
        """One pass over every active host; the samples it stored."""
        async with self._lock:
            return await self._pass()

    async def _pass(self) -> list[Sample]:
        hosts, targets = await self._load()
        reads = await asyncio.gather(*(self._read_host(h, targets.get(h.id, [])) for h in hosts))
        stamp_ms = max(int(time.time() * 1000), self._last_ms + 1)
        self._last_ms = stamp_ms
        ts = datetime.fromtimestamp(stamp_ms / 1000, UTC)

        samples: list[Sample] = []
        per_resource: dict[tuple[ResourceKind, str], list[_Usage]] = {}
        projects: dict[str, str] = {}
        seen: set[str] = set()
        for host, (usage, counters) in zip(hosts, reads, strict=True):
            if usage is not None:
                samples.extend(self._host_samples(host, usage, ts))
            for target in targets.get(host.id, []):
                now = counters.get(target.instance_id)
                if now is None:
                    continue
                seen.add(target.key)
                per_resource.setdefault((target.kind, target.resource_id), []).append(
                    usage_between(self._previous.get(target.key), now)
                )
                projects[target.resource_id] = target.project_id
                self._previous[target.key] = now
        # Forget instances that are gone, so the map does not grow forever.
        for key in set(self._previous) - seen:
            del self._previous[key]

        events = []
        for (kind, resource_id), usages in per_resource.items():
            got = resource_samples(kind, resource_id, projects[resource_id], usages, ts)
            samples.extend(got)
            events.append(metrics_event(kind, resource_id, projects[resource_id], got))

        if samples:
            await self.core.metrics.write(samples)
        for event in events:
            self.core.events.publish(event)
        for listener in list(self.listeners):
            try:
                await listener.on_samples(samples)
            except Exception:
                log.exception("metrics listener %r failed", listener)
        self.passes += 1
        return samples

    async def _load(self) -> tuple[list[Host], dict[str, list[_Target]]]:
        async with self.core.db.sessionmaker() as session:
            hosts = list(
                await session.scalars(
                    select(Host).where(Host.status == ACTIVE_HOST).order_by(Host.id)
                )
            )
            replicas = await session.execute(
                select(ContainerReplica, Container.project_id)
                .join(Container, Container.id == ContainerReplica.container_id)
                .where(ContainerReplica.state == "running")
            )
            vms = await session.scalars(select(Vm).where(Vm.status == "running"))
            targets: dict[str, list[_Target]] = {}
            for replica, project_id in replicas:
                targets.setdefault(replica.host_id, []).append(
                    _Target(
                        ResourceKind.CONTAINER,
                        replica.container_id,
                        replica.id,
                        replica.driver_id or f"nefos-{replica.id}",
                        project_id,
                    )
                )
            for vm in vms:
                targets.setdefault(vm.host_id, []).append(
                    _Target(
                        ResourceKind.VM,
                        vm.id,
                        vm.id,
                        vm.driver_id or domain_name(vm.id),
                        vm.project_id,
                    )
                )
        return hosts, targets

    async def _read_host(
        self, host: Host, targets: Sequence[_Target]
    ) -> tuple[HostUsage | None, dict[str, InstanceCounters]]:
        """The host's usage and its instances' counters; nothing if it fails."""
        timeout = self.core.settings.host_timeout
        driver = self.core.drivers.for_host(host)
        usage: HostUsage | None = None
        counters: dict[str, InstanceCounters] = {}
        ids = [t.instance_id for t in targets]

        # The driver's coroutines are made inside the tasks gather starts: a pass
        # cancelled before they run then leaves no coroutine behind never awaited.
        async def read_usage() -> HostUsage | None:
            return await asyncio.wait_for(driver.host_usage(), timeout)

        async def read_counters() -> dict[str, InstanceCounters]:
            if not ids or not driver.capabilities.supports_stats:
                return {}
            return await asyncio.wait_for(driver.counters(ids), timeout)

        got = await asyncio.gather(read_usage(), read_counters(), return_exceptions=True)
        if isinstance(got[0], BaseException):
            log.warning("host %s usage: %s", host.hostname, got[0])
        else:
            usage = got[0]
        if isinstance(got[1], BaseException):
            log.warning("host %s counters: %s", host.hostname, got[1])
        else:
            counters = got[1]
        return usage, counters

    def _host_samples(self, host: Host, usage: HostUsage, ts: datetime) -> list[Sample]:
        def sample(metric: Metric, value: float) -> Sample:
            return Sample(ResourceKind.HOST, host.id, metric, float(value), ts)

        out = [sample(Metric.MEMORY_BYTES, usage.memory_used_bytes)]
        if usage.memory_total_bytes:
            out.append(
                sample(
                    Metric.MEMORY_PERCENT,
                    usage.memory_used_bytes / usage.memory_total_bytes * 100.0,
                )
            )
        cpu = host_cpu_percent(self._host_previous.get(host.id), usage)
        if cpu is not None:
            out.append(sample(Metric.CPU_PERCENT, cpu))
        self._host_previous[host.id] = usage
        return out


def resource_samples(
    kind: ResourceKind,
    resource_id: str,
    project_id: str,
    usages: Sequence[_Usage],
    ts: datetime,
) -> list[Sample]:
    """One resource's samples from its instances' usages (a container's replicas)."""

    def sample(metric: Metric, value: float) -> Sample:
        return Sample(kind, resource_id, metric, float(value), ts, project_id)

    running = [u for u in usages if u.counters.running]
    memory = sum(u.counters.memory_bytes for u in running)
    limit = sum(u.counters.memory_limit_bytes for u in running)
    out = [sample(Metric.MEMORY_BYTES, memory)]
    if limit:
        out.append(sample(Metric.MEMORY_PERCENT, memory / limit * 100.0))
    timed = [u for u in running if u.cpu_percent is not None]
    if timed:
        cpus = sum(u.counters.cpus for u in timed)
        busy = sum((u.cpu_percent or 0.0) * u.counters.cpus for u in timed)
        out.append(sample(Metric.CPU_PERCENT, busy / cpus if cpus else 0.0))
    for metric in (
        Metric.NET_RX_BPS,
        Metric.NET_TX_BPS,
        Metric.DISK_READ_BPS,
        Metric.DISK_WRITE_BPS,
    ):
        rates = [u.rates[metric] for u in running if metric in u.rates]
        if rates:
            out.append(sample(metric, sum(rates)))
    return out


def metrics_event(
    kind: ResourceKind, resource_id: str, project_id: str, samples: Sequence[Sample]
) -> Event:
    """Seed 004's ``metrics_update``: ``{container_id | vm_id, metrics: {cpu_usage,
    memory_usage, network_io}}`` (usage in %, network as a rate string), plus the
    raw numbers."""
    values = {str(s.metric): s.value for s in samples}
    key = "container_id" if kind is ResourceKind.CONTAINER else "vm_id"
    return make(
        EventType.METRICS,
        {key: resource_id, "metrics": usage_figures(values)},
        project_id=project_id,
    )
