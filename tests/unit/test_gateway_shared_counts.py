"""The API gateway's counts (``gateway/apicounts.py``): a subscription's sliding
minute (``slide``, as one process counts it), and the counts in Redis as two API
processes share them: two clients of one Redis, as two processes would be. Against
the test Redis that ``make services`` starts."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter

import redis.asyncio as aioredis

from nefos.gateway.apicounts import SECONDS, UNKNOWN, SharedCounts, slide


def _url() -> str:
    url = os.environ.get("NEFOS_TEST_REDIS_URL")
    assert url, "make services starts Redis (NEFOS_TEST_REDIS_URL)"
    return url


def test_a_minute_admits_its_limit_at_a_clock_minutes_turn_once() -> None:
    counts: dict[int, int] = {}
    # 3 calls in the last second of a clock minute, 3 in the first of the next one:
    # a limit of 5 admits 5 in all (a window per clock minute would admit 6).
    turn = 1_800_000_000.0  # an epoch second that is a clock minute's turn
    assert turn % 60 == 0
    before = [slide(counts, turn - 0.5, 5) for _ in range(3)]
    after = [slide(counts, turn + 0.2, 5) for _ in range(3)]
    assert [a.admitted for a in before + after] == [True] * 5 + [False]
    assert [a.remaining for a in before + after] == [4, 3, 2, 1, 0, 0]
    refused = after[-1]
    # Admitted again once the second of the first 3 leaves the window (61 seconds
    # from its start), and empty once the last call's second does.
    assert refused.retry_after == (turn - 1 + SECONDS) - (turn + 0.2)
    assert refused.reset == turn + SECONDS - (turn + 0.2)
    assert not slide(counts, turn + 59.9, 5).admitted
    late = slide(counts, turn - 1 + SECONDS, 5)
    assert late.admitted and late.remaining == 2  # the 3 of its first second gone
    assert counts == {int(turn): 2, int(turn) + 60: 1}


def test_a_minute_never_holds_more_than_its_limit_in_any_60_seconds() -> None:
    # Calls every 0.3 s for 5 minutes against 40 a minute: the admitted ones of every
    # 60 seconds are at most 40, and the minute is used (not starved: at least 39).
    counts: dict[int, int] = {}
    start = 1_800_000_000.0
    admitted = [t for i in range(1000) if slide(counts, t := start + i * 0.3, 40).admitted]
    for i, first in enumerate(admitted):
        held = sum(1 for t in admitted[i:] if t < first + 60)
        assert held <= 40, (first, held)
    per_minute = [
        sum(1 for t in admitted if m <= t < m + 60) for m in range(int(start), int(start) + 240, 60)
    ]
    assert all(n >= 39 for n in per_minute), per_minute
    assert len(counts) <= SECONDS


def test_a_lowered_limit_refuses_until_enough_calls_left_the_minute() -> None:
    counts = {100: 30, 130: 30}
    refused = slide(counts, 150.5, 20)  # 60 held, 20 allowed: the second 30 must go
    assert not refused.admitted and refused.remaining == 0
    assert refused.retry_after == 130 + SECONDS - 150.5
    assert refused.reset == 130 + SECONDS - 150.5
    assert counts == {100: 30, 130: 30}  # a refusal counts nothing


def test_two_processes_admit_a_plans_limit_once_between_them() -> None:
    async def run() -> None:
        prefix = f"nefos-test-{uuid.uuid4().hex}:gw:"
        one, two = aioredis.Redis.from_url(_url()), aioredis.Redis.from_url(_url())
        a, b = SharedCounts(one, prefix), SharedCounts(two, prefix)
        try:
            sub = str(uuid.uuid4())
            # 200 calls at once, half through each process, against 50 a minute:
            # 50, whenever the burst comes (a clock minute's turn within it too).
            answers = await asyncio.gather(
                *(c.admit(sub, 50, None) for c in (a, b) for _ in range(100))
            )
            admitted = Counter(x.admitted for x in answers)[True]
            assert admitted == 50, admitted
            assert all(x.count is None for x in answers)
            assert sorted(x.remaining for x in answers if x.admitted) == list(range(50))
            refused = next(x for x in answers if not x.admitted)
            assert refused.remaining == 0 and 0 < refused.retry_after <= SECONDS
            assert refused.retry_after <= refused.reset <= SECONDS
            held = await one.hgetall(a.window_key(sub))
            assert sum(int(n) for n in held.values()) == 50
        finally:
            for r in (one, two):
                await r.aclose()

    asyncio.run(run())


def test_redis_decides_a_minute_as_slide_does_and_drops_its_old_seconds() -> None:
    async def run() -> None:
        prefix = f"nefos-test-{uuid.uuid4().hex}:gw:"
        one = aioredis.Redis.from_url(_url())
        counts = SharedCounts(one, prefix)
        try:
            sub = str(uuid.uuid4())
            key = counts.window_key(sub)
            sec, _ = await one.time()
            # Out of the window (dropped), 59 s ago, 20 s ago: 49 held of 50.
            await one.hset(key, mapping={sec - 70: 7, sec - 59: 20, sec - 20: 29})
            last = await counts.admit(sub, 50, None)
            assert last.admitted and last.remaining == 0
            refused = await counts.admit(sub, 50, None)
            assert not refused.admitted and refused.remaining == 0
            # Admitted again when the 20 of 59 s ago leave: within 2 s (1 if the
            # second turned between the two clocks' readings).
            assert 0 < refused.retry_after <= 2
            assert 59 < refused.reset <= SECONDS
            held = {int(k): int(v) for k, v in (await one.hgetall(key)).items()}
            assert sec - 70 not in held and sum(held.values()) == 50
            assert 0 < await one.ttl(key) <= 62
        finally:
            await one.delete(key)
            await one.aclose()

    asyncio.run(run())


def test_a_quota_count_starts_once_from_the_database_and_gives_places_back() -> None:
    async def run() -> None:
        prefix = f"nefos-test-{uuid.uuid4().hex}:gw:"
        one, two = aioredis.Redis.from_url(_url()), aioredis.Redis.from_url(_url())
        a, b = SharedCounts(one, prefix), SharedCounts(two, prefix)
        try:
            key = a.quota_key("org", "api", "2026-12-01T00:00:00+00:00")
            assert key == b.quota_key("org", "api", "2026-12-01T00:00:00+00:00")
            sub = str(uuid.uuid4())
            # Not in Redis yet: the caller reads the database; both processes start
            # it at once, from the same count (7): 8 and 9, never 8 twice.
            first = await a.admit(sub, 1000, key)
            assert first.admitted and first.count == UNKNOWN
            started = await asyncio.gather(a.start(key, 7, 3600), b.start(key, 7, 3600))
            assert sorted(started) == [8, 9]
            # From then on every admission counts, in either process.
            counts = await asyncio.gather(*(c.admit(sub, 1000, key) for c in (a, b, a, b)))
            assert sorted(x.count for x in counts if x.count is not None) == [10, 11, 12, 13]
            # A call that did not count gives its place back.
            await b.give_back(key)
            assert (await a.admit(sub, 1000, key)).count == 13
            assert 0 < await one.ttl(key) <= 3600
        finally:
            await one.delete(key)
            for r in (one, two):
                await r.aclose()

    asyncio.run(run())


def test_a_quota_counts_a_calls_units_and_moves_by_what_its_answer_says() -> None:
    async def run() -> None:
        prefix = f"nefos-test-{uuid.uuid4().hex}:gw:"
        redis = aioredis.Redis.from_url(_url())
        counts = SharedCounts(redis, prefix)
        key = counts.quota_key("org", "api", "2026-12-01T00:00:00+00:00")
        try:
            sub = str(uuid.uuid4())
            assert (await counts.admit(sub, 1000, key, 5)).count == UNKNOWN
            assert await counts.start(key, 10, 3600, 5) == 15
            assert (await counts.admit(sub, 1000, key, 3)).count == 18
            await counts.give_back(key, 3)  # refused: its 3 places back
            await counts.give_back(key, -2)  # said 7 of a declared 5: 2 more
            assert (await counts.admit(sub, 1000, key, 1)).count == 18
        finally:
            await redis.delete(key)
            await redis.aclose()

    asyncio.run(run())
