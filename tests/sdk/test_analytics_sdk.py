"""The SDK's client.analytics against a live server: the figures of the calls made."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from nefos.sdk import Client, NotFoundError, PermissionDeniedError, ValidationError
from tests.conftest import ADMIN_PASSWORD, PASSWORD, LiveServer, make_settings


def moment() -> datetime:
    """Now, with a millisecond on either side: the log's timestamps are whole ms."""
    time.sleep(0.002)
    stamp = datetime.now(UTC)
    time.sleep(0.002)
    return stamp


def until(check: Callable[[], Any], seconds: float = 15) -> Any:
    """``check()`` once it is truthy: the log is written every flush interval."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_analytics_of_the_calls_made(live_server: LiveServer) -> None:
    with Client(live_server.url) as c:
        c.auth.register(email=f"sdk-an-{uuid.uuid4().hex[:10]}@example.com", password=PASSWORD)
        start = moment()
        for _ in range(3):
            c.auth.me()
        with pytest.raises(NotFoundError):
            c.containers.get(str(uuid.uuid4()))
        end = moment()
        window = {"start": start, "end": end}

        overview = until(lambda: (o := c.analytics.overview(**window)).total_requests == 4 and o)
        assert overview, "the log did not record the 4 calls"
        assert overview.scope == "organisation" and overview.client_errors == 1
        assert overview.client_error_rate == 25.0 and overview.error_rate == 0.0
        assert overview.unique_users == 1 and overview.latency_ms.p99 is not None
        assert [(e.route, e.requests) for e in overview.top_endpoints] == [
            ("/auth/me", 3),
            ("/containers/{container_id}", 1),
        ]
        perf = c.analytics.performance(**window)
        assert {e.route: e.requests for e in perf.endpoints} == {
            "/auth/me": 3,
            "/containers/{container_id}": 1,
        }
        traffic = c.analytics.traffic(interval="minute", **window)
        assert sum(b.requests for b in traffic.buckets) == 4
        assert sum(b.status_4xx for b in traffic.buckets) == 1
        geo = c.analytics.geography(**window)
        assert geo.grouped_by == "network"
        assert [(i.network, i.requests) for i in geo.items] == [("127.0.0.0/24", 4)]
        assert c.analytics.overview(period="1h").total_requests >= 4

        with pytest.raises(PermissionDeniedError):
            c.analytics.overview(platform=True)
        with pytest.raises(NotFoundError):
            c.analytics.overview(organisation_id=str(uuid.uuid4()))
        with pytest.raises(ValidationError):
            c.analytics.traffic(period="30d", interval="minute")

    with Client(live_server.url, username="admin", password=ADMIN_PASSWORD) as admin:
        platform = admin.analytics.overview(platform=True, **window)
        assert platform.scope == "platform" and platform.total_requests >= 4


def test_two_servers_write_one_log(
    live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two servers (as two processes would) on one database: the analytics and the
    requests block of GET /metrics count both. The second writes only when it stops
    (its flush interval is an hour): what is queued at shutdown is written."""
    email = f"sdk-two-{uuid.uuid4().hex[:10]}@example.com"
    second = LiveServer(
        make_settings(
            live_server.settings.database_url,
            tmp_path_factory.mktemp("second"),
            request_log_flush_interval=3600,
        )
    )
    with Client(live_server.url) as a:
        a.auth.register(email=email, password=PASSWORD)
        start = moment()
        with second:
            a.auth.me()
            a.auth.me()
            with Client(second.url, email=email, password=PASSWORD) as b:
                for _ in range(3):
                    b.auth.me()
            end = moment()
        overview = until(
            lambda: (o := a.analytics.overview(start=start, end=end)).total_requests == 5 and o
        )
        assert overview, "the two servers' 5 calls are not all in the log"
        assert overview.top_endpoints[0].route == "/auth/me"
        assert a.monitoring.summary().requests.total_requests >= 5
