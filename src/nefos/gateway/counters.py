"""In-process request counters for ``GET /metrics`` and ``/prometheus``.

Counted by ``RequestContextMiddleware`` when a response starts: a few integer
additions per request, no lock (one event loop), no I/O. Each server process
counts its own requests; Prometheus sums the processes it scrapes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

#: The window ``requests_per_second`` averages over.
WINDOW_SECONDS = 60


@dataclass
class RequestCounters:
    total: int = 0
    client_errors: int = 0  # 4xx
    server_errors: int = 0  # 5xx
    started: float = field(default_factory=lambda: time.monotonic())
    # Requests per whole second of the last WINDOW_SECONDS, as a ring.
    _ring: list[int] = field(default_factory=lambda: [0] * WINDOW_SECONDS)
    _second: int = 0

    def count(self, status: int) -> None:
        self.total += 1
        if status >= 500:
            self.server_errors += 1
        elif status >= 400:
            self.client_errors += 1
        now = int(time.monotonic())
        if now != self._second:
            self._advance(now)
        self._ring[now % WINDOW_SECONDS] += 1

    def _advance(self, now: int) -> None:
        # Clear the slots of the seconds that passed without a request.
        for second in range(max(self._second + 1, now - WINDOW_SECONDS + 1), now + 1):
            self._ring[second % WINDOW_SECONDS] = 0
        self._second = now

    def requests_per_second(self) -> float:
        now = int(time.monotonic())
        if now != self._second:
            self._advance(now)
        # The current second is still filling: average over the whole ones before it.
        seconds = min(WINDOW_SECONDS - 1, max(int(time.monotonic() - self.started), 1))
        done = sum(self._ring) - self._ring[now % WINDOW_SECONDS]
        return done / seconds

    def error_rate(self) -> float:
        """Server errors (5xx) as a percentage of all requests."""
        return self.server_errors / self.total * 100.0 if self.total else 0.0
