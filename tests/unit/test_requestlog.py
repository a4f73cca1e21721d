"""The request log's parts that need no database: the queue bound, route templates,
networks, GeoIP lookups in a real (tiny) .mmdb, the middleware, percentiles."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from nefos.config import Settings
from nefos.db.models import RequestLogEntry
from nefos.gateway.requestlog import (
    COLUMNS,
    UNMATCHED,
    Entry,
    GeoIP,
    RequestLog,
    RequestLogMiddleware,
    insert_sql,
    network_of,
    route_template,
)
from nefos.services.analytics import nearest_rank


def settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, secret_key="x" * 40, **overrides)  # type: ignore[call-arg]


def entry(status: int = 200) -> Entry:
    return (0, "GET", "/x", status, 1.0, None, None, None, "192.0.2.1", None, 0, 0, None)


def test_a_full_queue_drops_and_counts() -> None:
    log = RequestLog(settings(request_log_queue_size=3))
    for _ in range(5):
        log.record(entry())
    assert len(log.queue) == 3
    assert log.dropped == {"queue_full": 2, "write_failed": 0} and log.dropped_total == 2


def test_networks() -> None:
    assert network_of("203.0.113.77") == "203.0.113.0/24"
    assert network_of("2001:db8:1234:5678::1") == "2001:db8:1234::/48"
    assert network_of("::ffff:198.51.100.9") == "198.51.100.0/24"
    assert network_of("testclient") is None and network_of(None) is None


class _Route:
    def __init__(self, path: str) -> None:
        self.path = path


def test_route_templates() -> None:
    assert route_template({"route": _Route("/api/v1/containers/{container_id}")}) == (
        "/containers/{container_id}"
    )
    assert route_template({"route": _Route("/api/containers/{container_id}")}) == (
        "/containers/{container_id}"
    )
    assert route_template({"route": _Route("/health")}) == "/health"
    assert route_template({}) == UNMATCHED


def test_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [nearest_rank(values, p) for p in (50, 95, 99)] == [50.0, 95.0, 99.0]
    assert nearest_rank([3.0], 99) == 3.0 and nearest_rank([], 50) is None
    assert nearest_rank([5.0, 1.0, 3.0], 50) == 3.0


def tiny_mmdb(path: Path) -> Path:
    """A GeoLite2-Country-shaped database with two networks."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
    writer.insert_network(IPSet(["203.0.113.0/24"]), {"country": {"iso_code": "NZ"}})
    writer.insert_network(IPSet(["2001:db8::/32"]), {"registered_country": {"iso_code": "de"}})
    writer.to_db_file(str(path))
    return path


def test_geoip_countries(tmp_path: Path) -> None:
    geo = GeoIP.open(tiny_mmdb(tmp_path / "country.mmdb"))
    try:
        assert geo.country("203.0.113.7") == "NZ"
        assert geo.country("2001:db8::1") == "DE"
        assert geo.country("198.51.100.1") is None
        assert geo.country("not-an-ip") is None and geo.country(None) is None
    finally:
        geo.close()


async def test_rows_carry_network_and_country(tmp_path: Path) -> None:
    log = RequestLog(settings(geoip_database=tiny_mmdb(tmp_path / "c.mmdb")))
    log.geoip = GeoIP.open(log.settings.geoip_database)  # type: ignore[arg-type]
    e = entry()
    (row,) = await log._rows([(*e[:8], "203.0.113.9", "ua", 5, 7, "rid")])  # type: ignore[list-item]
    rows = [dict(zip(COLUMNS, row, strict=True))]
    assert rows[0]["network"] == "203.0.113.0/24" and rows[0]["country"] == "NZ"
    assert (rows[0]["bytes_in"], rows[0]["bytes_out"], rows[0]["request_id"]) == (5, 7, "rid")


async def test_the_middleware_times_counts_and_survives_a_crash() -> None:
    log = RequestLog(settings())

    class _Principal:
        class user:  # noqa: N801 - the shape of Principal.user
            id = "u1"

        api_key_id = "k1"
        key_organisation_id = "o-key"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        scope["route"] = _Route("/api/v1/things/{thing_id}")
        scope["state"]["principal"] = _Principal()
        if scope["path"] == "/crash":
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    middleware = RequestLogMiddleware(app, log)
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"abc", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    def scope(path: str) -> dict[str, Any]:
        return {
            "type": "http",
            "method": "POST",
            "path": path,
            "headers": [(b"user-agent", b"u" * 400)],
            "client": ("192.0.2.5", 1234),
            "state": {"request_id": "r1"},
        }

    await middleware(scope("/ok"), receive, send)
    with pytest.raises(RuntimeError):
        await middleware(scope("/crash"), receive, send)
    ok, crashed = log.queue
    ts, method, route, status, duration, user, org, key, ip, agent, b_in, b_out, rid = ok
    assert (method, route, status, user, org, key, ip) == (
        "POST",
        "/things/{thing_id}",
        201,
        "u1",
        "o-key",
        "k1",
        "192.0.2.5",
    )
    assert duration >= 0 and ts > 0 and agent == "u" * 256
    assert (b_in, b_out, rid) == (3, 5, "r1")
    assert crashed[3] == 500 and crashed[11] == 0

    # WebSockets and a disabled log pass through unrecorded.
    await middleware({"type": "websocket", "path": "/ws"}, receive, send)
    off = RequestLogMiddleware(app, RequestLog(settings(request_log_enabled=False)))
    await off(scope("/ok"), receive, send)
    assert len(log.queue) == 2 and not off.log.queue


async def test_the_writer_drains_the_queue_and_stop_writes_the_rest() -> None:
    from types import SimpleNamespace

    log = RequestLog(
        settings(
            request_log_flush_interval=0.05, request_log_batch_size=2, request_log_queue_size=8
        )
    )
    batches: list[int] = []

    async def insert(rows: Any) -> None:
        batches.append(len(rows))

    log.insert = insert
    fake_db: Any = SimpleNamespace(engine=SimpleNamespace(execution_options=lambda **kw: None))
    log._last_prune = float("inf")  # no retention pass against the fake database
    log.start(fake_db)
    for _ in range(5):
        log.record(entry())
    for _ in range(100):  # one pass writes all five, two at a time
        if sum(batches) == 5:
            break
        await asyncio.sleep(0.01)
    assert batches == [2, 2, 1]
    log.settings = settings(request_log_flush_interval=3600)
    for _ in range(3):
        log.record(entry())
    await log.stop()
    assert sum(batches) == 8 and not log.queue and log.written == 8


def test_the_writer_inserts_every_column_but_the_id_in_each_drivers_style() -> None:
    table = {c.name for c in RequestLogEntry.__table__.columns}
    assert len(set(COLUMNS)) == len(COLUMNS) and set(COLUMNS) == table - {"id"}
    head = f"INSERT INTO request_log ({', '.join(COLUMNS)}) VALUES "
    n = len(COLUMNS)
    assert insert_sql("qmark") == head + "(" + ", ".join(["?"] * n) + ")"
    dollars = ", ".join(f"${i + 1}" for i in range(n))
    assert insert_sql("numeric_dollar") == head + "(" + dollars + ")"
    assert insert_sql("format") == head + "(" + ", ".join(["%s"] * n) + ")"
    with pytest.raises(ValueError, match="pyformat"):
        insert_sql("pyformat")
