"""The request log and /analytics: the figures equal what the test sent.

Each test sends a known set of requests as a fresh user (whose personal
organisation nobody else's requests land in), flushes the log's writer, and checks
the analytics against the rows the log recorded for that organisation.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from nefos.db.models import Membership, Organisation, RequestLogEntry
from nefos.gateway.requestlog import MAX_ATTEMPTS, GeoIP, RequestLog
from nefos.services import analytics
from nefos.services.analytics import nearest_rank
from nefos.services.billing import UsageService

V1 = "/api/v1"


def log_of(app: Any) -> RequestLog:
    request_log: RequestLog = app.state.request_log
    return request_log


async def personal_org(app: Any, user_id: str) -> str:
    async with app.state.core.db.engine.connect() as conn:
        org_id = await conn.scalar(
            select(Organisation.id)
            .join(Membership, Membership.organisation_id == Organisation.id)
            .where(Membership.user_id == user_id, Organisation.is_personal.is_(True))
        )
    assert org_id is not None
    return str(org_id)


async def logged(app: Any, org_id: str, start_ms: int = 0, end_ms: int = 2**62) -> list[Any]:
    async with app.state.core.db.engine.connect() as conn:
        rows = await conn.execute(
            select(RequestLogEntry).where(
                RequestLogEntry.organisation_id == org_id,
                RequestLogEntry.ts >= start_ms,
                RequestLogEntry.ts < end_ms,
            )
        )
        return list(rows)


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def data(r: httpx.Response) -> Any:
    assert r.is_success, r.text
    return r.json()["data"]


def p3(values: list[float], p: int) -> float | None:
    found = nearest_rank(values, p)
    return None if found is None else round(found, 3)


async def test_figures_equal_what_was_sent(
    client: httpx.AsyncClient, register: Any, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await register()
    org_id = await personal_org(app, user.id)
    h = user.headers
    start = now_ms() + 1
    await asyncio.sleep(0.002)

    async def broken(self: Any, org: Any) -> Any:
        raise RuntimeError("boom (a test's crash)")

    monkeypatch.setattr(UsageService, "wallet_view", broken)
    sent: Counter[tuple[str, str, int]] = Counter()
    for prefix in ("/api/v1", "/api/v1", "/api/v1", "/api/v1", "/api", "/api"):
        r = await client.get(f"{prefix}/auth/me", headers=h)
        sent["GET", "/auth/me", r.status_code] += 1
    for _ in range(3):
        r = await client.get(f"{V1}/containers/no-such-container", headers=h)
        sent["GET", "/containers/{container_id}", r.status_code] += 1
    for _ in range(2):  # a crash in the route: logged as the 500 the client got
        r = await client.get(f"{V1}/wallet", headers=h)
        sent["GET", "/wallet", r.status_code] += 1
    r = await client.post(f"{V1}/organisations", json={"name": "Analytics Co"}, headers=h)
    sent["POST", "/organisations", r.status_code] += 1
    assert sent == {
        ("GET", "/auth/me", 200): 6,
        ("GET", "/containers/{container_id}", 404): 3,
        ("GET", "/wallet", 500): 2,
        ("POST", "/organisations", 201): 1,
    }
    monkeypatch.undo()
    await log_of(app).flush()
    end = now_ms()
    rows = await logged(app, org_id, start, end)
    assert Counter((x.method, x.route, x.status) for x in rows) == sent
    for row in rows:
        assert row.user_id == user.id and row.api_key_id is None
        assert row.ip == "203.0.113.7" and row.network == "203.0.113.0/24"
        assert row.user_agent.startswith("python-httpx/") and row.request_id
        assert row.duration_ms > 0 and row.bytes_out > 0
    assert next(x for x in rows if x.method == "POST").bytes_in == len(b'{"name":"Analytics Co"}')
    durations = [x.duration_ms for x in rows]
    window = {"organisation_id": org_id, "start": iso_ms(start), "end": iso_ms(end)}

    overview = await data(await client.get(f"{V1}/analytics/overview", params=window, headers=h))
    assert overview["scope"] == "organisation" and overview["organisation_id"] == org_id
    assert overview["total_requests"] == 12
    assert (overview["errors"], overview["client_errors"]) == (2, 3)
    assert overview["error_rate"] == round(2 / 12 * 100, 2)
    assert overview["client_error_rate"] == 25.0
    assert overview["latency_ms"] == {
        "avg": round(sum(durations) / 12, 3),
        **{f"p{p}": p3(durations, p) for p in (50, 95, 99)},
        "sampled_every": 1,
    }
    assert overview["unique_users"] == 1 and overview["unique_ips"] == 1
    assert overview["bytes_in"] == sum(x.bytes_in for x in rows)
    assert overview["bytes_out"] == sum(x.bytes_out for x in rows)
    assert [(e["method"], e["route"], e["requests"]) for e in overview["top_endpoints"]] == [
        ("GET", "/auth/me", 6),
        ("GET", "/containers/{container_id}", 3),
        ("GET", "/wallet", 2),
        ("POST", "/organisations", 1),
    ]
    assert overview["top_endpoints"][2]["error_rate"] == 100.0

    # A window with more requests than are ranked: percentiles of every k-th by id.
    monkeypatch.setattr(analytics, "MAX_RANKED", 5)
    sampled = await data(await client.get(f"{V1}/analytics/overview", params=window, headers=h))
    monkeypatch.undo()
    assert sampled["total_requests"] == 12 and sampled["latency_ms"]["sampled_every"] == 3
    every_third = [x.duration_ms for x in rows if x.id % 3 == 0]
    assert sampled["latency_ms"]["p50"] == p3(every_third, 50)
    assert sampled["latency_ms"]["avg"] == overview["latency_ms"]["avg"]

    perf = await data(await client.get(f"{V1}/analytics/performance", params=window, headers=h))
    assert len(perf["endpoints"]) == 4 and perf["sampled_every"] == 1
    for e in perf["endpoints"]:
        mine = [x.duration_ms for x in rows if (x.method, x.route) == (e["method"], e["route"])]
        assert e["requests"] == len(mine)
        for p in (50, 95, 99):
            assert e[f"p{p}_ms"] == p3(mine, p), (e, p)
        assert e["avg_ms"] == round(sum(mine) / len(mine), 3)
    by_route = {e["route"]: e for e in perf["endpoints"]}
    assert by_route["/wallet"]["error_rate"] == 100.0
    assert by_route["/containers/{container_id}"]["client_error_rate"] == 100.0
    assert by_route["/auth/me"]["error_rate"] == 0.0

    traffic = await data(
        await client.get(
            f"{V1}/analytics/traffic", params={**window, "interval": "minute"}, headers=h
        )
    )
    assert traffic["interval"] == "minute" and traffic["step_seconds"] == 60
    buckets = traffic["buckets"]
    assert 1 <= len(buckets) <= 2 and traffic["total_requests"] == 12
    assert sum(b["requests"] for b in buckets) == 12
    assert sum(b["status_2xx"] for b in buckets) == 7
    assert sum(b["status_4xx"] for b in buckets) == 3
    assert sum(b["status_5xx"] for b in buckets) == 2
    for b in buckets:  # each bucket holds the rows of its minute
        at = int(datetime.fromisoformat(b["timestamp"]).timestamp() * 1000)
        assert b["requests"] == sum(1 for x in rows if at <= x.ts < at + 60_000)

    geo = await data(await client.get(f"{V1}/analytics/geography", params=window, headers=h))
    assert geo["grouped_by"] == "network"
    assert geo["items"] == [
        {
            "country": None,
            "network": "203.0.113.0/24",
            "requests": 12,
            "unique_ips": 1,
            "error_rate": round(2 / 12 * 100, 2),
        }
    ]

    # The default window (24h back from now) and the default organisation (the
    # caller's default project's: the personal one) include them too.
    await log_of(app).flush()
    default = await data(await client.get(f"{V1}/analytics/overview", headers=h))
    assert default["period"] == "24h" and default["organisation_id"] == org_id
    assert default["total_requests"] >= 12
    hourly = await data(
        await client.get(f"{V1}/analytics/traffic", params={"period": "1h"}, headers=h)
    )
    assert hourly["interval"] == "minute" and len(hourly["buckets"]) in (60, 61)


async def test_tenants_and_platform(
    client: httpx.AsyncClient, register: Any, admin: Any, app: Any
) -> None:
    alice, bob = await register(), await register()
    a_org, b_org = await personal_org(app, alice.id), await personal_org(app, bob.id)
    for _ in range(3):
        assert (await client.get(f"{V1}/auth/me", headers=alice.headers)).status_code == 200
    # A route's target organisation is the one its requests count for.
    made = await data(
        await client.post(f"{V1}/organisations", json={"name": "Team"}, headers=alice.headers)
    )
    await client.get(f"{V1}/organisations/{made['id']}", headers=alice.headers)
    # So is the one a billing route names, by the query or by X-Organisation-ID...
    await data(
        await client.get(
            f"{V1}/wallet", params={"organisation_id": made["id"]}, headers=alice.headers
        )
    )
    await data(
        await client.get(
            f"{V1}/invoices", headers={**alice.headers, "X-Organisation-ID": made["id"]}
        )
    )
    # ... but naming another tenant's counts for the caller's own.
    r = await client.get(
        f"{V1}/billing/summary", params={"organisation_id": made["id"]}, headers=bob.headers
    )
    assert r.status_code == 404, r.text
    # An API key's requests carry its id.
    key = await data(
        await client.post(
            f"{V1}/api-keys",
            json={"name": "k", "scopes": ["monitoring:read"]},
            headers=alice.headers,
        )
    )
    assert (await client.get(f"{V1}/auth/me", headers={"X-API-Key": key["key"]})).status_code
    await client.get(f"{V1}/auth/me", headers=bob.headers)
    await log_of(app).flush()

    team = await logged(app, made["id"])
    assert sorted((x.method, x.route, x.status) for x in team) == [
        ("GET", "/invoices", 200),
        ("GET", "/organisations/{org_id}", 200),
        ("GET", "/wallet", 200),
    ]
    assert sorted((x.route, x.status) for x in await logged(app, b_org)) == [
        ("/auth/me", 200),
        ("/billing/summary", 404),
    ]
    mine = await logged(app, a_org)
    assert sum(1 for x in mine if x.api_key_id == key["id"]) == 1
    assert len(mine) == 3 + 1 + 1 + 1  # me x3, the new org, the key, me with the key

    # Another tenant's organisation is a missing one; platform scope is admins'.
    for path in ("overview", "traffic", "performance", "geography"):
        r = await client.get(
            f"{V1}/analytics/{path}", params={"organisation_id": a_org}, headers=bob.headers
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND", r.text
        r = await client.get(
            f"{V1}/analytics/{path}", params={"scope": "platform"}, headers=bob.headers
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN", r.text
    # (The refusals above are written by the log's writer: all of them, now.)
    await log_of(app).flush()
    bobs = len(await logged(app, b_org))
    theirs = await data(await client.get(f"{V1}/analytics/overview", headers=bob.headers))
    assert theirs["organisation_id"] == b_org
    # Bob's own traffic only: his calls (the refused ones count too), not Alice's.
    assert theirs["total_requests"] == bobs >= 1
    assert theirs["unique_users"] == 1

    platform = await data(
        await client.get(
            f"{V1}/analytics/overview", params={"scope": "platform"}, headers=admin.headers
        )
    )
    assert platform["scope"] == "platform" and platform["organisation_id"] is None
    assert platform["total_requests"] >= len(mine) + 1 and platform["unique_users"] >= 2
    as_admin = await data(
        await client.get(
            f"{V1}/analytics/overview", params={"organisation_id": a_org}, headers=admin.headers
        )
    )
    assert as_admin["total_requests"] == len(mine)

    # Windows: not empty, at most 31 days, known periods and intervals only.
    for params in (
        {"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
        {"start": "2026-01-01T00:00:00Z", "end": "2026-03-01T00:00:00Z"},
        {"period": "2h"},
    ):
        r = await client.get(f"{V1}/analytics/overview", params=params, headers=bob.headers)
        assert r.status_code == 422, r.text
    r = await client.get(
        f"{V1}/analytics/traffic",
        params={"period": "30d", "interval": "minute"},
        headers=bob.headers,
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_metrics_requests_block(
    client: httpx.AsyncClient, register: Any, admin: Any, app: Any
) -> None:
    user = await register()
    org_id = await personal_org(app, user.id)
    await client.get(f"{V1}/auth/me", headers=user.headers)
    await client.get(f"{V1}/containers/nope", headers=user.headers)
    await log_of(app).flush()
    expected = len(await logged(app, org_id))
    assert expected == 2
    mine = await data(await client.get(f"{V1}/metrics", headers=user.headers))
    assert mine["requests"] == {
        "total_requests": 2,
        "requests_per_second": round(2 / 60, 2),
        "error_rate": 0.0,
    }
    await log_of(app).flush()
    async with app.state.core.db.engine.connect() as conn:
        everything = int(await conn.scalar(select(func.count()).select_from(RequestLogEntry)))
    platform = await data(await client.get(f"{V1}/metrics", headers=admin.headers))
    assert platform["requests"]["total_requests"] >= everything >= 3


async def test_retention_prunes_old_rows(app: Any, client: httpx.AsyncClient) -> None:
    request_log = log_of(app)
    org = f"retention-{uuid.uuid4().hex[:8]}"
    now = now_ms()
    days = request_log.settings.request_log_retention_days
    for ts in (now - int((days + 1) * 86_400_000), now - 1000):
        request_log.record((ts, "GET", "/x", 200, 1.0, None, org, None, None, None, 0, 0, None))
    await request_log.flush()
    assert len(await logged(app, org)) == 2
    assert await request_log.prune(now) >= 1
    assert [x.ts for x in await logged(app, org)] == [now - 1000]


async def test_a_failing_write_breaks_no_request(
    app: Any,
    client: httpx.AsyncClient,
    register: Any,
    admin: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = await register()
    request_log = log_of(app)
    await request_log.flush()
    before = request_log.dropped["write_failed"]
    calls = 0

    async def failing(rows: Any) -> None:
        nonlocal calls
        calls += 1
        raise OSError("database unreachable (a test's)")

    monkeypatch.setattr(request_log, "insert", failing)
    for _ in range(3):
        assert (await client.get(f"{V1}/auth/me", headers=user.headers)).status_code == 200
    # Each batch is kept, retried, then dropped. The writer's own pass may have taken
    # the first rows before the third request: up to one batch per request.
    for _ in range(3 * MAX_ATTEMPTS):
        assert await request_log.flush() == 0
        if request_log.dropped["write_failed"] >= before + 3:
            break
    assert calls >= MAX_ATTEMPTS
    assert request_log.dropped["write_failed"] >= before + 3
    monkeypatch.undo()
    assert (await client.get(f"{V1}/auth/me", headers=user.headers)).status_code == 200
    await request_log.flush()
    assert len(await logged(app, await personal_org(app, user.id))) >= 1

    # The drops are exposed to Prometheus.
    text = (await client.get(f"{V1}/prometheus", headers=admin.headers)).text
    assert "# TYPE nefos_request_log_dropped_total counter" in text
    line = next(x for x in text.splitlines() if 'reason="write_failed"' in x)
    assert float(line.rsplit(" ", 1)[1]) >= before + 3


async def test_geography_by_country(
    app: Any, client: httpx.AsyncClient, register: Any, tmp_path: Path
) -> None:
    """With a GeoIP database, traffic is grouped by the clients' countries."""
    from tests.unit.test_requestlog import tiny_mmdb

    request_log = log_of(app)
    geo = GeoIP.open(tiny_mmdb(tmp_path / "country.mmdb"))
    await request_log.flush()
    request_log.geoip = geo
    try:
        user = await register()
        for _ in range(3):
            await client.get(f"{V1}/auth/me", headers=user.headers)
        await request_log.flush()
        found = await data(await client.get(f"{V1}/analytics/geography", headers=user.headers))
    finally:
        request_log.geoip = None
        geo.close()
    assert found["grouped_by"] == "country"
    assert found["items"] == [
        {"country": "NZ", "network": None, "requests": 3, "unique_ips": 1, "error_rate": 0.0}
    ]
