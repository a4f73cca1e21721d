"""bench/bench_billing_rating.py at a size of seconds, on each backend: it loads its
usage, rates it both ways, and checks every invoice total against its SQL
``GROUP BY`` (a wrong total fails the run). No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_the_rating_benchmark_runs_at_a_small_size(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_billing_rating

    out = tmp_path / "results.json"
    args = ["--database", backend, "--resources", "30", "--organisations", "4"]
    args += ["--hours", "24", "--repeat", "1", "--json", str(out)]
    assert bench_billing_rating.main(args) == 0
    [result] = json.loads(out.read_text())
    assert result["backend"] == backend
    assert (result["records"], result["groups"], result["organisations"]) == (720, 30, 4)
    # 15 containers and 9 VMs: vCPU, memory and storage; 6 volumes: storage.
    assert result["lines"] == 24 * 3 + 6
    assert result["ratio_generate_each"] > 0 and result["ratio_run_due"] > 0
