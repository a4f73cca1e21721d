"""What a generator is asked to do (``Plan``: JSON between the control plane and
the generator process), and the pure arithmetic of its two models.

* **Closed model** (no ``rate``): ``users`` virtual users, started one after the
  other, linearly over ``ramp_up`` seconds (user ``i`` of ``n`` at
  ``ramp_up * i / n``), each sending its next request as soon as the previous one
  is answered. The offered load is whatever the target lets through.
* **Open model** (``rate``): requests arrive on a schedule, ``rate`` per second
  (ramped linearly from 0 over ``ramp_up`` seconds), whether or not earlier ones
  were answered. Each request's latency counts from its *intended* send time, so a
  target (or a generator) that stalls is charged for the requests that waited
  (coordinated omission, Gil Tene); the latency from the actual send is kept
  beside it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request of a scenario; ``path`` starts with ``/`` and is sent to each
    target URL in turn."""

    method: str = "GET"
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    weight: int = 1


@dataclass(frozen=True, slots=True)
class Plan:
    urls: tuple[str, ...]
    requests: tuple[RequestSpec, ...]
    duration: float
    users: int
    ramp_up: float = 0.0
    rate: float | None = None
    timeout: float = 10.0
    #: Open model: at most this many requests in flight (the generator's own bound).
    max_in_flight: int = 1000

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Plan:
        return cls(
            urls=tuple(str(u) for u in raw["urls"]),
            requests=tuple(RequestSpec(**r) for r in raw["requests"]),
            duration=float(raw["duration"]),
            users=int(raw["users"]),
            ramp_up=float(raw.get("ramp_up") or 0.0),
            rate=None if raw.get("rate") is None else float(raw["rate"]),
            timeout=float(raw.get("timeout") or 10.0),
            max_in_flight=int(raw.get("max_in_flight") or 1000),
        )


def user_start(i: int, users: int, ramp_up: float) -> float:
    """Closed model: the second (from the start) at which user ``i`` (0-based) starts."""
    return ramp_up * i / users if users else 0.0


def scheduled(rate: float, ramp_up: float, t: float) -> float:
    """Open model: how many requests are due by ``t`` seconds (a real number): the
    integral of a rate ramped linearly from 0 to ``rate`` over ``ramp_up``, then flat."""
    if t <= 0:
        return 0.0
    if ramp_up > 0 and t < ramp_up:
        return rate * t * t / (2 * ramp_up)
    head = rate * ramp_up / 2 if ramp_up > 0 else 0.0
    return head + rate * (t - ramp_up if ramp_up > 0 else t)


def intended_time(k: int, rate: float, ramp_up: float) -> float:
    """Open model: the intended send time (seconds from the start) of request ``k``
    (0-based): the inverse of ``scheduled``, so that ``scheduled(t_k) == k``."""
    if ramp_up > 0:
        head = rate * ramp_up / 2
        if k < head:
            return math.sqrt(2 * ramp_up * k / rate)
        return ramp_up + (k - head) / rate
    return k / rate


def schedule(rate: float, ramp_up: float, duration: float) -> Iterator[float]:
    """Open model: every intended send time before ``duration``, in order."""
    k = 0
    while True:
        t = intended_time(k, rate, ramp_up)
        if t >= duration:
            return
        yield t
        k += 1


def target_rate(second: int, rate: float | None, ramp_up: float) -> float | None:
    """Open model: requests due in second ``second`` (None in the closed model)."""
    if rate is None:
        return None
    return round(scheduled(rate, ramp_up, second + 1) - scheduled(rate, ramp_up, second), 3)


def weighted_cycle(requests: Sequence[RequestSpec]) -> list[int]:
    """Indexes of ``requests`` in a cycle where each appears ``weight`` times, spread
    out (smooth weighted round-robin, as nginx's upstreams): the mix holds over any
    stretch of the run, not only over a whole cycle."""
    weights = [max(1, r.weight) for r in requests]
    total = sum(weights)
    current = [0] * len(weights)
    out = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: current[i])
        current[best] -= total
        out.append(best)
    return out


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not an http:// URL: {url!r}")
    return parts.hostname, parts.port or 80
