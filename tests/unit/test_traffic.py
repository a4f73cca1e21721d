"""The ingress's per-instance figures: a minute of requests/s, error rate and p95."""

from __future__ import annotations

from unittest import mock

from nefos.gateway.traffic import MAX_INSTANCES, WINDOW, TrafficStats


def at(stats: TrafficStats, second: float, *records: tuple[str, float, bool]) -> None:
    with mock.patch("nefos.gateway.traffic.time.time", return_value=second):
        for instance, latency, error in records:
            stats.record(instance, latency, error)


def test_a_minute_of_figures_per_instance() -> None:
    stats = TrafficStats()
    t0 = 1_000_020.0  # a half-window's start: both histograms count
    for s in range(WINDOW):
        at(stats, t0 + s, *[("a", 0.010, False)] * 9, ("a", 0.200, True))
    seen = stats.of("a", now=t0 + WINDOW - 1)
    assert seen is not None
    assert seen.requests_per_second == 10.0 and seen.error_rate == 10.0
    # 90 % at 10 ms, 10 % at 200 ms: the p95 is the slow tenth's.
    assert seen.p95_ms is not None and 198 <= seen.p95_ms <= 202
    assert stats.of("b") is None


def test_old_traffic_leaves_the_window() -> None:
    stats = TrafficStats()
    at(stats, 2_000_000.0, ("a", 0.01, False))
    assert stats.of("a", now=2_000_000.0) is not None
    assert stats.of("a", now=2_000_000.0 + WINDOW + 1) is None
    # Traffic again much later: the old histograms are not mixed in.
    at(stats, 2_000_000.0 + 10 * WINDOW, ("a", 0.5, False))
    again = stats.of("a", now=2_000_000.0 + 10 * WINDOW)
    assert again is not None and again.requests_per_second == round(1 / WINDOW, 3)
    assert again.p95_ms is not None and 495 <= again.p95_ms <= 505


def test_instances_are_bounded() -> None:
    stats = TrafficStats()
    for i in range(MAX_INSTANCES + 5):
        at(stats, 3_000_000.0, (f"i{i}", 0.001, False))
    assert stats.of("i0", now=3_000_000.0) is None
    assert stats.of(f"i{MAX_INSTANCES + 4}", now=3_000_000.0) is not None
