"""bench/bench_ratelimit_redis.py for a second: a throwaway Redis, redis-benchmark,
the Python client and the limiter's decisions all run and a ratio is printed (every
decision admitted, or the bench fails). No timing is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_the_redis_limiter_benchmark_runs_briefly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_ratelimit_redis

    args = ["--duration", "0.5", "--processes", "1", "--requests", "2000", "--callers", "10"]
    assert bench_ratelimit_redis.main(args) == 0
    out = capsys.readouterr().out
    assert "| Nefos GCRA decisions | 1 process |" in out
    assert "ratio to redis-benchmark" in out
