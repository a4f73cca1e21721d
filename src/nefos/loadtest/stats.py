"""What a generator measures: HDR histograms, the per-second timeline, the totals,
and whether the generator itself kept up.

Latencies are recorded in microseconds into HdrHistograms (1 µs to 1 hour, three
significant digits), never rounded into buckets of our own: percentiles come from
the histogram, the maximum is the histogram's, so p99 can never exceed it. Memory
is constant however long the run: one histogram for the whole run, one (reused)
for the current second, and counters; each finished second is handed out
(``Second``) and forgotten.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT = 3
#: A send later than its intended time by more than this, or an event loop tick late
#: by more than this, is the generator falling behind (seconds).
LAG_TOLERANCE = 0.025
#: Saturated when more than this share of sends (open model) or of the event loop's
#: ticks is late: a stall of a few tens of ms (a GC pass, a busy neighbour) is not.
LATE_SHARE = 0.05
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99_9": 99.9}


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT)


def _ms(us: float) -> float:
    return round(us / 1000, 3)


def latency_summary(h: HdrHistogram, total_us: float = 0.0) -> dict[str, float | None]:
    """avg, min, p50 ... p99.9, max of ``h`` in milliseconds (None when empty).
    ``avg`` is exact from ``total_us`` (the sum of what was recorded) when given."""
    count = h.get_total_count()
    if not count:
        return {"avg": None, "min": None, **{k: None for k in PERCENTILES}, "max": None}
    top = h.get_max_value()
    # One pass over the counts for every percentile (the histogram's own mean would
    # be another pass, and rounded: the exact sum is kept beside it).
    values = h.get_percentile_to_value_dict(list(PERCENTILES.values()))
    out: dict[str, float | None] = {
        "avg": _ms(total_us / count) if total_us else None,
        "min": _ms(h.get_min_value()),
    }
    for name, pct in PERCENTILES.items():
        out[name] = _ms(min(values[pct], top))
    out["max"] = _ms(top)
    return out


def clamp_us(seconds: float) -> int:
    return max(LOWEST_US, min(HIGHEST_US, round(seconds * 1_000_000)))


@dataclass
class Second:
    """One second of the timeline (``second`` counts from the start)."""

    second: int
    target_rate: float | None
    achieved_rate: int
    sent: int
    active_users: int
    ok: int
    failed: int
    p50: float | None
    p95: float | None
    p99: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "second": self.second,
            "target_rate": self.target_rate,
            "achieved_rate": self.achieved_rate,
            "sent": self.sent,
            "active_users": self.active_users,
            "ok": self.ok,
            "failed": self.failed,
            "p50": self.p50,
            "p95": self.p95,
            "p99": self.p99,
        }


def is_saturated(
    *, sends: int, late_sends: int, ticks: int, late_ticks: int
) -> tuple[bool, str | None]:
    """Did the generator fail to keep up? The open model's sends behind schedule, or
    (either model) its event loop waking late; a run flagged so reports what it
    achieved, which is less than what was asked, and says why."""
    if sends and late_sends > LATE_SHARE * sends:
        return True, (
            f"{late_sends} of {sends} requests were sent more than "
            f"{LAG_TOLERANCE * 1000:.0f} ms after their intended time"
        )
    if ticks >= 10 and late_ticks > LATE_SHARE * ticks:
        return True, (
            f"the generator's event loop was late by more than "
            f"{LAG_TOLERANCE * 1000:.0f} ms in {late_ticks} of {ticks} ticks"
        )
    return False, None


@dataclass
class Recorder:
    """Counts and histograms of one run. ``start`` is the run's start on the
    generator's monotonic clock. Outcomes are filed under the second in which they
    completed. A latency is recorded once, into the current second's histogram,
    which is added to the run's as the second closes: the run's totals trail the
    latencies by at most a second until ``flush``."""

    start: float
    target: Callable[[int], float | None] = lambda _s: None
    open_model: bool = False
    total: HdrHistogram = field(default_factory=new_histogram)
    uncorrected: HdrHistogram = field(default_factory=new_histogram)
    current: HdrHistogram = field(default_factory=new_histogram)
    total_us: float = 0.0
    uncorrected_us: float = 0.0
    ok: int = 0
    failed: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    second: int = 0
    sec_ok: int = 0
    sec_failed: int = 0
    sec_sent: int = 0
    active: int = 0
    sec_active: int = 0
    sends: int = 0
    late_sends: int = 0
    max_send_lag: float = 0.0
    ticks: int = 0
    late_ticks: int = 0
    max_tick_lag: float = 0.0
    last_done: float = 0.0
    finished: list[Second] = field(default_factory=list)

    # --- recording ----------------------------------------------------------------
    def sent(self, now: float, lag: float = 0.0) -> None:
        self.roll(now)
        self.sec_sent += 1
        self.sends += 1
        if lag > LAG_TOLERANCE:
            self.late_sends += 1
        self.max_send_lag = max(self.max_send_lag, lag)

    def done(
        self,
        now: float,
        latency: float | None,
        *,
        status: int | None = None,
        kind: str | None = None,
        uncorrected: float | None = None,
    ) -> None:
        """A request ended: with an HTTP ``status`` (its ``latency`` recorded), or
        with an error ``kind`` (connect, timeout, read: no latency recorded)."""
        self.roll(now)
        self.last_done = max(self.last_done, now)
        if latency is not None:
            us = clamp_us(latency)
            self.current.record_value(us)  # added to ``total`` when the second closes
            self.total_us += us
            if uncorrected is not None:
                unc = clamp_us(uncorrected)
                self.uncorrected.record_value(unc)
                self.uncorrected_us += unc
        if status is not None and status < 400:
            self.ok += 1
            self.sec_ok += 1
            return
        self.failed += 1
        self.sec_failed += 1
        if status is not None:
            self.by_status[str(status)] += 1
            self.by_kind["http_5xx" if status >= 500 else "http_4xx"] += 1
        else:
            self.by_kind[kind or "other"] += 1

    def users(self, active: int) -> None:
        self.active = active
        self.sec_active = max(self.sec_active, active)

    def tick(self, lag: float) -> None:
        self.ticks += 1
        if lag > LAG_TOLERANCE:
            self.late_ticks += 1
        self.max_tick_lag = max(self.max_tick_lag, lag)

    def roll(self, now: float) -> None:
        """Close every second that ended before ``now``."""
        index = int(now - self.start)
        while self.second < index:
            self._close()

    def _close(self) -> None:
        if self.current.get_total_count():
            self.total.add(self.current)
        p = latency_summary(self.current)
        self.finished.append(
            Second(
                second=self.second,
                target_rate=self.target(self.second),
                achieved_rate=self.sec_ok + self.sec_failed,
                sent=self.sec_sent,
                active_users=self.sec_active,
                ok=self.sec_ok,
                failed=self.sec_failed,
                p50=p["p50"],
                p95=p["p95"],
                p99=p["p99"],
            )
        )
        self.current.reset()
        self.second += 1
        self.sec_ok = self.sec_failed = self.sec_sent = 0
        self.sec_active = self.active

    def take(self) -> list[Second]:
        """The seconds closed since the last call."""
        out, self.finished = self.finished, []
        return out

    def flush(self) -> list[Second]:
        """At the end: close the current second too (if anything happened in it)."""
        if self.sec_ok or self.sec_failed or self.sec_sent:
            self._close()
        return self.take()

    # --- reporting ----------------------------------------------------------------
    def summary(self, now: float, *, histogram: bool = True) -> dict[str, Any]:
        """The totals so far, in seed 004's names (times in ms) and more."""
        total = self.ok + self.failed
        elapsed = max(1e-9, (self.last_done or now) - self.start)
        lat = latency_summary(self.total, self.total_us)
        saturated, reason = is_saturated(
            sends=self.sends if self.open_model else 0,
            late_sends=self.late_sends,
            ticks=self.ticks,
            late_ticks=self.late_ticks,
        )
        out: dict[str, Any] = {
            "total_requests": total,
            "successful_requests": self.ok,
            "failed_requests": self.failed,
            "error_rate": round(self.failed / total, 6) if total else 0.0,
            "avg_response_time": lat["avg"],
            "min_response_time": lat["min"],
            "p50_response_time": lat["p50"],
            "p90_response_time": lat["p90"],
            "p95_response_time": lat["p95"],
            "p99_response_time": lat["p99"],
            "p99_9_response_time": lat["p99_9"],
            "max_response_time": lat["max"],
            "requests_per_second": round(total / elapsed, 3) if total else 0.0,
            "elapsed_seconds": round(elapsed, 3),
            "errors": {"by_status": dict(self.by_status), "by_kind": dict(self.by_kind)},
            "saturated": saturated,
            "saturation": {
                "reason": reason,
                "late_sends": self.late_sends,
                "max_send_lag_ms": round(self.max_send_lag * 1000, 3),
                "late_ticks": self.late_ticks,
                "max_loop_lag_ms": round(self.max_tick_lag * 1000, 3),
            },
            "uncorrected": (
                latency_summary(self.uncorrected, self.uncorrected_us) if self.open_model else None
            ),
        }
        if histogram:
            out["histogram"] = encode(self.total)
        return out


def encode(h: HdrHistogram) -> str:
    """The histogram in HdrHistogram's compressed, base64 form (``HdrHistogram.decode``
    reads it back)."""
    raw = h.encode()
    return raw.decode("ascii") if isinstance(raw, bytes) else str(raw)


def merge_timeline(entries: list[dict[str, Any]]) -> dict[str, int]:
    """Totals of a timeline: what its seconds add up to (``ok``, ``failed``, ``sent``,
    ``total``); equal to the run's totals, which a test checks."""
    ok = sum(int(e.get("ok") or 0) for e in entries)
    failed = sum(int(e.get("failed") or 0) for e in entries)
    sent = sum(int(e.get("sent") or 0) for e in entries)
    return {"ok": ok, "failed": failed, "sent": sent, "total": ok + failed}
