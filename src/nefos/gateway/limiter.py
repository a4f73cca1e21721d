"""Rate limits: GCRA per caller and group, in memory or in Redis (one script a decision).

A route belongs to a *group* by its path (``GROUPS``: ``auth``, ``containers``,
``monitoring``, ``billing``); every request also counts against the caller's overall
``user`` limit. A caller is a user (a verified access token), an API key or,
anonymous, the client's IP. An API key counts against its owner's counters (per-user
limits hold across all of a user's keys: minting keys buys no more requests); a key
that is unknown, revoked or expired counts against the client's IP. Limits are settings
(``NEFOS_RATE_LIMIT_*``); a platform admin can give an organisation its own
(``RateLimitOverride``), which apply to its members and its API keys (a member of
several organisations gets the most generous).

The algorithm is GCRA (the generic cell rate algorithm, as in ATM networks and
Stripe's, Shopify's and redis-cell's limiters): one number per caller and policy, the
*theoretical arrival time* (TAT) of the next request. A limit of ``L`` per ``W``
seconds spaces requests ``T = W / L`` apart and tolerates a burst of ``L``: a request
at ``now`` is admitted when ``max(TAT, now) + T - now <= W``, and then TAT becomes
``max(TAT, now) + T``. So a fresh caller may send ``L`` requests at once and then one
every ``T``; nothing is ever reset in bulk, and there is no window edge to double up
at. One decision checks the group's policy and the ``user`` policy together and
moves both only when both admit.

Redis: the decision is one ``EVALSHA`` of :data:`GCRA_SCRIPT`, which reads Redis's
own clock (``TIME``), so that every process agrees on ``now`` and no
read-then-write race exists between processes. If Redis cannot be reached the
behaviour is ``NEFOS_RATE_LIMIT_REDIS_FAILURE``: ``open`` decides with this
process's memory counters instead (a warning in the log, ``rate_limiter: degraded``
in ``/health``), ``closed`` answers 503. Redis is tried again at most every
:data:`REDIS_RETRY` seconds, so that a dead Redis does not add a timeout to every
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nefos.config import Settings
from nefos.db.models import RateLimitOverride
from nefos.domain.rate_limits import (
    ALL_GROUPS,
    US,
    USER,
    Policy,
    default_policies,
    group_of,
)
from nefos.gateway.client import client_ip, credential
from nefos.gateway.envelope import send_error
from nefos.gateway.parts import GatewayParts
from nefos.security.tokens import InvalidToken
from nefos.services.rate_limits import caller_overrides, live_key_owner

log = logging.getLogger("nefos.gateway.limiter")

#: Paths no limit applies to: load balancers' health checks and the caller's own
#: limits (as GitHub's ``/rate_limit``).
EXEMPT = frozenset(
    {
        "/health",
        "/api/health",
        "/api/v1/health",
        "/api/rate-limits",
        "/api/v1/rate-limits",
    }
)
#: Seconds between tries of an unreachable Redis.
REDIS_RETRY = 2.0
#: Seconds between two warnings that Redis is down.
WARN_EVERY = 30.0
#: Seconds an organisation's overrides are cached (another process's change is
#: seen within this time; this process's at once).
OVERRIDE_TTL = 30.0
#: Callers whose identity or overrides are cached (then the cache starts again).
MAX_CACHED = 50_000
#: Decisions between two sweeps of the memory counters.
SWEEP_EVERY = 10_000


# --- the decision -------------------------------------------------------------------------
@dataclass(frozen=True)
class State:
    """One policy after a decision."""

    policy: Policy
    remaining: int
    reset: float  # seconds until the policy's whole burst is available again


@dataclass(frozen=True)
class Decision:
    allowed: bool
    states: tuple[State, ...]  # the policies applied, the most constrained first
    retry_after: float = 0.0  # seconds, when refused
    now: float = 0.0  # epoch seconds of the decision

    @property
    def binding(self) -> State | None:
        return self.states[0] if self.states else None


def settle(policies: Sequence[Policy], tats: Sequence[int], now_us: int, allowed: bool) -> Decision:
    """A decision from the TATs the backend left (the new ones when admitted, the
    unchanged ones when refused)."""
    states = []
    retry = 0.0
    for p, tat in zip(policies, tats, strict=True):
        window_us = p.window * US
        ahead = max(tat - now_us, 0)
        remaining = max(int((window_us - ahead) // p.interval_us), 0)
        states.append(State(p, min(remaining, p.limit), ahead / US))
        if not allowed:
            wait = ahead + p.interval_us - window_us  # until this policy admits one
            retry = max(retry, wait / US)
    states.sort(key=lambda s: (s.remaining, s.policy.limit))
    return Decision(allowed, tuple(states), retry, now_us / US)


def gcra(
    policies: Sequence[Policy], stored: Sequence[int | None], now_us: int
) -> tuple[bool, list[int]]:
    """The GCRA step of :data:`GCRA_SCRIPT` in Python: admitted?, and the TATs to keep."""
    new = []
    allowed = True
    for p, tat in zip(policies, stored, strict=True):
        start = max(tat or now_us, now_us)
        after = start + p.interval_us
        new.append(int(after))
        if after - now_us > p.window * US:
            allowed = False
    if allowed:
        return True, new
    return False, [max(t or now_us, now_us) for t in stored]


#: KEYS: one per policy. ARGV: limit and window (s) per policy, in KEYS' order.
#: Returns {admitted (1/0), now_us, tat_1, ..., tat_n}: the TATs kept.
GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local start = {}
local after = {}
local ok = 1
for i = 1, n do
  local limit = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i]) * 1000000
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  start[i] = tat
  after[i] = math.floor(tat + window / limit)
  if after[i] - now > window then ok = 0 end
end
local out = {ok, now}
for i = 1, n do
  if ok == 1 then
    redis.call('SET', KEYS[i], after[i], 'PX', math.ceil((after[i] - now) / 1000) + 1)
    out[i + 2] = after[i]
  else
    out[i + 2] = start[i]
  end
end
return out
"""


class MemoryCounters:
    """TATs in this process (one event loop: no lock needed, no await inside)."""

    kind = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.tats: dict[str, int] = {}
        self._decisions = 0

    def decide(self, keys: Sequence[str], policies: Sequence[Policy]) -> Decision:
        now_us = int(self.clock() * US)
        allowed, tats = gcra(policies, [self.tats.get(k) for k in keys], now_us)
        if allowed:
            for key, tat in zip(keys, tats, strict=True):
                self.tats[key] = tat
        self._decisions += 1
        if self._decisions >= SWEEP_EVERY:
            self.sweep(now_us)
        return settle(policies, tats, now_us, allowed)

    def peek(self, keys: Sequence[str], policies: Sequence[Policy]) -> Decision:
        now_us = int(self.clock() * US)
        tats = [max(self.tats.get(k) or now_us, now_us) for k in keys]
        return settle(policies, tats, now_us, True)

    def sweep(self, now_us: int) -> None:
        """Forget the callers whose every request has been paid back."""
        self._decisions = 0
        self.tats = {k: t for k, t in self.tats.items() if t > now_us}


class RedisCounters:
    """TATs in Redis, one ``EVALSHA`` of :data:`GCRA_SCRIPT` a decision.

    The decisions asked for while no batch is on its way go to Redis together, in
    one pipeline (one write, one read: far fewer system calls and round trips under
    load); each is still its own script, atomic on its own. One batch is in flight
    at a time, the next one gathering meanwhile, so a burst of requests uses one
    connection rather than opening one per batch (a new connection on a loaded
    machine can take longer than the timeout, and a timed-out decision falls back
    to this process's counters). A script Redis lost (restarted, flushed) is loaded
    again and the batch's refused calls retried.
    """

    kind = "redis"

    def __init__(self, url: str, timeout: float) -> None:
        import redis.asyncio as aioredis
        from redis.exceptions import NoScriptError

        self._no_script = NoScriptError
        # Any: redis's annotations differ between its releases.
        self.redis: Any = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.timeout = timeout
        self.sha = hashlib.sha1(GCRA_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis's id
        self._batch: list[tuple[Sequence[str], list[int], asyncio.Future[list[int]]]] = []
        self._in_flight: asyncio.Future[None] | None = None

    async def _eval(self, keys: Sequence[str], args: list[int]) -> list[int]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._batch.append((keys, args, future))
        if len(self._batch) == 1 and self._in_flight is None:
            loop.call_soon(self._send)  # once this turn's callers have asked
        return await future

    def _send(self) -> None:
        if self._in_flight is not None or not self._batch:
            return
        batch, self._batch = self._batch, []
        self._in_flight = task = asyncio.ensure_future(self._pipeline(batch))
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Future[None]) -> None:
        self._in_flight = None
        _retrieve(task)
        self._send()  # what gathered meanwhile

    async def _pipeline(
        self, batch: list[tuple[Sequence[str], list[int], asyncio.Future[list[int]]]]
    ) -> None:
        try:
            results = await self._run(batch)
            if any(isinstance(r, self._no_script) for r in results):
                await self.redis.script_load(GCRA_SCRIPT)
                results = await self._run(batch)
        except BaseException as exc:  # Redis unreachable: every caller hears it
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError())
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result([int(v) for v in result])

    async def _run(
        self, batch: list[tuple[Sequence[str], list[int], asyncio.Future[list[int]]]]
    ) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for keys, args, _ in batch:
            pipe.evalsha(self.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def decide(self, keys: Sequence[str], policies: Sequence[Policy]) -> Decision:
        args = [v for p in policies for v in (p.limit, p.window)]
        ok, now_us, *tats = await self._eval(keys, args)
        return settle(policies, tats, now_us, bool(ok))

    async def peek(self, keys: Sequence[str], policies: Sequence[Policy]) -> Decision:
        pipe = self.redis.pipeline(transaction=False)  # one round trip: clock and TATs
        pipe.time()
        pipe.mget(list(keys))
        (seconds, micros), stored = await pipe.execute()
        now_us = int(seconds) * US + int(micros)
        tats = [max(int(float(v)) if v is not None else now_us, now_us) for v in stored]
        return settle(policies, tats, now_us, True)

    async def ping(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        """Close the connections, once the pipeline in flight (if any) has ended."""
        if self._in_flight is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._in_flight), self.timeout * 1.5)
        await self.redis.aclose()


def _retrieve(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("rate limiter: a pipeline failed", exc_info=task.exception())


# --- callers -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Caller:
    """Who a request counts against: ``kind`` is user, key or ip."""

    kind: Literal["user", "key", "ip"]
    id: str  # the user id, the key's SHA-256 (hex), or the address
    owner: str | None = None  # a key's: the user whose counters it spends

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.id}"

    @property
    def bucket(self) -> str:
        """Whose counters the request spends: a key spends its owner's."""
        return f"user:{self.owner}" if self.owner is not None else self.key


class RedisUnavailable(Exception):
    """Redis could not be reached and the configured behaviour is to refuse (503)."""


class RateLimiter:
    """Decisions for the middleware and ``GET /rate-limits``; overrides cached."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.enabled = settings.rate_limit_enabled
        self.defaults = default_policies(settings)
        self.prefix = settings.redis_prefix + ":rl:"
        self.memory = MemoryCounters(clock)
        backend = settings.rate_limit_backend
        use_redis = backend == "redis" or (backend == "auto" and settings.redis_url)
        if use_redis and not settings.redis_url:
            raise ValueError("NEFOS_RATE_LIMIT_BACKEND=redis needs NEFOS_REDIS_URL")
        self.redis: RedisCounters | None = (
            RedisCounters(settings.redis_url, settings.rate_limit_redis_timeout)
            if use_redis and settings.redis_url
            else None
        )
        self.fail_closed = settings.rate_limit_redis_failure == "closed"
        self.redis_down_since: float | None = None
        self._retry_at = 0.0
        self._warned_at = -math.inf
        self.core: GatewayParts | None = None
        # key hash → (expiry (monotonic), its owner's id; None: no live key)
        self._keys: dict[str, tuple[float, str | None]] = {}
        # caller key → (expiry (monotonic), its overrides by group)
        self._overrides: dict[str, tuple[float, dict[str, Policy]]] = {}
        self._any_override: tuple[float, bool] = (-math.inf, False)
        self._warm: asyncio.Future[str] | None = None

    @property
    def backend(self) -> str:
        return "redis" if self.redis is not None else "memory"

    def start(self, core: GatewayParts) -> None:
        self.core = core
        if self.enabled and self.redis is not None:
            # Connect now, so that the first burst of requests does not wait for it.
            self._warm = asyncio.ensure_future(self.check())

    async def stop(self) -> None:
        if self._warm is not None:
            # Ended before the connections close, so none is left half-open.
            self._warm.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._warm
            self._warm = None
        if self.redis is not None:
            try:
                await self.redis.close()
            except Exception:  # closing a dead connection
                log.debug("closing the limiter's Redis", exc_info=True)

    async def check(self) -> str:
        """``health`` after a ping of Redis (when Redis holds the counters)."""
        if self.enabled and self.redis is not None:
            now = time.monotonic()
            try:
                await asyncio.wait_for(self.redis.ping(), self.redis.timeout * 1.5)
            except Exception as exc:  # any failure to reach Redis
                self._down(now, exc)
            else:
                self._up()
        return self.health()

    def health(self) -> str:
        if not self.enabled:
            return "disabled"
        if self.redis is not None and self.redis_down_since is not None:
            return "unhealthy" if self.fail_closed else "degraded"
        return "healthy"

    # --- who ---------------------------------------------------------------------------
    async def caller(self, headers: dict[bytes, bytes], ip: str | None) -> Caller:
        presented = credential(headers)
        if presented is not None and self.core is not None:
            if presented.is_api_key:
                owner = await self.key_owner(presented.key_hash)
                if owner is not None:
                    return Caller("key", presented.key_hash, owner)
                return Caller("ip", ip or "unknown")  # no live key: no counters of its own
            try:  # verified once: the route reads the codec's verified claims
                claims = self.core.tokens.decode(presented.token, typ="access")
            except InvalidToken:
                pass
            else:
                return Caller("user", claims.sub)
        return Caller("ip", ip or "unknown")

    async def key_owner(self, key_hash: str) -> str | None:
        """The user whose live API key this is (None: none is), cached for
        :data:`OVERRIDE_TTL` seconds. A database that cannot be read leaves None: the
        request then counts against its address and meets the database's error."""
        assert self.core is not None
        known = self.core.principals.get(("k", key_hash))  # the authenticated callers
        if known is not None:
            return known.user_id
        now = time.monotonic()
        cached = self._keys.get(key_hash)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            async with self.core.db.sessionmaker() as session:
                owner = await live_key_owner(session, key_hash)
        except Exception:  # any failure to read the keys
            log.warning("rate limiter: could not read an API key's owner", exc_info=True)
            return cached[1] if cached is not None else None
        if len(self._keys) >= MAX_CACHED:
            self._keys.clear()
        self._keys[key_hash] = (now + OVERRIDE_TTL, owner)
        return owner

    # --- what applies ------------------------------------------------------------------
    def invalidate(self) -> None:
        """Forget the cached overrides (a change was just made in this process)."""
        self._overrides.clear()
        self._any_override = (-math.inf, False)

    async def _has_overrides(self) -> bool:
        expires, found = self._any_override
        if time.monotonic() < expires:
            return found
        assert self.core is not None
        async with self.core.db.sessionmaker() as session:
            found = (
                await session.scalar(select(RateLimitOverride.organisation_id).limit(1))
            ) is not None
        self._any_override = (time.monotonic() + OVERRIDE_TTL, found)
        return found

    async def overrides_of(self, caller: Caller) -> dict[str, Policy]:
        """The most generous override per group among the caller's organisations.
        A database that cannot be read leaves the defaults (and the last overrides
        known) in force: the request itself then meets the database's error."""
        try:
            return await self._overrides_of(caller)
        except Exception:  # any failure to read the overrides
            log.warning("rate limiter: could not read the overrides", exc_info=True)
            # Not again for every request: the next try in a few seconds.
            self._any_override = (time.monotonic() + REDIS_RETRY, self._any_override[1])
            cached = self._overrides.get(caller.key)
            return cached[1] if cached is not None else {}

    async def _overrides_of(self, caller: Caller) -> dict[str, Policy]:
        if caller.kind == "ip" or self.core is None or not await self._has_overrides():
            return {}
        now = time.monotonic()
        cached = self._overrides.get(caller.key)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self.core.db.sessionmaker() as session:
            rows = await caller_overrides(session, caller.kind, caller.id)
        best: dict[str, Policy] = {}
        for group, limit, window in rows:
            p = Policy(group, limit, window)
            if group not in best or p.per_second > best[group].per_second:
                best[group] = p
        if len(self._overrides) >= MAX_CACHED:
            self._overrides.clear()
        self._overrides[caller.key] = (now + OVERRIDE_TTL, best)
        return best

    async def policies(self, caller: Caller, group: str | None) -> list[Policy]:
        """The limited policies of a request: its group's (if any), then ``user``."""
        overrides = await self.overrides_of(caller)
        out = []
        for name in (group, USER):
            if name is None:
                continue
            p = overrides.get(name, self.defaults[name])
            if not p.unlimited:
                out.append(p)
        return out

    def keys(self, caller: Caller, policies: Sequence[Policy]) -> list[str]:
        # The window is in the key: a changed limit starts a counter of its own.
        return [f"{self.prefix}{p.name}:{p.limit}:{p.window}:{caller.bucket}" for p in policies]

    # --- deciding ----------------------------------------------------------------------
    async def decide(self, caller: Caller, group: str | None) -> Decision | None:
        """Admit or refuse one request; None when no limit applies. Raises
        RedisUnavailable when Redis is down and the limiter fails closed."""
        policies = await self.policies(caller, group)
        if not policies:
            return None
        keys = self.keys(caller, policies)
        if self.redis is None:
            return self.memory.decide(keys, policies)
        return await self._with_redis(keys, policies, peek=False)

    async def snapshot(self, caller: Caller) -> tuple[list[Policy], Decision | None]:
        """Every policy in force for the caller (each group's, then ``user``) and one
        look at the limited ones' counters, counting no request: None when the limiter
        is off or nothing is limited."""
        overrides = await self.overrides_of(caller)
        policies = [overrides.get(name, self.defaults[name]) for name in ALL_GROUPS]
        limited = [p for p in policies if not p.unlimited]
        if not self.enabled or not limited:
            return policies, None
        keys = self.keys(caller, limited)
        if self.redis is None:
            return policies, self.memory.peek(keys, limited)
        return policies, await self._with_redis(keys, limited, peek=True)

    async def _with_redis(
        self, keys: Sequence[str], policies: Sequence[Policy], *, peek: bool
    ) -> Decision:
        assert self.redis is not None
        now = time.monotonic()
        if self.redis_down_since is None or now >= self._retry_at:
            try:
                call = self.redis.peek if peek else self.redis.decide
                decision = await asyncio.wait_for(call(keys, policies), self.redis.timeout * 1.5)
            except Exception as exc:  # any failure to reach Redis
                self._down(now, exc)
            else:
                self._up()
                return decision
        if self.fail_closed:
            raise RedisUnavailable("The rate limiter's Redis is unreachable")
        # Fail open: this process's own counters until Redis answers again.
        if peek:
            return self.memory.peek(keys, policies)
        return self.memory.decide(keys, policies)

    def _up(self) -> None:
        if self.redis_down_since is not None:
            log.warning("Redis is back: rate limits are shared again")
            self.redis_down_since = None

    def _down(self, now: float, exc: BaseException) -> None:
        if self.redis_down_since is None:
            self.redis_down_since = now
        self._retry_at = now + REDIS_RETRY
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            how = "refusing requests (503)" if self.fail_closed else "counting in this process"
            log.warning("rate limiter: Redis unreachable (%s); %s", exc or type(exc), how)


# --- headers ----------------------------------------------------------------------------------
def headers_of(decision: Decision) -> list[tuple[bytes, bytes]]:
    """``X-RateLimit-*`` (seed 004: of the most constrained policy, the reset as epoch
    seconds) and the IETF draft's ``RateLimit-Policy`` and ``RateLimit``."""
    binding = decision.binding
    if binding is None:
        return []
    reset_at = math.ceil(decision.now + binding.reset)
    policy = ", ".join(
        f'"{s.policy.name}";q={s.policy.limit};w={s.policy.window}' for s in decision.states
    )
    current = ", ".join(
        f'"{s.policy.name}";r={s.remaining};t={math.ceil(s.reset)}' for s in decision.states
    )
    out = [
        (b"x-ratelimit-limit", str(binding.policy.limit).encode()),
        (b"x-ratelimit-remaining", str(binding.remaining).encode()),
        (b"x-ratelimit-reset", str(reset_at).encode()),
        (b"ratelimit-policy", policy.encode()),
        (b"ratelimit", current.encode()),
    ]
    if not decision.allowed:
        out.append((b"retry-after", str(retry_after_seconds(decision)).encode()))
    return out


def retry_after_seconds(decision: Decision) -> int:
    return max(1, math.ceil(decision.retry_after))


def describe(decision: Decision) -> dict[str, Any]:
    """The 429's details."""
    binding = decision.binding
    assert binding is not None
    refused = min(decision.states, key=lambda s: s.remaining)
    return {
        "group": refused.policy.name,
        "limit": refused.policy.limit,
        "window": refused.policy.window,
        "retry_after": retry_after_seconds(decision),
    }


# --- the middleware ---------------------------------------------------------------------------
class RateLimitMiddleware:
    """Pure ASGI: one decision per HTTP request before the app sees it; the headers on
    every response, a 429 (or, Redis down and failing closed, a 503) in the envelope."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter
        # The app's path templates, read from its OpenAPI paths at the first refusal.
        self._templates: list[tuple[re.Pattern[str], _Template]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limiter = self.limiter
        if (
            scope["type"] != "http"
            or not limiter.enabled
            or scope["method"] == "OPTIONS"
            or scope["path"] in EXEMPT
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        caller = await limiter.caller(
            headers, client_ip(scope, limiter.settings.forwarded_allow_ips)
        )
        try:
            decision = await limiter.decide(caller, group_of(scope["path"]))
        except RedisUnavailable as exc:
            await send_error(send, 503, "SERVICE_UNAVAILABLE", str(exc), {"component": "redis"})
            return
        if decision is None:
            await self.app(scope, receive, send)
            return
        extra = headers_of(decision)
        state = scope.setdefault("state", {})
        state["rate_limit"], state["rate_limit_caller"] = decision, caller
        if not decision.allowed:
            self._note_route(scope)  # the request log names the route it was refused on
            details = describe(decision)
            message = (
                f"Rate limit exceeded: {details['limit']} requests per {details['window']} s "
                f"({details['group']}); retry in {details['retry_after']} s"
            )
            await send_error(send, 429, "RATE_LIMITED", message, details, extra)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _note_route(self, scope: Scope) -> None:
        """Set ``scope["route"]`` to the template of the path, as routing would have (a
        refused request never reaches the router), from the app's OpenAPI paths: only
        refusals pay for this match."""
        app = scope.get("app")
        if app is None or not hasattr(app, "openapi"):
            return
        if self._templates is None:
            self._templates = []
            for template in app.openapi().get("paths", {}):
                regex, _, _ = compile_path(template)
                self._templates.append((regex, _Template(template)))
        path = scope["path"]
        if path.startswith("/api/") and not path.startswith("/api/v1/"):
            path = "/api/v1" + path[len("/api") :]  # the alias serves the same routes
        for regex, template in self._templates:
            if regex.match(path):
                scope["route"] = template
                return


@dataclass(frozen=True)
class _Template:
    """What the request log reads of a route: its path template."""

    path: str
