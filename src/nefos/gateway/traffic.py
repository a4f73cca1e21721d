"""What the ingress saw of each instance: requests per second, error rate and p95
latency over the last minute (this process's share of the traffic).

Per instance: a ring of per-second request and error counts (``WINDOW`` seconds)
and two latency histograms (HDR, 1 µs to 1 min, two significant digits: a p95
within 1 %, 10 KiB each) that take turns: the current half-window records, the
previous one is kept, and the p95 is read from both together. Memory is bounded
by ``MAX_INSTANCES`` (about 25 KiB each, 50 MiB in all); the instances seen
longest ago are forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

#: Seconds the figures cover.
WINDOW = 60
MAX_INSTANCES = 2_000
_LOWEST_US, _HIGHEST_US, _DIGITS = 1, 60_000_000, 2


def _histogram() -> HdrHistogram:
    return HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS, word_size=4)


@dataclass
class _Instance:
    counts: list[int] = field(default_factory=lambda: [0] * WINDOW)
    errors: list[int] = field(default_factory=lambda: [0] * WINDOW)
    seconds: list[int] = field(default_factory=lambda: [0] * WINDOW)
    current: HdrHistogram = field(default_factory=_histogram)
    previous: HdrHistogram = field(default_factory=_histogram)
    half: int = 0  # which half-window ``current`` records

    def record(self, now: float, latency_s: float, error: bool) -> None:
        second = int(now)
        slot = second % WINDOW
        if self.seconds[slot] != second:
            self.seconds[slot], self.counts[slot], self.errors[slot] = second, 0, 0
        self.counts[slot] += 1
        self.errors[slot] += int(error)
        half = second // (WINDOW // 2)
        if half != self.half:
            if half == self.half + 1:
                self.previous, self.current = self.current, self.previous
            else:
                self.previous.reset()  # idle for longer than a half-window
            self.current.reset()
            self.half = half
        self.current.record_value(min(max(int(latency_s * 1e6), _LOWEST_US), _HIGHEST_US))


@dataclass(frozen=True, slots=True)
class Traffic:
    requests_per_second: float
    error_rate: float  # percent of the requests answered 5xx or not at all
    p95_ms: float | None


class TrafficStats:
    def __init__(self) -> None:
        self._instances: OrderedDict[str, _Instance] = OrderedDict()

    def record(self, instance_id: str, latency_s: float, error: bool) -> None:
        entry = self._instances.get(instance_id)
        if entry is None:
            entry = self._instances[instance_id] = _Instance()
            while len(self._instances) > MAX_INSTANCES:
                self._instances.popitem(last=False)
        else:
            self._instances.move_to_end(instance_id)
        entry.record(time.time(), latency_s, error)

    def of(self, instance_id: str, now: float | None = None) -> Traffic | None:
        """The last minute's figures of one instance; None if it had no traffic."""
        entry = self._instances.get(instance_id)
        if entry is None:
            return None
        second = int(now if now is not None else time.time())
        live = [i for i in range(WINDOW) if second - WINDOW < entry.seconds[i] <= second]
        requests = sum(entry.counts[i] for i in live)
        if not requests:
            return None
        errors = sum(entry.errors[i] for i in live)
        both = _histogram()
        half = second // (WINDOW // 2)
        if entry.half == half:
            both.add(entry.current)
            both.add(entry.previous)
        elif entry.half == half - 1:
            both.add(entry.current)
        p95 = both.get_value_at_percentile(95) / 1000 if both.get_total_count() else None
        return Traffic(
            requests_per_second=round(requests / WINDOW, 3),
            error_rate=round(100 * errors / requests, 2),
            p95_ms=None if p95 is None else round(p95, 3),
        )
