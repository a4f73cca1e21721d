"""Service health, the pure part: check definitions, the rise/fall state machine,
a service's health from its instances', and the bounded histories (no I/O).

A check's result is passing, warning or critical, as Consul's are: an HTTP check
passes on a status in its expected range, warns on 429 (Too Many Requests: alive,
shedding load) and is critical otherwise; an exec check passes on exit 0, warns on
exit 1, and is critical on anything else; a TCP check passes when it connects.

An instance does not flap with each result: it turns ``passing`` after ``rise``
consecutive passing results and ``critical`` after ``fall`` consecutive failures
(a warning counts as neither: it is shown as it comes, like Consul's). A new
instance starts ``critical`` ("not checked yet") and takes traffic only once it
passes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

#: Results and state changes each instance keeps (newest last).
HISTORY = 20
#: Characters of a check's output kept (an HTTP body, an exec's output).
OUTPUT_LIMIT = 500


class Health(enum.StrEnum):
    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"
    MAINTENANCE = "maintenance"


_RANK = {Health.PASSING: 0, Health.WARNING: 1, Health.CRITICAL: 2}

CheckType = Literal["http", "tcp", "exec", "none"]


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """How an instance is checked. ``port`` is the container port the check reaches
    (its published host port is looked up); None: the service's first port."""

    type: CheckType = "tcp"
    port: int | None = None
    method: str = "GET"
    path: str = "/"
    status_low: int = 200
    status_high: int = 399
    command: tuple[str, ...] = ()
    interval: float = 10.0
    timeout: float = 2.0
    rise: int = 1
    fall: int = 2

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "interval": self.interval,
            "timeout": self.timeout,
            "rise": self.rise,
            "fall": self.fall,
        }
        if self.type in ("http", "tcp"):
            out["port"] = self.port
        if self.type == "http":
            out.update(
                method=self.method,
                path=self.path,
                expected_status=f"{self.status_low}-{self.status_high}",
            )
        if self.type == "exec":
            out["command"] = list(self.command)
        return out


def default_check(has_ports: bool) -> CheckSpec:
    """A service with a port is checked by connecting to it; one without by its
    replicas running at all (``none``: the engine's word)."""
    return CheckSpec(type="tcp") if has_ports else CheckSpec(type="none")


_STATUS_RANGE = re.compile(r"^\s*([1-5]\d\d)\s*(?:-\s*([1-5]\d\d))?\s*$")


def parse_status_range(text: str) -> tuple[int, int]:
    """``"200-299"`` or ``"204"`` -> (low, high); ValueError otherwise."""
    m = _STATUS_RANGE.match(text)
    if not m:
        raise ValueError(f"{text!r}: expected an HTTP status or a range such as 200-399")
    low = int(m.group(1))
    high = int(m.group(2) or low)
    if high < low:
        raise ValueError(f"{text!r}: the range ends before it starts")
    return low, high


def check_from_dict(raw: Mapping[str, Any]) -> CheckSpec:
    """The stored (already validated) form back into a CheckSpec."""
    low, high = parse_status_range(str(raw.get("expected_status", "200-399")))
    return CheckSpec(
        type=raw.get("type", "tcp"),
        port=raw.get("port"),
        method=raw.get("method", "GET"),
        path=raw.get("path", "/"),
        status_low=low,
        status_high=high,
        command=tuple(raw.get("command") or ()),
        interval=float(raw.get("interval", 10.0)),
        timeout=float(raw.get("timeout", 2.0)),
        rise=int(raw.get("rise", 1)),
        fall=int(raw.get("fall", 2)),
    )


def http_result(status: int, spec: CheckSpec) -> Health:
    if spec.status_low <= status <= spec.status_high:
        return Health.PASSING
    if status == 429:
        return Health.WARNING
    return Health.CRITICAL


def exec_result(exit_code: int) -> Health:
    if exit_code == 0:
        return Health.PASSING
    if exit_code == 1:
        return Health.WARNING
    return Health.CRITICAL


def clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= OUTPUT_LIMIT else text[: OUTPUT_LIMIT - 1] + "…"


@dataclass(slots=True)
class InstanceState:
    """One instance's standing between checks (the row's counters and status)."""

    status: Health = Health.CRITICAL
    successes: int = 0
    failures: int = 0
    checks: list[dict[str, Any]] = field(default_factory=list)
    transitions: list[dict[str, Any]] = field(default_factory=list)

    def record(
        self, result: Health, output: str, at: str, latency_ms: float | None, spec: CheckSpec
    ) -> Health | None:
        """Count one check's result; the new status if it changed, else None."""
        self.checks = _bounded(
            self.checks,
            {
                "at": at,
                "status": result.value,
                "output": clip(output),
                "latency_ms": None if latency_ms is None else round(latency_ms, 2),
            },
        )
        if result is Health.PASSING:
            self.successes, self.failures = self.successes + 1, 0
            new = Health.PASSING if self.successes >= spec.rise else self.status
        elif result is Health.CRITICAL:
            self.successes, self.failures = 0, self.failures + 1
            new = Health.CRITICAL if self.failures >= spec.fall else self.status
        else:
            self.successes = self.failures = 0
            new = Health.WARNING
        if new is self.status:
            return None
        self.transitions = _bounded(
            self.transitions,
            {"at": at, "from": self.status.value, "to": new.value, "output": clip(output)},
        )
        self.status = new
        return new


def _bounded(items: Sequence[dict[str, Any]], item: dict[str, Any]) -> list[dict[str, Any]]:
    return [*items[-(HISTORY - 1) :], item]


def effective(status: str, maintenance: bool) -> Health:
    """What an instance shows and is routed by: maintenance wins over its checks."""
    return Health.MAINTENANCE if maintenance else Health(status)


def service_health(instances: Iterable[Health]) -> Health:
    """A service's health from its instances': ``passing`` when every instance in
    service passes; ``critical`` when none passes (or it has no instance in service);
    ``warning`` in between (degraded: some traffic goes on); ``maintenance`` when every
    instance is in maintenance."""
    states = list(instances)
    serving = [s for s in states if s is not Health.MAINTENANCE]
    if states and not serving:
        return Health.MAINTENANCE
    if not serving or Health.PASSING not in serving:
        return Health.CRITICAL
    worst = max(serving, key=lambda s: _RANK[s])
    return Health.PASSING if worst is Health.PASSING else Health.WARNING
