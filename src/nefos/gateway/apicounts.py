"""The API gateway's counts: each subscription's sliding minute, in this process or
in Redis (with ``NEFOS_REDIS_URL``, shared by every API process), and each quota's
count of the period in Redis.

The minute (:func:`slide`): a subscription's calls are counted per second, and a
call is admitted while the calls of its second and of the 60 before it are fewer
than the plan's limit. So no 60 seconds ever hold more calls than the limit, at a
clock minute's turn as anywhere else (a window per clock minute admits the limit on
each side of the turn: twice the limit within a second); what it costs is that a
refused call may be admitted up to a second later than an exact count of the last
60 seconds would allow. A subscription keeps at most 61 counts.

Without Redis each process counts for itself (``gateway/apigw.py``): exact with one
process, but N processes would each admit a plan's whole limit and quota. With it,
one script a call decides atomically, on Redis's own clock:

* the minute: the same counts in a hash per subscription (a field per second,
  those older than the window deleted as they are met);
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

#: Seconds of calls a subscription's minute counts: its call's own and the 60 before.
SECONDS = 61

#: KEYS[1] the subscription's counts (a hash: epoch second -> calls), KEYS[2] the
#: quota's key ('' for none); ARGV[1] the plan's per-minute limit, ARGV[2] the call's
#: units. Returns {admitted, remaining, reset ms, count, retry-after ms}: count is the
#: quota's count with this call's units, -1 when not counted, -2 when the quota's
#: count is not in Redis yet (the caller reads the database, then START). The same
#: decision as :func:`slide`.
ADMIT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local flat = redis.call('HGETALL', KEYS[1])
local secs = {}
local counts = {}
local total = 0
for i = 1, #flat, 2 do
  local s = tonumber(flat[i])
  if s <= sec - 61 then
    redis.call('HDEL', KEYS[1], flat[i])
  else
    local c = tonumber(flat[i + 1])
    total = total + c
    counts[s] = c
    secs[#secs + 1] = s
  end
end
if total >= limit then
  table.sort(secs)
  local left = total
  local retry = 0
  for _, s in ipairs(secs) do
    left = left - counts[s]
    if left < limit then
      retry = (s + 61) * 1000 - now
      break
    end
  end
  return {0, 0, (secs[#secs] + 61) * 1000 - now, -1, retry}
end
redis.call('HINCRBY', KEYS[1], t[1], 1)
redis.call('EXPIRE', KEYS[1], 62)
local reset = (sec + 61) * 1000 - now
if KEYS[2] == '' then return {1, limit - total - 1, reset, -1, 0} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {1, limit - total - 1, reset, -2, 0} end
return {1, limit - total - 1, reset, redis.call('INCRBY', KEYS[2], ARGV[2]), 0}
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
    #: Seconds until the subscription's minute holds no call (``RateLimit-Reset``).
    reset: float
    #: The quota's count with this call's units; None when the quota is not counted here,
    #: and ``UNKNOWN`` when the caller must start it from the database.
    count: int | None
    #: Seconds until a call would be admitted (0 when this one was).
    retry_after: float = 0.0


def slide(counts: dict[int, int], now: float, limit: int) -> Admission:
    """One call against a subscription's minute (the module docstring): ``counts``
    are its calls per epoch second, changed in place (the seconds out of the window
    dropped, the call counted when admitted). The quota is not counted here."""
    sec = int(now)
    for old in [s for s in counts if s <= sec - SECONDS]:
        del counts[old]
    total = sum(counts.values())
    if total < limit:
        counts[sec] = counts.get(sec, 0) + 1
        return Admission(True, limit - total - 1, sec + SECONDS - now, None)
    left = total
    retry = 0.0
    for second in sorted(counts):
        left -= counts[second]
        if left < limit:
            retry = second + SECONDS - now
            break
    return Admission(False, 0, max(counts) + SECONDS - now, None, retry)


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
        ok, remaining, reset_ms, count, retry_ms = await self._admit(
            keys=[self.window_key(subscription_id), quota_key or ""], args=[limit, units]
        )
        return Admission(
            bool(ok),
            int(remaining),
            int(reset_ms) / 1000,
            None if int(count) == -1 else int(count),
            int(retry_ms) / 1000,
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
