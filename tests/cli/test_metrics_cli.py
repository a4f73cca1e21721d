"""`nefos vm|container|host metrics` and the SDK's metrics calls, against a live
server. The series are written straight into the server's database with known
values and times, so the tables and sparklines they print are exact."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from nefos.cli._metrics import sparkline
from nefos.db.session import Database
from nefos.monitoring.store import MetricStore, Retention
from nefos.monitoring.types import Metric, ResourceKind, Sample
from nefos.schemas.compute import HostPublic
from nefos.sdk import Client, NotFoundError, PermissionDeniedError
from tests.cli.conftest import Cli, no_traceback, ok
from tests.conftest import ADMIN_PASSWORD, PASSWORD, LiveServer
from tests.sdk.test_compute_sdk import (
    MISSING_IMAGE,
    ensure_podman_host,
    unique,
    unregister_podman_host,
)


def test_sparkline_scales_between_the_lowest_and_highest_value() -> None:
    assert sparkline([]) == ""
    assert sparkline([5, 5, 5]) == "▁▁▁"
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([10, 0, 10]) == "█▁█"
    # Longer series are averaged down to the width.
    line = sparkline([float(i) for i in range(1000)], width=10)
    assert len(line) == 10 and line[0] == "▁" and line[-1] == "█"
    assert list(line) == sorted(line)


@pytest.fixture(scope="module")
def podman_teardown(live_server: LiveServer) -> Iterator[None]:
    yield
    unregister_podman_host(live_server)


@pytest.fixture
def podman(live_server: LiveServer, podman_teardown: None) -> HostPublic:
    with Client(live_server.url, username="admin", password=ADMIN_PASSWORD) as admin:
        return ensure_podman_host(admin)


def seed(server: LiveServer, kind: ResourceKind, resource_id: str, values: Sequence[float]) -> None:
    """One sample a minute for each value, the newest a minute ago, of cpu %, memory
    % and network rates (the same values)."""

    async def write() -> None:
        db = Database(server.settings.resolved_database_url)
        day = timedelta(days=1)
        store = MetricStore(db, retention=Retention(day, day, day), interval=15)
        now = datetime.now(UTC).replace(microsecond=0)
        start = now - timedelta(minutes=len(values))
        metrics = (Metric.CPU_PERCENT, Metric.MEMORY_PERCENT, Metric.NET_RX_BPS, Metric.NET_TX_BPS)
        try:
            await store.write(
                Sample(kind, resource_id, metric, v, start + timedelta(minutes=i), "p")
                for i, v in enumerate(values)
                for metric in metrics
            )
        finally:
            await db.dispose()

    asyncio.run(write())


def test_container_and_host_metrics_through_the_sdk_and_the_cli(
    cli: Cli, admin_cli: Cli, user: str, live_server: LiveServer, podman: HostPublic
) -> None:
    with Client(live_server.url, email=user, password=PASSWORD) as c:
        # A container record is all the metrics routes need (its create fails at once).
        accepted = c.containers.create(name=unique("watched"), image=MISSING_IMAGE)
        container_id = accepted.container_id
        seed(live_server, ResourceKind.CONTAINER, container_id, [0, 10, 20, 30, 40, 50, 60, 70])

        data = c.containers.metrics(container_id, period="1h")
        assert data.container_id == container_id and data.resolution == "raw"
        assert [p.value for p in data.metrics.cpu] == [0, 10, 20, 30, 40, 50, 60, 70]
        assert [p.bytes_in for p in data.metrics.network] == [0, 10, 20, 30, 40, 50, 60, 70]
        assert c.containers.metrics(container_id, period="7d").resolution == "1h"
        with pytest.raises(NotFoundError):
            c.monitoring.vm_metrics("no-such-vm")
        with pytest.raises(PermissionDeniedError):
            c.monitoring.host_metrics(podman.id)

    out = ok(cli("container", "metrics", container_id, "--period", "1h"))
    assert "cpu" in out and "net_rx_bps" in out
    assert "▁▂▃▄▅▆▇█" in out  # eight rising values, one bar each
    assert "70.0%" in out  # the last (and highest) cpu value
    as_json = cli.json("container", "metrics", container_id)
    assert as_json["container_id"] == container_id
    assert len(as_json["metrics"]["memory"]) == 8

    # A VM that is not there (or is another tenant's): an error, no traceback.
    other = cli("vm", "metrics", "no-such-vm", "--hours", "2")
    assert other.exit_code != 0
    no_traceback(other)

    # Hosts: platform admins.
    seed(live_server, ResourceKind.HOST, podman.id, [5, 5, 5, 5])
    with Client(live_server.url, username="admin", password=ADMIN_PASSWORD) as admin:
        host = admin.monitoring.host_metrics(podman.id, hours=1)
        assert [p.value for p in host.metrics["cpu_percent"]] == [5, 5, 5, 5]
        summary = admin.monitoring.summary()
        assert summary.requests.total_requests > 0
        system = admin.monitoring.system_metrics()
        assert system.hosts.total >= 1
    out = ok(admin_cli("host", "metrics", podman.id, "--hours", "1"))
    assert "cpu_percent" in out and "▁▁▁▁" in out
    refused = cli("host", "metrics", podman.id)
    assert refused.exit_code != 0
    no_traceback(refused)
