"""Rate-limit policies and groups (pure: no I/O). The limiter is
``nefos.gateway.limiter``; organisations' overrides are ``services.rate_limits``."""

from __future__ import annotations

import math
from dataclasses import dataclass

UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
#: Groups and the path prefixes (after ``/api/v1`` or ``/api``) that belong to them.
#: ``auth`` is about guessing passwords and sign-up spam: only the routes that take
#: credentials, not a signed-in caller's ``/auth/me`` or ``/auth/logout``.
GROUPS: dict[str, tuple[str, ...]] = {
    "auth": ("/auth/register", "/auth/login", "/auth/token", "/auth/refresh", "/users/password"),
    "containers": ("/containers", "/services", "/apis"),
    "monitoring": ("/monitoring", "/metrics", "/alerts", "/analytics"),
    "billing": (
        "/billing",
        "/wallet",
        "/payments",
        "/invoices",
        "/quotes",
        "/products",
        "/payouts",
    ),
}
#: The overall policy every request counts against.
USER = "user"
ALL_GROUPS = (*GROUPS, USER)

US = 1_000_000  # microseconds a second: GCRA's times are integers of µs


@dataclass(frozen=True)
class Policy:
    """``limit`` requests per ``window`` seconds; ``limit == 0`` means unlimited."""

    name: str
    limit: int
    window: int

    @property
    def unlimited(self) -> bool:
        return self.limit <= 0

    @property
    def interval_us(self) -> float:
        return self.window * US / self.limit

    @property
    def rate(self) -> str:
        return "none" if self.unlimited else format_rate(self.limit, self.window)

    @property
    def per_second(self) -> float:
        return math.inf if self.unlimited else self.limit / self.window


def parse_rate(text: str) -> tuple[int, int]:
    """``"100/minute"`` → ``(100, 60)``; ``"none"`` → ``(0, 0)``. ValueError if bad."""
    text = text.strip().lower()
    if text == "none":
        return 0, 0
    count, _, unit = text.partition("/")
    if unit not in UNITS or not count.isdigit() or not 0 < int(count) < 10**9:
        raise ValueError(f"not a rate: {text!r} (use N/second|minute|hour|day or none)")
    return int(count), UNITS[unit]


def format_rate(limit: int, window: int) -> str:
    for unit, seconds in UNITS.items():
        if window == seconds:
            return f"{limit}/{unit}"
    return f"{limit}/{window}s"


def default_policies(settings: object) -> dict[str, Policy]:
    """Each group's policy from ``settings.rate_limit_<group>`` (the process's
    ``Settings``; the domain does not import the configuration, the configuration
    imports the domain)."""
    out = {}
    for name in ALL_GROUPS:
        limit, window = parse_rate(getattr(settings, f"rate_limit_{name}"))
        out[name] = Policy(name, limit, window)
    return out


def group_of(path: str) -> str | None:
    """The group of a request path (with or without the ``/api/v1`` / ``/api`` prefix)."""
    for prefix in ("/api/v1", "/api"):
        if path.startswith(prefix + "/"):
            path = path[len(prefix) :]
            break
    for group, prefixes in GROUPS.items():
        for p in prefixes:
            if path == p or path.startswith(p + "/"):
                return group
    return None
