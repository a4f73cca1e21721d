"""Metrics: the time-series store, the collector on real Podman containers and a real
libvirt VM, and the monitoring endpoints (shapes, access, tenant isolation)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from nefos.db.models import MetricRollupHour, MetricRollupMinute, MetricSample
from nefos.monitoring.store import MetricStore, Resolution, Retention
from nefos.monitoring.types import Metric, ResourceKind, Sample
from tests.api.test_containers import Api, assert_error, fetch_page
from tests.api.test_vms import register_tiny
from tests.conftest import TEST_IMAGE, Account

V1 = "/api/v1"
T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)  # an hour's start


async def eventually(check: Callable[[], Awaitable[Any]], what: str, within: float = 60) -> Any:
    deadline = time.monotonic() + within
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.2)


@pytest.fixture(autouse=True)
async def quiet_collector(app: Any) -> AsyncIterator[None]:
    """The app's own collector and maintenance pause: the tests run the passes (and
    give the times), so no background pass prunes or rolls up behind their back."""
    paused = [s for s in app.state.process.singletons if s.name in ("collector", "retention")]
    for singleton in paused:
        await singleton.stop()
    yield
    for singleton in paused:
        await singleton.start()


def sample(metric: Metric, value: float, ts: datetime, rid: str = "vm-1") -> Sample:
    return Sample(ResourceKind.VM, rid, metric, value, ts, project_id="p-1")


def store_of(app: Any) -> MetricStore:
    store: MetricStore = app.state.core.metrics
    return store


# --- the store ---------------------------------------------------------------------------
async def test_rollups_aggregate_closed_buckets_and_rerunning_changes_nothing(
    client: httpx.AsyncClient, app: Any
) -> None:
    store = store_of(app)
    # Two hours of a sample every 15 s: values 0..479 in order.
    samples = [
        sample(Metric.CPU_PERCENT, float(i), T0 + timedelta(seconds=15 * i)) for i in range(480)
    ]
    assert await store.write(samples) == 480
    # At 12:00:30 the minute 12:00 is still open, so are the hours from 12:00 on.
    now = T0 + timedelta(hours=2, seconds=30)
    minutes, hours = await store.rollup(now)
    assert (minutes, hours) == (120, 2)

    async def table(model: Any) -> list[tuple[int, float, float, float, int]]:
        async with app.state.core.db.sessionmaker() as session:
            rows = await session.execute(
                select(model.bucket, model.avg, model.min, model.max, model.count).order_by(
                    model.bucket
                )
            )
            return [tuple(r) for r in rows]

    per_minute = await table(MetricRollupMinute)
    assert len(per_minute) == 120
    first = per_minute[0]
    assert first == (int(T0.timestamp()), 1.5, 0.0, 3.0, 4)
    per_hour = await table(MetricRollupHour)
    assert [(h[0], h[1], h[2], h[3], h[4]) for h in per_hour] == [
        (int(T0.timestamp()), 119.5, 0.0, 239.0, 240),
        (int(T0.timestamp()) + 3600, 359.5, 240.0, 479.0, 240),
    ]

    # Rerunning at the same time recomputes the same buckets from the same rows.
    await store.rollup(now)
    assert await table(MetricRollupMinute) == per_minute
    assert await table(MetricRollupHour) == per_hour

    # A sample arriving in the newest rolled-up minute is taken in on the next run.
    await store.write([sample(Metric.CPU_PERCENT, 1000.0, T0 + timedelta(minutes=119, seconds=59))])
    await store.rollup(now)
    last = (await table(MetricRollupMinute))[-1]
    assert last[0] == int((T0 + timedelta(minutes=119)).timestamp())
    assert (last[3], last[4]) == (1000.0, 5)


async def test_pruning_keeps_each_table_for_its_retention(
    client: httpx.AsyncClient, app: Any
) -> None:
    db = app.state.core.db
    store = MetricStore(
        db,
        retention=Retention(
            raw=timedelta(hours=1), minute=timedelta(hours=3), hour=timedelta(days=1)
        ),
        interval=15,
    )
    await store.write(
        [sample(Metric.MEMORY_BYTES, 1.0, T0 + timedelta(minutes=m)) for m in range(0, 300, 5)]
    )
    await store.rollup(T0 + timedelta(hours=5))
    now = T0 + timedelta(hours=5)
    raw, minutes, hours = await store.prune(now)
    # raw: older than 04:00 past T0 go (48 of 60); minutes: before 02:00 (24 of 60
    # buckets); hours: none are older than a day.
    assert (raw, minutes, hours) == (48, 24, 0)
    assert await store.prune(now) == (0, 0, 0)
    async with db.sessionmaker() as session:
        oldest = await session.scalar(select(MetricSample.ts).order_by(MetricSample.ts))
        assert oldest == int((T0 + timedelta(hours=4)).timestamp() * 1000)
        kept_hours = (await session.scalars(select(MetricRollupHour.bucket))).all()
        assert len(kept_hours) == 5


async def test_the_query_picks_the_resolution_that_fits_the_range(
    client: httpx.AsyncClient, app: Any
) -> None:
    store = store_of(app)
    now = datetime.now(UTC)
    assert store.resolution_for(now - timedelta(hours=1), now, now) is Resolution.RAW
    assert store.resolution_for(now - timedelta(hours=6), now, now) is Resolution.RAW
    assert store.resolution_for(now - timedelta(hours=24), now, now) is Resolution.MINUTE
    assert store.resolution_for(now - timedelta(days=7), now, now) is Resolution.HOUR
    assert store.resolution_for(now - timedelta(days=30), now, now) is Resolution.HOUR
    # Two hours three days ago: raw samples are gone by then, minutes are kept.
    old = now - timedelta(days=3)
    assert store.resolution_for(old, old + timedelta(hours=2), now) is Resolution.MINUTE

    # A day of samples every 15 s; the last 20 minutes are not rolled up yet.
    end = T0 + timedelta(hours=24)
    await store.write(
        [sample(Metric.CPU_PERCENT, 50.0, T0 + timedelta(seconds=15 * i)) for i in range(5760)]
    )
    await store.rollup(end - timedelta(minutes=20))
    day = await store.series("vm-1", [Metric.CPU_PERCENT.value], T0, end, now=end)
    assert day.resolution is Resolution.MINUTE
    points = day.points[Metric.CPU_PERCENT.value]
    # Every minute, including the tail computed from the raw samples.
    assert len(points) == 1440 <= 1500
    assert [p.ts for p in points] == [int(T0.timestamp() * 1000) + 60_000 * i for i in range(1440)]
    assert {p.value for p in points} == {50.0}
    week = await store.series(
        "vm-1", [Metric.CPU_PERCENT.value], end - timedelta(days=7), end, now=end
    )
    assert week.resolution is Resolution.HOUR
    assert len(week.points[Metric.CPU_PERCENT.value]) == 24  # 23 rolled up and the tail
    hour = await store.series(
        "vm-1", [Metric.CPU_PERCENT.value], end - timedelta(hours=1), end, now=end
    )
    assert hour.resolution is Resolution.RAW and len(hour.points["cpu_percent"]) == 240
    # Raw samples have no peak; a bucket's is its highest sample, rolled up or not.
    assert {p.max for p in hour.points["cpu_percent"]} == {None}
    assert {p.max for p in points} == {50.0}
    assert {p.max for p in week.points[Metric.CPU_PERCENT.value]} == {50.0}


async def test_a_buckets_point_carries_its_average_and_its_peak(
    client: httpx.AsyncClient, app: Any
) -> None:
    store = store_of(app)
    # Two hours of a sample every 15 s, values 0..479; the second hour not rolled up.
    await store.write(
        [sample(Metric.CPU_PERCENT, float(i), T0 + timedelta(seconds=15 * i)) for i in range(480)]
    )
    end = T0 + timedelta(hours=2)
    await store.rollup(T0 + timedelta(hours=1, minutes=30))
    week = await store.series(
        "vm-1", [Metric.CPU_PERCENT.value], end - timedelta(days=7), end, now=end
    )
    assert week.resolution is Resolution.HOUR
    got = [(p.value, p.max) for p in week.points[Metric.CPU_PERCENT.value]]
    # The first hour from its rollup; the open one from the minutes rolled up so far
    # (to 11:29: samples 240..359).
    assert got == [(119.5, 239.0), (299.5, 359.0)]
    day = await store.series(
        "vm-1", [Metric.CPU_PERCENT.value], end - timedelta(hours=24), end, now=end
    )
    minute = day.points[Metric.CPU_PERCENT.value]
    assert (minute[0].value, minute[0].max) == (1.5, 3.0)
    assert (minute[-1].value, minute[-1].max) == (477.5, 479.0)


# --- the collector on real instances -------------------------------------------------------
class Recorder:
    """A SampleListener that keeps what it is given."""

    def __init__(self) -> None:
        self.passes: list[Sequence[Sample]] = []

    async def on_samples(self, samples: Sequence[Sample]) -> None:
        self.passes.append(samples)


BUSY_WEB = [
    "/bin/sh",
    "-c",
    # busybox httpd goes to the background; the shell then keeps a CPU busy.
    "httpd -p 8080 -h /www; while :; do :; done",
]


async def test_a_busy_container_reports_cpu_and_its_traffic(
    client: httpx.AsyncClient,
    app: Any,
    register: Any,
    podman_host: dict[str, Any],
) -> None:
    collector = app.state.collector
    recorder = Recorder()
    collector.listeners.append(recorder)
    told = app.state.core.events.subscribe(lambda e: e.type == "metrics_update")
    try:
        user = await register()
        api = Api(client, user)
        container = await api.created(
            {
                "name": "busy",
                "image": TEST_IMAGE,
                "command": BUSY_WEB,
                "ports": ["8080"],
                "resources": {"cpu": "0.5", "memory": "64m"},
            }
        )
        cid = container["id"]
        [endpoint] = container["endpoints"]
        assert await eventually(lambda: fetch_page(endpoint["host_port"]), "the page")

        async def measured() -> dict[Metric, float] | None:
            for _ in range(3):
                # Traffic between the passes. The container keeps a CPU busy, so on a
                # loaded machine its httpd may miss a connect: the next pass retries.
                with contextlib.suppress(httpx.TransportError):
                    await fetch_page(endpoint["host_port"])
            got = {
                s.metric: s.value
                for s in await collector.run_once()
                if s.resource_id == cid and s.kind is ResourceKind.CONTAINER
            }
            busy = got.get(Metric.CPU_PERCENT, 0) > 0 and got.get(Metric.NET_RX_BPS, 0) > 0
            return got if busy and got.get(Metric.NET_TX_BPS, 0) > 0 else None

        values = await eventually(measured, "cpu and network samples of the container")
        assert 0 < values[Metric.CPU_PERCENT] <= 100
        assert 0 < values[Metric.MEMORY_BYTES] <= 64 * 1024**2
        assert 0 < values[Metric.MEMORY_PERCENT] <= 100
        # The listener saw the passes, with the same samples that were stored.
        assert any(s.resource_id == cid for p in recorder.passes for s in p)
        # The test host (Podman) reports its memory.
        assert any(
            s.kind is ResourceKind.HOST and s.resource_id == podman_host["id"]
            for p in recorder.passes
            for s in p
        )

        # metrics_update, seed 004's shape.
        event = await eventually(
            lambda: _next_for(told, "container_id", cid), "a metrics_update event"
        )
        assert event.project_id == user.project_id
        assert set(event.data["metrics"]) >= {"cpu_usage", "memory_usage", "network_io"}
        assert event.data["metrics"]["network_io"].endswith("/s")

        # The list: each container's last figures, the event's, with their time.
        listed = await api.call("GET", "/containers")
        usage = next(c for c in listed["items"] if c["id"] == cid)["usage"]
        assert usage is not None and usage["sampled_at"].endswith("Z")
        assert set(usage) == set(event.data["metrics"]) | {"sampled_at"}
        assert usage["memory_bytes"] > 0 and usage["network_io"].endswith("/s")

        # GET /containers/{id}/metrics, seed 004's shape exactly.
        data = await api.call("GET", f"/containers/{cid}/metrics?period=1h")
        assert data["container_id"] == cid and data["resolution"] == "raw"
        assert set(data["metrics"]) == {"cpu", "memory", "network"}
        assert any(p["value"] > 0 for p in data["metrics"]["cpu"])
        assert all(set(p) == {"timestamp", "value"} for p in data["metrics"]["cpu"])
        assert all(p["timestamp"].endswith("Z") for p in data["metrics"]["memory"])
        network = data["metrics"]["network"]
        assert network and set(network[-1]) == {"timestamp", "bytes_in", "bytes_out"}
        assert any(p["bytes_in"] > 0 for p in network)
        for period in ("24h", "7d", "30d"):
            await api.call("GET", f"/containers/{cid}/metrics", params={"period": period})
        assert_error(
            await client.get(
                f"{V1}/containers/{cid}/metrics", params={"period": "2h"}, headers=user.headers
            ),
            422,
            "VALIDATION_ERROR",
        )

        # Another tenant: as if it did not exist.
        other = await register()
        for path in (f"/containers/{cid}/metrics", f"/containers/{'0' * 8}/metrics"):
            assert_error(await client.get(V1 + path, headers=other.headers), 404, "NOT_FOUND")
    finally:
        collector.listeners.remove(recorder)
        told.close()


def _next_for(sub: Any, key: str, resource_id: str) -> Awaitable[Any]:
    async def find() -> Any:
        while (event := sub.get_nowait()) is not None:
            if event.data.get(key) == resource_id:
                return event
        return None

    return find()


BUSY_VM = "#!/bin/sh\nwhile :; do :; done &\necho nefos-busy\n"


async def test_a_running_vm_and_its_host_report_metrics(
    client: httpx.AsyncClient,
    app: Any,
    admin: Account,
    register: Any,
    libvirt_host: dict[str, Any],
) -> None:
    collector = app.state.collector
    told = app.state.core.events.subscribe(lambda e: e.type == "metrics_update")
    try:
        admin_api = Api(client, admin)
        await register_tiny(admin_api)
        user = await register()
        api = Api(client, user)
        body = {
            "name": "watched",
            "os_type": "busybox",
            "os_version": "1",
            "cpu_cores": 1,
            "memory_gb": 0.125,
            "storage_gb": 1,
            "user_data": BUSY_VM,
        }
        data = await api.call("POST", "/vms", 202, json=body)
        op = await api.wait(data["operation"])
        assert op["status"] == "succeeded", op
        vm_id = data["vm"]["id"]

        async def measured() -> dict[Metric, float] | None:
            got = {s.metric: s.value for s in await collector.run_once() if s.resource_id == vm_id}
            return got if got.get(Metric.CPU_PERCENT, 0) > 0 else None

        values = await eventually(measured, "a cpu sample of the VM", within=120)
        assert 0 < values[Metric.CPU_PERCENT] <= 100
        assert 0 < values[Metric.MEMORY_BYTES] <= 128 * 1024**2
        assert {Metric.NET_RX_BPS, Metric.DISK_READ_BPS, Metric.DISK_WRITE_BPS} <= set(values)
        event = await eventually(lambda: _next_for(told, "vm_id", vm_id), "a metrics_update")
        assert event.project_id == user.project_id
        listed = await api.call("GET", "/vms")
        usage = next(v for v in listed["items"] if v["id"] == vm_id)["usage"]
        assert usage is not None and 0 < usage["memory_bytes"] <= 128 * 1024**2

        got = await api.call("GET", f"/monitoring/vm-metrics/{vm_id}", params={"hours": 1})
        assert got["vm_id"] == vm_id and got["resolution"] == "raw" and got["hours"] == 1
        assert set(got["metrics"]) == {m.value for m in Metric}
        assert any(p["value"] > 0 for p in got["metrics"]["cpu_percent"])
        day = await api.call("GET", f"/monitoring/vm-metrics/{vm_id}")
        assert day["resolution"] == "1m" and day["hours"] == 24
        # The minutes not rolled up yet come from the raw samples.
        assert any(p["value"] > 0 for p in day["metrics"]["cpu_percent"])
        # A bucket's point has its peak beside its average; a raw sample has none.
        assert all(p["max"] >= p["value"] for p in day["metrics"]["cpu_percent"])
        assert not any("max" in p for p in got["metrics"]["cpu_percent"])

        # The host: its own cpu (libvirt counts it) and memory, for admins only.
        host_id = libvirt_host["id"]
        host = await admin_api.call("GET", f"/monitoring/host-metrics/{host_id}?hours=2")
        assert host["host_id"] == host_id and host["hostname"] == "libvirt-test"
        assert host["metrics"]["cpu_percent"] and host["metrics"]["memory_bytes"]
        assert all(0 <= p["value"] <= 100 for p in host["metrics"]["cpu_percent"])
        assert_error(
            await client.get(f"{V1}/monitoring/host-metrics/{host_id}", headers=user.headers),
            403,
            "FORBIDDEN",
        )
        assert_error(
            await client.get(f"{V1}/monitoring/host-metrics/nope", headers=admin.headers),
            404,
            "NOT_FOUND",
        )

        # Bad parameters, in the envelope.
        for hours in ("0", "-1", "x", str(24 * 400 + 1)):
            assert_error(
                await client.get(
                    f"{V1}/monitoring/vm-metrics/{vm_id}",
                    params={"hours": hours},
                    headers=user.headers,
                ),
                422,
                "VALIDATION_ERROR",
            )
        # Another tenant's VM is a missing one.
        other = await register()
        assert_error(
            await client.get(f"{V1}/monitoring/vm-metrics/{vm_id}", headers=other.headers),
            404,
            "NOT_FOUND",
        )

        # The platform views: JSON (seed 004) and Prometheus.
        summary = await admin_api.call("GET", "/metrics")
        assert set(summary) == {"system", "requests"}
        assert summary["system"]["total_containers"] >= 0
        assert summary["system"]["running_vms"] >= 1
        assert summary["system"]["total_network_io"].endswith("/s")
        assert set(summary["requests"]) == {"total_requests", "requests_per_second", "error_rate"}
        assert summary["requests"]["total_requests"] > 0
        system = await admin_api.call("GET", "/monitoring/system-metrics")
        assert system["vms"]["running"] >= 1 and system["hosts"]["total"] >= 1
        for r in (
            await client.get(f"{V1}/prometheus", headers=admin.headers),
            await client.get(f"{V1}/metrics", headers={**admin.headers, "Accept": "text/plain"}),
        ):
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            text = r.text
            assert "# TYPE nefos_instance_cpu_percent gauge" in text
            line = next(
                x
                for x in text.splitlines()
                if x.startswith("nefos_instance_cpu_percent{") and vm_id in x
            )
            assert f'project="{user.project_id}"' in line and 'host="libvirt-test"' in line
            assert 'name="watched"' in line and float(line.rsplit(" ", 1)[1]) > 0
            assert 'nefos_host_memory_bytes{host="libvirt-test"' in text
            assert "nefos_http_requests_total " in text
        # A tenant's /metrics (seed 004) covers its own instances only.
        mine = (await client.get(f"{V1}/metrics", headers=user.headers)).json()["data"]
        assert mine["system"]["total_vms"] == 1 and mine["system"]["running_vms"] == 1
        assert mine["system"]["total_containers"] == 0
        assert mine["system"]["total_cpu_usage"] > 0
        assert set(mine["requests"]) == {"total_requests", "requests_per_second", "error_rate"}
        theirs = (await client.get(f"{V1}/metrics", headers=other.headers)).json()["data"]
        assert theirs["system"]["total_vms"] == 0 and theirs["system"]["total_cpu_usage"] == 0
        assert_error(
            await client.get(f"{V1}/metrics", headers={**user.headers, "Accept": "text/plain"}),
            403,
            "FORBIDDEN",
        )
        for path in ("/prometheus", "/monitoring/system-metrics"):
            assert_error(await client.get(V1 + path, headers=user.headers), 403, "FORBIDDEN")
    finally:
        told.close()


async def test_rollup_and_pruning_run_from_the_collector(
    client: httpx.AsyncClient, app: Any
) -> None:
    store = store_of(app)
    now = datetime.now(UTC)
    old = now - timedelta(days=2)
    await store.write(
        [
            sample(Metric.CPU_PERCENT, 10.0, old, rid="vm-old"),
            sample(Metric.CPU_PERCENT, 20.0, now - timedelta(minutes=5), rid="vm-new"),
        ]
    )
    await app.state.collector.maintain()
    async with app.state.core.db.sessionmaker() as session:
        raw = (await session.scalars(select(MetricSample.resource_id))).all()
        minutes = (await session.scalars(select(MetricRollupMinute.resource_id))).all()
    assert raw == ["vm-new"]  # the two-day-old raw sample is past the 24 h retention
    assert sorted(minutes) == ["vm-new", "vm-old"]


@pytest.mark.parametrize("path", ["/monitoring/vm-metrics/x", "/containers/x/metrics"])
async def test_metrics_need_credentials(client: httpx.AsyncClient, path: str) -> None:
    assert_error(await client.get(V1 + path), 401, "UNAUTHORIZED")
