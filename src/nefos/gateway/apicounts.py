"""The API gateway's counts in Redis, shared by every API process (with
``NEFOS_REDIS_URL``): each subscription's per-minute window and each quota's count
of the period.

Without Redis each process counts for itself (``gateway/apigw.py``): exact with one
process, but N processes would each admit a plan's whole limit and quota. With it,
one script a call decides atomically, on Redis's own clock:

* the window: the calls admitted in the subscription's current clock minute
  (``INCR`` of a key per minute, refused, and given back, past the plan's limit);
* the quota: the units of the organisation's calls to the API this period, a call's
  units counted when it is admitted. The count starts, once per period and
  process-independently, from the database's (``SET NX``: the first process to
  need it sets it); a call refused later (quota, wallet, a replay) or answered 500
  or more gives its places back (``DECRBY``), and one whose answer says other units
  than declared is counted again by the difference (``INCRBY``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

#: KEYS[1] the window's key prefix, KEYS[2] the quota's key ('' for none);
#: ARGV[1] the plan's per-minute limit, ARGV[2] the call's units. Returns {admitted,
#: remaining, reset, count}: count is the quota's count with this call's units, -1
#: when not counted, -2 when the
#: quota's count is not in Redis yet (the caller reads the database, then START).
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local reset = 60 - (now % 60)
local wkey = KEYS[1] .. ':' .. (now - (now % 60))
local limit = tonumber(ARGV[1])
local n = redis.call('INCR', wkey)
if n == 1 then redis.call('EXPIRE', wkey, 120) end
if n > limit then
  redis.call('DECR', wkey)
  return {0, 0, reset, -1}
end
if KEYS[2] == '' then return {1, limit - n, reset, -1} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {1, limit - n, reset, -2} end
return {1, limit - n, reset, redis.call('INCRBY', KEYS[2], ARGV[2])}
"""

#: KEYS[1] the quota's key; ARGV[1] the database's count, ARGV[2] seconds to keep it,
#: ARGV[3] the call's units. Sets the count if no process has, then counts this
#: call: the count with it.
START = """
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
return redis.call('INCRBY', KEYS[1], ARGV[3])
"""


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    remaining: int
    reset: float
    #: The quota's count with this call's units; None when the quota is not counted here,
    #: and ``UNKNOWN`` when the caller must start it from the database.
    count: int | None


UNKNOWN = -2


class SharedCounts:
    """See the module docstring. ``redis`` is a ``redis.asyncio.Redis``."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._admit = redis.register_script(ADMIT)
        self._start = redis.register_script(START)

    def window_key(self, subscription_id: str) -> str:
        return f"{self.prefix}w:{subscription_id}"

    def quota_key(self, organisation_id: str, api_id: str, period: str) -> str:
        digest = hashlib.sha256(f"{organisation_id}:{api_id}:{period}".encode()).hexdigest()
        return f"{self.prefix}q:{digest[:32]}"

    async def admit(
        self, subscription_id: str, limit: int, quota_key: str | None, units: int = 1
    ) -> Admission:
        ok, remaining, reset, count = await self._admit(
            keys=[self.window_key(subscription_id), quota_key or ""], args=[limit, units]
        )
        return Admission(
            bool(ok), int(remaining), float(reset), None if int(count) == -1 else int(count)
        )

    async def start(self, quota_key: str, counted: int, keep_seconds: int, units: int = 1) -> int:
        """Start the quota's count at the database's ``counted`` (if no process has)
        and count this call's units: the count with them."""
        return int(
            await self._start(keys=[quota_key], args=[counted, max(60, keep_seconds), units])
        )

    async def give_back(self, quota_key: str, units: int = 1) -> None:
        """Give back places a call reserved (a negative ``units`` takes more)."""
        await self.redis.decrby(quota_key, units)
