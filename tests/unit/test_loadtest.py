"""The load-test generator's pure parts (thresholds, the open model's schedule, the
timeline and its totals, the saturation flag), and one real generator process
against a tiny local HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram

from nefos.loadtest import engine, thresholds
from nefos.loadtest.http import RequestFailed, prepare
from nefos.loadtest.plan import (
    Plan,
    RequestSpec,
    intended_time,
    schedule,
    scheduled,
    target_rate,
    user_start,
    weighted_cycle,
)
from nefos.loadtest.runner import GeneratorProcess
from nefos.loadtest.stats import Recorder, is_saturated, merge_timeline


# --- thresholds -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "metric", "op", "limit"),
    [
        ("p95 < 300", "p95", "<", 300.0),
        ("p99<=800", "p99", "<=", 800.0),
        ("p99.9 < 1s", "p99.9", "<", 1000.0),
        ("avg<20ms", "avg", "<", 20.0),
        ("error_rate < 1%", "error_rate", "<", 0.01),
        ("error_rate<0.05", "error_rate", "<", 0.05),
        ("rps > 50", "rps", ">", 50.0),
        ("  max >= 0.5 ", "max", ">=", 0.5),
    ],
)
def test_thresholds_parse(text: str, metric: str, op: str, limit: float) -> None:
    t = thresholds.parse(text)
    assert (t.metric, t.op) == (metric, op)
    assert math.isclose(t.limit, limit)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "p95",
        "p95 <",
        "p95 < abc",
        "p95 = 300",
        "p95 << 300",
        "p95 < -1",
        "p42 < 300",
        "P95 < 300",
        "p95 < 300%",
        "error_rate < 2ms",
        "error_rate < 150%",
        "rps > 50ms",
        "p95 < 300 and p99 < 1",
        "p95 < 1e3",
        "x" * 65,
    ],
)
def test_bad_thresholds_are_refused(text: str) -> None:
    with pytest.raises(thresholds.ThresholdError):
        thresholds.parse(text)


def test_parse_all_names_each_bad_threshold() -> None:
    found, errors = thresholds.parse_all(["p95<1", "nope", "rps>1", "p1 < 2"])
    assert [t.metric for t in found] == ["p95", "rps"]
    assert set(errors) == {"thresholds[1]", "thresholds[3]"}


def test_verdict_measures_each_threshold() -> None:
    summary = {
        "total_requests": 200,
        "failed_requests": 3,
        "requests_per_second": 40.0,
        "p95_response_time": 12.5,
        "p99_response_time": 30.0,
    }
    rules = [thresholds.parse(t) for t in ("p95 < 20", "p99 < 20", "error_rate < 1%", "rps > 20")]
    v = thresholds.verdict(rules, summary)
    assert v["passed"] is False
    assert [c["passed"] for c in v["thresholds"]] == [True, False, False, True]
    assert v["thresholds"][2]["value"] == 0.015
    assert thresholds.verdict([], summary) == {"passed": True, "thresholds": []}
    # Nothing measured is no pass.
    assert thresholds.verdict(rules[:1], {"total_requests": 0})["passed"] is False


# --- the models' arithmetic -------------------------------------------------------------
def test_open_schedule_without_ramp_is_evenly_spaced() -> None:
    times = list(schedule(10, 0, 2))
    assert len(times) == 20
    assert times[:3] == [0.0, 0.1, 0.2]
    assert all(b > a for a, b in itertools_pairs(times))


def test_open_schedule_ramps_linearly_and_inverts_the_count() -> None:
    rate, ramp, duration = 100.0, 4.0, 10.0
    times = list(schedule(rate, ramp, duration))
    # Half the rate on average during the ramp, then the full rate.
    assert len(times) == pytest.approx(rate * ramp / 2 + rate * (duration - ramp), abs=1)
    for k in (1, 10, 150, 199, 200, 201, 700):
        assert scheduled(rate, ramp, intended_time(k, rate, ramp)) == pytest.approx(k)
    gaps = [b - a for a, b in itertools_pairs(times)]
    assert gaps[5] > gaps[150] > gaps[250] - 1e-9  # closer and closer, then constant
    assert gaps[250] == pytest.approx(1 / rate)
    # Target rate per second adds up to the schedule.
    per_second = [target_rate(s, rate, ramp) for s in range(int(duration))]
    assert sum(x or 0 for x in per_second) == pytest.approx(len(times), abs=1)
    assert per_second[0] == pytest.approx(12.5) and per_second[9] == 100
    assert target_rate(3, None, 0) is None


def test_closed_users_start_linearly() -> None:
    assert [user_start(i, 4, 2.0) for i in range(4)] == [0.0, 0.5, 1.0, 1.5]
    assert user_start(3, 4, 0) == 0


def test_weighted_cycle_spreads_the_mix() -> None:
    reqs = [RequestSpec(path="/a", weight=3), RequestSpec(path="/b", weight=1)]
    cycle = weighted_cycle(reqs)
    assert sorted(cycle) == [0, 0, 0, 1]
    assert cycle.count(1) == 1 and cycle[0] == 0


def itertools_pairs(xs: list[float]) -> list[tuple[float, float]]:
    return list(zip(xs, xs[1:], strict=False))


# --- the recorder -----------------------------------------------------------------------
def test_timeline_adds_up_to_the_totals_and_percentiles_are_the_histograms() -> None:
    rec = Recorder(start=100.0, target=lambda s: 10.0, open_model=True)
    seconds = []
    for i in range(300):
        now = 100.0 + i * 0.01
        rec.sent(now, lag=0.0)
        latency = 0.001 * (1 + i % 50)
        if i % 30 == 0:
            rec.done(now, None, kind="connect")
        elif i % 45 == 0:
            rec.done(now, latency, status=503, uncorrected=latency / 2)
        else:
            rec.done(now, latency, status=200, uncorrected=latency / 2)
        seconds += rec.take()
    seconds += rec.flush()
    summary = rec.summary(103.0)
    entries = [s.to_json() for s in seconds]
    merged = merge_timeline(entries)
    assert merged["total"] == summary["total_requests"] == 300
    assert merged["ok"] == summary["successful_requests"]
    assert merged["failed"] == summary["failed_requests"] == 10 + 3
    assert summary["errors"] == {
        "by_status": {"503": 3},
        "by_kind": {"connect": 10, "http_5xx": 3},
    }
    assert [e["second"] for e in entries] == [0, 1, 2]
    assert all(e["target_rate"] == 10.0 for e in entries)
    keys = ("min", "p50", "p90", "p95", "p99", "p99_9", "max")
    values = [summary[f"{k}_response_time"] for k in keys]
    assert values == sorted(values)
    h = HdrHistogram.decode(summary["histogram"])
    assert h.get_total_count() == 290  # what got an HTTP answer
    assert summary["p99_response_time"] == round(h.get_value_at_percentile(99) / 1000, 3)
    assert summary["max_response_time"] == round(h.get_max_value() / 1000, 3)
    assert summary["uncorrected"]["max"] < summary["max_response_time"]
    assert summary["saturated"] is False


def test_memory_stays_constant_however_long_the_run() -> None:
    rec = Recorder(start=0.0)
    for s in range(2000):
        rec.done(s + 0.5, 0.002, status=200)
        rec.take()
    # One histogram for the run, one reused for the current second, no timeline kept.
    assert rec.finished == [] and rec.total.get_total_count() == 1999
    assert rec.current.get_total_count() == 1  # the open second, added when it closes
    rec.flush()
    assert rec.total.get_total_count() == 2000


def test_saturation_flag() -> None:
    assert is_saturated(sends=1000, late_sends=10, ticks=100, late_ticks=0) == (False, None)
    late, why = is_saturated(sends=1000, late_sends=200, ticks=100, late_ticks=0)
    assert late and why is not None and "200 of 1000" in why
    late, why = is_saturated(sends=0, late_sends=0, ticks=100, late_ticks=30)
    assert late and why is not None and "event loop" in why
    # A short run's single stall is not saturation.
    assert is_saturated(sends=0, late_sends=0, ticks=5, late_ticks=1)[0] is False
    rec = Recorder(start=0.0, open_model=True)
    for i in range(100):
        rec.sent(i * 0.01, lag=0.5 if i % 2 else 0.0)
    assert rec.summary(1.0)["saturated"] is True


# --- the HTTP client's requests ---------------------------------------------------------
def test_prepared_requests() -> None:
    spec = RequestSpec(method="POST", path="/api?x=1", headers={"X-A": "b"}, body='{"a":1}')
    p = prepare("http://10.0.0.5:31000/", spec)
    assert (p.host, p.port) == ("10.0.0.5", 31000)
    assert p.raw.startswith(b"POST /api?x=1 HTTP/1.1\r\nHost: 10.0.0.5:31000\r\n")
    assert b"X-A: b\r\n" in p.raw and p.raw.endswith(b'Content-Length: 7\r\n\r\n{"a":1}')
    with pytest.raises(ValueError, match="http"):
        prepare("https://example.com/", spec)
    assert RequestFailed("connect").kind == "connect"


# --- a real generator process -----------------------------------------------------------
@contextlib.asynccontextmanager
async def tiny_server() -> AsyncIterator[int]:
    """Keep-alive HTTP/1.1: 200 on /, 404 elsewhere."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path == b"/slow":
                    await asyncio.sleep(3600)  # never answers
                ok = path == b"/"
                body = b"ok" if ok else b"missing"
                status = b"200 OK" if ok else b"404 Not Found"
                writer.write(
                    b"HTTP/1.1 "
                    + status
                    + b"\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def run_generator(plan: Plan) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    gen = GeneratorProcess(plan)
    await gen.start()
    seconds: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    try:
        async with asyncio.timeout(60):
            async for m in gen.messages():
                if m["type"] == "second":
                    seconds.append(m["entry"])
                elif m["type"] == "final":
                    final = m["summary"]
    finally:
        await gen.kill()
    assert gen.returncode == 0, gen.stderr
    return seconds, final


async def test_a_generator_process_closed_and_open_model() -> None:
    async with tiny_server() as port:
        url = f"http://127.0.0.1:{port}/"
        mix = (RequestSpec(path="/", weight=3), RequestSpec(path="/nope"))
        for rate in (None, 50.0):
            plan = Plan(urls=(url, url), requests=mix, duration=2, users=3, ramp_up=0.5, rate=rate)
            seconds, final = await run_generator(plan)
            merged = merge_timeline(seconds)
            assert merged["total"] == final["total_requests"] > 0
            assert merged["ok"] == final["successful_requests"]
            assert final["errors"]["by_status"]["404"] == final["failed_requests"]
            # 3 of 4 requests are to /: the weighted mix holds.
            assert final["successful_requests"] >= 2 * final["failed_requests"]
            if rate is not None:
                assert final["uncorrected"] is not None
                assert merged["sent"] == sum(
                    round(target_rate(s, rate, 0.5) or 0) for s in range(2)
                )


async def test_killing_the_generator_leaves_no_process() -> None:
    async with tiny_server() as port:
        plan = Plan(
            urls=(f"http://127.0.0.1:{port}/",), requests=(RequestSpec(),), duration=60, users=1
        )
        gen = GeneratorProcess(plan)
        await gen.start()
        messages = gen.messages()
        first = await asyncio.wait_for(messages.__anext__(), 30)
        assert first["type"] in ("second", "progress")
        await gen.kill()
        assert gen.returncode is not None


async def test_a_request_without_an_answer_in_time_is_a_timeout() -> None:
    async with tiny_server() as port:
        url = f"http://127.0.0.1:{port}/"
        plan = Plan(
            urls=(url,),
            requests=(RequestSpec(path="/slow"), RequestSpec(path="/")),
            duration=1.5,
            users=2,
            timeout=0.3,
        )
        summary = await asyncio.wait_for(engine.run(plan, lambda _m: None), 30)
    assert summary["errors"]["by_kind"].get("timeout", 0) > 0
    assert summary["successful_requests"] > 0
    assert summary["max_response_time"] < 300  # a timed-out request has no latency
