"""Reading metrics: series of one VM, container or host; platform summaries; the
Prometheus text exposition. The collector (``nefos.monitoring.collector``) writes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import Container, ContainerReplica, Host, Project, Vm
from nefos.domain.errors import NotFound
from nefos.domain.units import human_rate
from nefos.monitoring.prometheus import HOST_FAMILIES, INSTANCE_FAMILIES, Exposition
from nefos.monitoring.store import Row, Series, from_ms
from nefos.monitoring.types import Metric, ResourceKind, usage_figures
from nefos.services.analytics import request_totals
from nefos.services.core import Core
from nefos.services.principal import Principal, visible_org_ids

#: What ``GET /containers/{id}/metrics?period=`` accepts (seed 004).
PERIODS: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
INSTANCE_METRICS = tuple(Metric)
HOST_METRICS = (Metric.CPU_PERCENT, Metric.MEMORY_PERCENT, Metric.MEMORY_BYTES)


def iso(ms: int) -> str:
    return from_ms(ms).strftime("%Y-%m-%dT%H:%M:%SZ")


def points(series: Series, metric: Metric) -> list[dict[str, Any]]:
    """``{timestamp, value}``; a 1m or 1h bucket's point (value: its average) also
    has ``max``, its highest sample."""
    return [
        {"timestamp": iso(p.ts), "value": round(p.value, 3)}
        if p.max is None
        else {"timestamp": iso(p.ts), "value": round(p.value, 3), "max": round(p.max, 3)}
        for p in series.points[metric.value]
    ]


def series_body(
    series: Series, metrics: Sequence[Metric], start: datetime, end: datetime
) -> dict[str, Any]:
    return {
        "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "resolution": series.resolution.value,
        "step_seconds": series.step_seconds,
        "metrics": {m.value: points(series, m) for m in metrics},
    }


class RequestStats(Protocol):
    """The gateway's request counters, as the summaries read them."""

    total: int
    client_errors: int
    server_errors: int

    def requests_per_second(self) -> float: ...

    def error_rate(self) -> float: ...


class DropCounts(Protocol):
    """The request log's drops by reason (``queue_full``, ``write_failed``)."""

    dropped: dict[str, int]


class MetricsService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    async def _series(
        self, resource_id: str, metrics: Sequence[Metric], span: timedelta
    ) -> tuple[Series, datetime, datetime]:
        end = datetime.now(UTC)
        start = end - span
        series = await self.core.metrics.series(
            resource_id, [m.value for m in metrics], start, end, now=end
        )
        return series, start, end

    async def vm_metrics(self, vm: Vm, hours: float) -> dict[str, Any]:
        series, start, end = await self._series(vm.id, INSTANCE_METRICS, timedelta(hours=hours))
        return {"vm_id": vm.id, "hours": hours, **series_body(series, INSTANCE_METRICS, start, end)}

    async def host_metrics(self, host_id: str, hours: float) -> dict[str, Any]:
        host = await self.session.get(Host, host_id)
        if host is None:
            raise NotFound("Host not found", host_id=host_id)
        series, start, end = await self._series(host.id, HOST_METRICS, timedelta(hours=hours))
        return {
            "host_id": host.id,
            "hostname": host.hostname,
            "hours": hours,
            **series_body(series, HOST_METRICS, start, end),
        }

    async def container_metrics(self, container: Container, period: str) -> dict[str, Any]:
        """Seed 004's shape: cpu and memory in %, network in bytes per second."""
        wanted = (Metric.CPU_PERCENT, Metric.MEMORY_PERCENT, Metric.NET_RX_BPS, Metric.NET_TX_BPS)
        series, _, _ = await self._series(container.id, wanted, PERIODS[period])
        rx = {p.ts: p.value for p in series.points[Metric.NET_RX_BPS.value]}
        tx = {p.ts: p.value for p in series.points[Metric.NET_TX_BPS.value]}
        network = [
            {
                "timestamp": iso(ts),
                "bytes_in": round(rx.get(ts, 0.0)),
                "bytes_out": round(tx.get(ts, 0.0)),
            }
            for ts in sorted(rx.keys() | tx.keys())
        ]
        return {
            "container_id": container.id,
            "period": period,
            "resolution": series.resolution.value,
            "step_seconds": series.step_seconds,
            "metrics": {
                "cpu": points(series, Metric.CPU_PERCENT),
                "memory": points(series, Metric.MEMORY_PERCENT),
                "network": network,
            },
        }

    # --- the platform now -------------------------------------------------------------
    async def usage_now(self, resource_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The last collector pass's figures of each of these VMs or containers that
        one stamped lately (``usage`` in their lists), with its time; one query."""
        rows = await self._latest(resource_ids, session=self.session)
        values: dict[str, dict[str, float]] = {}
        stamped: dict[str, int] = {}
        for resource_id, metric, ts, _kind, _project, value in rows:
            values.setdefault(resource_id, {})[metric] = value
            stamped[resource_id] = max(stamped.get(resource_id, 0), ts)
        return {
            rid: {**usage_figures(v), "sampled_at": iso(stamped[rid])} for rid, v in values.items()
        }

    async def _latest(
        self, resource_ids: Sequence[str] | None = None, session: AsyncSession | None = None
    ) -> list[Row]:
        # Three intervals: a host that answered in one of the last passes still counts.
        within = timedelta(seconds=max(self.core.settings.metrics_interval * 3, 30))
        return await self.core.metrics.latest(within, resource_ids=resource_ids, session=session)

    async def _counts(self, model: Any, projects: set[str] | None = None) -> dict[str, int]:
        query = select(model.status, func.count()).group_by(model.status)
        if projects is not None:
            query = query.where(model.project_id.in_(projects))
        rows = await self.session.execute(query)
        # Plain text keys: a status column reads enum members, and JSON keys are text.
        return {str(status): int(n) for status, n in rows}

    async def system(self) -> dict[str, Any]:
        """Counts of hosts, containers and VMs, and the latest usage summed over the
        platform (hosts' cpu and memory; instances' network)."""
        latest = await self._latest()
        hosts = await self._counts(Host)
        containers = await self._counts(Container)
        vms = await self._counts(Vm)
        host_cpu = [r[5] for r in latest if r[3] == "host" and r[1] == Metric.CPU_PERCENT]
        used = sum(r[5] for r in latest if r[3] == "host" and r[1] == Metric.MEMORY_BYTES)
        host_mem_pct = [r[5] for r in latest if r[3] == "host" and r[1] == Metric.MEMORY_PERCENT]
        rx = sum(r[5] for r in latest if r[3] != "host" and r[1] == Metric.NET_RX_BPS)
        tx = sum(r[5] for r in latest if r[3] != "host" and r[1] == Metric.NET_TX_BPS)
        return {
            "hosts": {"total": sum(hosts.values()), "by_status": hosts},
            "containers": {
                "total": sum(containers.values()),
                "running": containers.get("running", 0),
                "by_status": containers,
            },
            "vms": {"total": sum(vms.values()), "running": vms.get("running", 0), "by_status": vms},
            "cpu_usage": round(sum(host_cpu) / len(host_cpu), 2) if host_cpu else None,
            "memory_usage": round(sum(host_mem_pct) / len(host_mem_pct), 2)
            if host_mem_pct
            else None,
            "memory_used_bytes": int(used),
            "network": {
                "rx_bps": round(rx, 1),
                "tx_bps": round(tx, 1),
                "total": human_rate(rx + tx),
            },
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    async def tenant_system(self, project_ids: Sequence[str]) -> dict[str, Any]:
        """``system`` for a tenant: its containers and VMs (in ``project_ids``), and the
        latest usage of its own instances (mean cpu and memory %, network summed)."""
        projects = set(project_ids)
        containers = await self._counts(Container, projects)
        vms = await self._counts(Vm, projects)
        latest = [r for r in await self._latest() if r[3] != "host" and r[4] in projects]
        cpu = [r[5] for r in latest if r[1] == Metric.CPU_PERCENT]
        mem = [r[5] for r in latest if r[1] == Metric.MEMORY_PERCENT]
        rx = sum(r[5] for r in latest if r[1] == Metric.NET_RX_BPS)
        tx = sum(r[5] for r in latest if r[1] == Metric.NET_TX_BPS)
        return {
            "containers": {
                "total": sum(containers.values()),
                "running": containers.get("running", 0),
            },
            "vms": {"total": sum(vms.values()), "running": vms.get("running", 0)},
            "cpu_usage": round(sum(cpu) / len(cpu), 2) if cpu else None,
            "memory_usage": round(sum(mem) / len(mem), 2) if mem else None,
            "network": {"total": human_rate(rx + tx)},
        }

    async def summary(
        self, project_ids: Sequence[str] | None = None, org_ids: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Seed 004's ``GET /metrics``: a ``system`` and a ``requests`` block. With
        ``project_ids``, ``system`` covers those projects only (a tenant's view); with
        ``org_ids``, ``requests`` those organisations' requests only.

        ``requests`` comes from the request log (every server process's requests):
        ``total_requests`` and ``error_rate`` (5xx, %) over what the log keeps
        (``request_log_retention_days``), ``requests_per_second`` over the last
        minute. Requests still queued (up to ``request_log_flush_interval``) are not
        in it yet."""
        system = await (self.system() if project_ids is None else self.tenant_system(project_ids))
        requests = await request_totals(self.session, org_ids)
        return {
            "system": {
                "total_containers": system["containers"]["total"],
                "running_containers": system["containers"]["running"],
                "total_vms": system["vms"]["total"],
                "running_vms": system["vms"]["running"],
                "total_cpu_usage": system["cpu_usage"] or 0.0,
                "total_memory_usage": system["memory_usage"] or 0.0,
                "total_network_io": system["network"]["total"],
            },
            "requests": requests,
        }

    async def summary_for(self, principal: Principal) -> dict[str, Any]:
        """``summary`` as ``principal`` may see it: the platform for a platform admin
        (not bound to an organisation by an API key), else the projects and the
        requests of the organisations they hold a role in."""
        if principal.is_admin and principal.key_organisation_id is None:
            return await self.summary()
        orgs = await visible_org_ids(self.session, principal)
        projects = (
            await self.session.scalars(select(Project.id).where(Project.organisation_id.in_(orgs)))
        ).all()
        return await self.summary(list(projects), orgs)

    async def prometheus(
        self, requests: RequestStats, request_log: DropCounts | None = None
    ) -> str:
        """The Prometheus text exposition (format 0.0.4) of the platform and of every
        instance sampled in the last passes; with ``request_log``, the requests this
        process's request log dropped."""
        latest = await self._latest()
        hosts = {h.id: h for h in await self.session.scalars(select(Host))}
        vm_ids = [r[0] for r in latest if r[3] == ResourceKind.VM]
        container_ids = [r[0] for r in latest if r[3] == ResourceKind.CONTAINER]
        names: dict[str, tuple[str, str | None]] = {}  # resource -> (name, host id)
        if vm_ids:
            for vm_id, vm_name, vm_host in await self.session.execute(
                select(Vm.id, Vm.name, Vm.host_id).where(Vm.id.in_(set(vm_ids)))
            ):
                names[vm_id] = (vm_name, vm_host)
        if container_ids:
            rows = await self.session.execute(
                select(Container.id, Container.name, func.min(ContainerReplica.host_id))
                .join(ContainerReplica, ContainerReplica.container_id == Container.id)
                .where(Container.id.in_(set(container_ids)))
                .group_by(Container.id, Container.name)
            )
            for container_id, container_name, container_host in rows:
                names[container_id] = (container_name, container_host)

        out = Exposition()
        out.metric("nefos_up", "gauge", "1 while the Nefos API answers.")
        out.sample("nefos_up", {}, 1)
        for model, plural in ((Host, "hosts"), (Container, "containers"), (Vm, "vms")):
            out.metric(f"nefos_{plural}", "gauge", f"Nefos {plural} by status.")
            for status, n in sorted((await self._counts(model)).items()):
                out.sample(f"nefos_{plural}", {"status": status}, n)
        out.metric("nefos_http_requests_total", "counter", "HTTP requests served.")
        out.sample("nefos_http_requests_total", {}, requests.total)
        out.metric("nefos_http_errors_total", "counter", "HTTP responses by error class.")
        out.sample("nefos_http_errors_total", {"class": "4xx"}, requests.client_errors)
        out.sample("nefos_http_errors_total", {"class": "5xx"}, requests.server_errors)
        out.metric(
            "nefos_http_requests_per_second", "gauge", "Requests per second over the last minute."
        )
        out.sample("nefos_http_requests_per_second", {}, requests.requests_per_second())
        if request_log is not None:
            out.metric(
                "nefos_request_log_dropped_total",
                "counter",
                "Requests the request log did not record: its queue was full, or writing "
                "them failed.",
            )
            for reason, n in sorted(request_log.dropped.items()):
                out.sample("nefos_request_log_dropped_total", {"reason": reason}, n)

        by_family: dict[str, list[tuple[dict[str, str], float]]] = {}
        for resource_id, metric, _ts, kind, project_id, value in latest:
            if kind == ResourceKind.HOST:
                on = hosts.get(resource_id)
                found = HOST_FAMILIES.get(metric)
                if on is None or found is None:
                    continue
                labels = {"host": on.hostname, "host_id": on.id}
            else:
                found = INSTANCE_FAMILIES.get(metric)
                if found is None:
                    continue
                instance_name, placed_on = names.get(resource_id, ("", None))
                on = hosts.get(placed_on) if placed_on else None
                labels = {
                    "kind": kind,
                    "project": project_id or "",
                    "instance": resource_id,
                    "name": instance_name,
                    "host": on.hostname if on else "",
                }
            by_family.setdefault(found[0], []).append((labels, value))
        for family, help_text in [*HOST_FAMILIES.values(), *INSTANCE_FAMILIES.values()]:
            samples = by_family.get(family)
            if not samples:
                continue
            out.metric(family, "gauge", help_text)
            for labels, value in sorted(samples, key=lambda s: sorted(s[0].items())):
                out.sample(family, labels, value)
        return out.text()
