"""The gateway's request counters (GET /metrics' `requests` block), on a fake clock."""

from __future__ import annotations

import pytest

from nefos.gateway import counters as module
from nefos.gateway.counters import WINDOW_SECONDS, RequestCounters


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(module.time, "monotonic", c)
    return c


def test_totals_and_error_rate_count_every_response(clock: Clock) -> None:
    c = RequestCounters()
    for status in (200, 201, 404, 422, 500, 503, 200, 200):
        c.count(status)
    assert (c.total, c.client_errors, c.server_errors) == (8, 2, 2)
    assert c.error_rate() == 25.0
    assert RequestCounters().error_rate() == 0.0


def test_requests_per_second_average_the_last_whole_seconds(clock: Clock) -> None:
    c = RequestCounters()
    for second in range(10):
        clock.now = 1000.0 + second
        for _ in range(5):
            c.count(200)
    clock.now = 1010.0
    # Ten whole seconds of 5 requests each since the counters started.
    assert c.requests_per_second() == 5.0
    # A minute later with no requests, the window is empty again.
    clock.now = 1010.0 + WINDOW_SECONDS + 5
    assert c.requests_per_second() == 0.0
    c.count(200)
    clock.now += 1
    assert c.requests_per_second() == pytest.approx(1 / (WINDOW_SECONDS - 1))
