"""Pass/fail thresholds of a load test: ``"p95 < 300"``, ``"p99<=800"``,
``"error_rate < 1%"``, ``"rps > 50"``.

The grammar is strict: ``METRIC OP NUMBER [UNIT]`` and nothing else. Latencies are
in milliseconds (``ms`` may be written, ``s`` converts); ``error_rate`` is a
fraction (``0.01``) or a percentage (``1%``); ``rps`` is requests per second. A
threshold that does not parse is a ``ThresholdError`` naming what is wrong, which
the service turns into a 422.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The latency metrics and the key of the summary that holds each (milliseconds).
LATENCY_METRICS: dict[str, str] = {
    "avg": "avg_response_time",
    "min": "min_response_time",
    "p50": "p50_response_time",
    "p90": "p90_response_time",
    "p95": "p95_response_time",
    "p99": "p99_response_time",
    "p99.9": "p99_9_response_time",
    "max": "max_response_time",
}
METRICS = (*LATENCY_METRICS, "error_rate", "rps")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
MAX_THRESHOLDS = 20
_SYNTAX = re.compile(
    r"^\s*(?P<metric>[a-z][a-z0-9_.]*)\s*(?P<op><=|>=|<|>)\s*"
    r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>ms|s|%)?\s*$"
)


class ThresholdError(ValueError):
    """A threshold that does not parse; ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class Threshold:
    text: str
    metric: str
    op: str
    limit: float  # milliseconds, a fraction (error_rate) or requests/s

    def measure(self, summary: Mapping[str, Any]) -> float | None:
        """The measured value of this threshold's metric in ``summary`` (None when
        nothing was measured: no response at all)."""
        if self.metric == "error_rate":
            total = summary.get("total_requests") or 0
            return (summary.get("failed_requests") or 0) / total if total else None
        if self.metric == "rps":
            return float(summary.get("requests_per_second") or 0.0)
        value = summary.get(LATENCY_METRICS[self.metric])
        return None if value is None else float(value)

    def check(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        value = self.measure(summary)
        passed = value is not None and OPERATORS[self.op](value, self.limit)
        return {
            "threshold": self.text,
            "metric": self.metric,
            "op": self.op,
            "limit": self.limit,
            "value": value,
            "passed": passed,
        }


def parse(text: str) -> Threshold:
    """One threshold; ThresholdError if it is not exactly ``METRIC OP NUMBER [UNIT]``."""
    if len(text) > 64:
        raise ThresholdError("too long (64 characters at most)")
    m = _SYNTAX.match(text)
    if m is None:
        raise ThresholdError(
            "expected METRIC OP VALUE, e.g. 'p95 < 300', 'error_rate < 1%', 'rps > 50'"
        )
    metric, op, unit = m["metric"], m["op"], m["unit"]
    number = float(m["number"])
    if metric not in METRICS:
        raise ThresholdError(f"unknown metric {metric!r}: one of {', '.join(METRICS)}")
    if not math.isfinite(number):
        raise ThresholdError("the value must be a finite number")
    if metric in LATENCY_METRICS:
        if unit == "%":
            raise ThresholdError(f"{metric} is a time: milliseconds (ms) or seconds (s)")
        limit = number * 1000 if unit == "s" else number
    elif metric == "error_rate":
        if unit in ("ms", "s"):
            raise ThresholdError("error_rate is a fraction (0.01) or a percentage (1%)")
        limit = number / 100 if unit == "%" else number
        if limit > 1:
            raise ThresholdError("error_rate is at most 1 (100%)")
    else:  # rps
        if unit is not None:
            raise ThresholdError("rps is requests per second, without a unit")
        limit = number
    canonical = f"{metric} {op} {m['number']}{unit or ''}"
    return Threshold(text=canonical, metric=metric, op=op, limit=limit)


def parse_all(texts: Sequence[str]) -> tuple[list[Threshold], dict[str, str]]:
    """Every threshold that parses, and ``{"thresholds[i]": why}`` for those that do
    not (empty when all do)."""
    found: list[Threshold] = []
    errors: dict[str, str] = {}
    if len(texts) > MAX_THRESHOLDS:
        errors["thresholds"] = f"at most {MAX_THRESHOLDS} thresholds"
    for i, text in enumerate(texts):
        try:
            found.append(parse(text))
        except ThresholdError as exc:
            errors[f"thresholds[{i}]"] = f"{text!r}: {exc}"
    return found, errors


def verdict(thresholds: Sequence[Threshold], summary: Mapping[str, Any]) -> dict[str, Any]:
    """``{"passed": all passed, "thresholds": [each with its measured value]}``; a
    test without thresholds passes."""
    checks = [t.check(summary) for t in thresholds]
    return {"passed": all(c["passed"] for c in checks), "thresholds": checks}
