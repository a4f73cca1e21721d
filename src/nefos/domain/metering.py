"""What one call through the gateway weighs: its *units* (pure).

An API's creator may declare per-endpoint units (RapidAPI's "units", Kong's and
Zuplo's metering): a bounded list of rules ``(method, path, units)``, the first that
matches a call wins, and a call no rule matches is 1 unit. A rule's ``path`` is exact
(``/v1/translate``) or a prefix ending in ``/*`` (``/v1/*``: every path under
``/v1/``; ``/*``: every path); its ``method`` is one HTTP method or ``*``. Paths are
matched as the call log shows them: after the slug, before the query, as sent.

An API may also name a response header (``units_header``, e.g. ``X-Units``): when
its answer carries it with an integer from 0 to :data:`MAX_UNITS`, that is the call's
units instead of the declared ones; any other value is ignored (the declared units
stand). The gateway strips the header from the answer: it is the API's word to the
gateway, not to the consumer.

A plan's quota (``included_calls``) and its prices count units: a call of N units
takes N places of the quota and costs N times the unit price (``plans.units_price``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Units one call weighs at most (declared or read from the answer).
MAX_UNITS = 1000
#: Rules one API declares at most.
MAX_RULES = 100
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "*")
#: An HTTP header name (RFC 9110's token), short.
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
#: Headers an API may not name as its units header: the gateway strips it from the
#: answer, and these are the answer's framing or the gateway's own.
RESERVED_HEADERS = frozenset(
    {
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "date",
        "keep-alive",
        "location",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "retry-after",
        "server",
        "set-cookie",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-quota-limit",
        "x-quota-remaining",
        "x-request-id",
    }
)


@dataclass(frozen=True, slots=True)
class UnitRule:
    method: str
    path: str
    units: int

    def matches(self, method: str, path: str) -> bool:
        if self.method != "*" and self.method != method:
            return False
        if self.path.endswith("/*"):
            return path.startswith(self.path[:-1])
        return path == self.path


def rules_of(stored: Iterable[Mapping[str, Any]] | None) -> tuple[UnitRule, ...]:
    """The rules as stored with an API (``apis.units``), in their order."""
    return tuple(
        UnitRule(str(r["method"]).upper(), str(r["path"]), int(r["units"])) for r in (stored or ())
    )


def declared_units(rules: Sequence[UnitRule], method: str, path: str) -> int:
    """The units of a call by the first rule that matches it; 1 if none does."""
    for rule in rules:
        if rule.matches(method, path):
            return rule.units
    return 1


def header_units(value: bytes | str | None) -> int | None:
    """The units an answer's header says: an integer from 0 to MAX_UNITS, or None
    (absent or not such an integer: the declared units stand)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 4:
        return None
    units = int(text)
    return units if units <= MAX_UNITS else None
