"""GCRA (nefos.gateway.limiter) with an injected clock; the Redis script agrees."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from nefos.config import Settings
from nefos.domain.rate_limits import Policy, format_rate, group_of, parse_rate
from nefos.gateway.limiter import Caller, MemoryCounters, RateLimiter, RedisCounters, headers_of


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


TEN_A_MINUTE = Policy("containers", 10, 60)
FORTY_AN_HOUR = Policy("user", 40, 3600)


def test_a_burst_of_the_limit_then_one_every_interval() -> None:
    clock = Clock()
    counters = MemoryCounters(clock)
    keys, policies = ["k"], [TEN_A_MINUTE]
    remaining = []
    for _ in range(10):
        d = counters.decide(keys, policies)
        assert d.allowed
        remaining.append(d.states[0].remaining)
    assert remaining == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    refused = counters.decide(keys, policies)
    assert not refused.allowed and refused.retry_after == pytest.approx(6.0)
    assert refused.states[0].reset == pytest.approx(60.0)
    clock.now += 5.9
    assert not counters.decide(keys, policies).allowed
    clock.now += 0.1  # 6 s after the burst: one more
    d = counters.decide(keys, policies)
    assert d.allowed and d.states[0].remaining == 0
    clock.now += 60  # a quiet minute gives the whole burst back
    assert counters.decide(keys, policies).states[0].remaining == 9


def test_two_policies_move_together_or_not_at_all() -> None:
    clock = Clock()
    counters = MemoryCounters(clock)
    keys = ["group", "user"]
    for _ in range(10):
        assert counters.decide(keys, [TEN_A_MINUTE, FORTY_AN_HOUR]).allowed
    refused = counters.decide(keys, [TEN_A_MINUTE, FORTY_AN_HOUR])
    assert not refused.allowed and refused.binding is not None
    assert refused.binding.policy.name == "containers"
    # The refusal took nothing from the overall policy: 30 of 40 remain.
    user = next(s for s in refused.states if s.policy.name == "user")
    assert user.remaining == 30
    peek = counters.peek(["user"], [FORTY_AN_HOUR])
    assert peek.states[0].remaining == 30


def test_the_sweep_forgets_callers_who_paid_back() -> None:
    clock = Clock()
    counters = MemoryCounters(clock)
    counters.decide(["a"], [TEN_A_MINUTE])
    counters.decide(["b"], [FORTY_AN_HOUR])
    clock.now += 61
    counters.sweep(int(clock.now * 1_000_000))
    assert set(counters.tats) == {"b"}


def test_headers_name_the_most_constrained_policy() -> None:
    clock = Clock()
    counters = MemoryCounters(clock)
    d = counters.decide(["g", "u"], [TEN_A_MINUTE, FORTY_AN_HOUR])
    headers = dict(headers_of(d))
    assert headers[b"x-ratelimit-limit"] == b"10"
    assert headers[b"x-ratelimit-remaining"] == b"9"
    assert headers[b"x-ratelimit-reset"] == str(int(clock.now) + 6).encode()
    assert headers[b"ratelimit-policy"] == b'"containers";q=10;w=60, "user";q=40;w=3600'
    assert headers[b"ratelimit"] == b'"containers";r=9;t=6, "user";r=39;t=90'
    assert b"retry-after" not in headers


def test_rates_and_groups() -> None:
    assert parse_rate("100/minute") == (100, 60)
    assert parse_rate(" 1000/HOUR ") == (1000, 3600)
    assert parse_rate("none") == (0, 0)
    for bad in ("0/minute", "10/fortnight", "ten/minute", "10", "-1/second", ""):
        with pytest.raises(ValueError):
            parse_rate(bad)
    assert format_rate(30, 60) == "30/minute" and format_rate(5, 7) == "5/7s"
    assert Policy("user", 0, 0).rate == "none" and Policy("user", 0, 0).unlimited
    assert group_of("/api/v1/auth/login") == "auth"
    assert group_of("/api/containers/abc/logs") == "containers"
    assert group_of("/api/v1/services") == "containers"
    assert group_of("/api/v1/monitoring/alerts") == "monitoring"
    assert group_of("/api/v1/wallet/top-up") == "billing"
    assert group_of("/api/v1/invoices") == "billing"
    assert group_of("/api/v1/projects") is None
    assert group_of("/api/v1/authx") is None  # a prefix is a whole segment


def test_the_redis_script_and_the_python_step_agree() -> None:
    url = os.environ.get("NEFOS_TEST_REDIS_URL")
    assert url, "make services starts Redis (NEFOS_TEST_REDIS_URL)"

    async def burst() -> list[tuple[bool, int]]:
        counters = RedisCounters(url, timeout=2.0)
        key = f"nefos-test-{uuid.uuid4().hex}:rl"
        try:
            out = []
            for _ in range(11):
                d = await counters.decide([key], [TEN_A_MINUTE])
                out.append((d.allowed, d.states[0].remaining))
            await counters.redis.delete(key)
            return out
        finally:
            await counters.close()

    memory = MemoryCounters(Clock())
    expected = []
    for _ in range(11):
        d = memory.decide(["k"], [TEN_A_MINUTE])
        expected.append((d.allowed, d.states[0].remaining))
    got = asyncio.run(burst())
    assert got == expected == [(True, r) for r in range(9, -1, -1)] + [(False, 0)]


async def test_a_silent_redis_times_out_after_the_setting_and_counts_here() -> None:
    """A Redis that accepts and never answers (a hung server, a black-holing proxy):
    after ``NEFOS_RATE_LIMIT_REDIS_TIMEOUT`` the decision is this process's own, and
    ``/health`` says degraded."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        redis_url=f"redis://127.0.0.1:{port}/0",
        rate_limit_redis_timeout=0.2,
        rate_limit_containers="3/minute",
    )
    limiter = RateLimiter(settings)
    try:
        assert limiter.redis is not None
        kwargs = limiter.redis.redis.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.2
        caller = Caller("user", uuid.uuid4().hex)
        decision = await limiter.decide(caller, "containers")
        assert decision is not None and decision.allowed
        assert accepted, "the limiter asked the silent server first"
        assert limiter.health() == "degraded"
        assert limiter.memory.tats, "the request counted in this process"
    finally:
        await limiter.stop()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
