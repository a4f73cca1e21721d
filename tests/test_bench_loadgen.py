"""bench/bench_loadgen.py for a moment: wrk and Nefos's generator both run against a
local target and the ratios are printed. No timing is asserted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make services)")
def test_the_load_generator_benchmark_runs_briefly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_loadgen

    args = ["--duration", "1", "--connections", "4", "--target", "python"]
    assert bench_loadgen.main(args) == 0
    out = capsys.readouterr().out
    assert "| python | wrk |" in out and "| python | nefos generator" in out
    assert "requests/s ratio to wrk" in out
