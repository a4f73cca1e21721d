"""The API gateway's counts in Redis (``gateway/apicounts.py``), as two API processes
share them: two clients of one Redis, as two processes would be. Against the test
Redis that ``make services`` starts."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter

import redis.asyncio as aioredis

from nefos.gateway.apicounts import UNKNOWN, SharedCounts


def _url() -> str:
    url = os.environ.get("NEFOS_TEST_REDIS_URL")
    assert url, "make services starts Redis (NEFOS_TEST_REDIS_URL)"
    return url


def test_two_processes_admit_a_plans_limit_once_between_them() -> None:
    async def run() -> None:
        prefix = f"nefos-test-{uuid.uuid4().hex}:gw:"
        one, two = aioredis.Redis.from_url(_url()), aioredis.Redis.from_url(_url())
        a, b = SharedCounts(one, prefix), SharedCounts(two, prefix)
        try:
            sub = str(uuid.uuid4())
            # 200 calls at once, half through each process, against 50 a minute.
            # (Unless the clock minute turns during the burst: then each minute
            # admits its own 50, and so at most 100.)
            answers = await asyncio.gather(
                *(c.admit(sub, 50, None) for c in (a, b) for _ in range(100))
            )
            admitted = Counter(x.admitted for x in answers)[True]
            assert admitted in (50, 100), admitted
            assert all(x.count is None for x in answers)
            refused = next(x for x in answers if not x.admitted)
            assert refused.remaining == 0 and 0 < refused.reset <= 60
        finally:
            for r in (one, two):
                await r.aclose()

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
