"""bench/bench_api_metering.py at a size of seconds, on each backend: it stores its
calls, charges them both ways and checks every consumer's charges and every
creator's revenue against its SQL ``GROUP BY`` (a wrong sum fails the run); and
two billing passes at once charge every call exactly once. No timing is asserted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_the_metering_benchmark_runs_at_a_small_size(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_api_metering

    out = tmp_path / "results.json"
    args = ["--database", backend, "--calls", "3000", "--consumers", "5", "--apis", "4"]
    args += ["--repeat", "1", "--json", str(out)]
    assert bench_api_metering.main(args) == 0
    [result] = json.loads(out.read_text())
    assert result["backend"] == backend and result["calls"] == 3000
    # 5 consumers, one currency: one window charged each.
    assert result["charges"] == 5 and result["ratio"] > 0


def test_two_passes_at_once_charge_every_call_once(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_api_metering as bench

    from nefos.billing import apicalls
    from nefos.config import Settings
    from nefos.db.session import Database

    # One aggregate per two accounts: the passes meet on every account's window.
    monkeypatch.setattr(apicalls, "ACCOUNTS_PER_QUERY", 2)

    async def run() -> None:
        async with bench.fresh_database(backend) as (url, target):
            db = Database(url)
            try:
                world = await bench.make_world(db, 6, 3)
                await bench.populate(backend, target, world, 2000)
                sums = await bench.exact_sums(db)
                settings = Settings(database_url=url)
                passes = await asyncio.gather(*(bench.charge_all(db, settings) for _ in range(3)))
                # Each consumer's one window charged once, by whichever pass won it.
                assert sum(n for _, n in passes) == 6
                await bench.check(db, settings, world, sums)
            finally:
                await db.dispose()

    asyncio.run(run())
