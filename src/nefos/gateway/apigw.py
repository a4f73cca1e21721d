"""The API gateway (pure ASGI): consumers' calls to published APIs (seed 002).

``/gw/{api slug}/{path}``, or ``{api slug}.{NEFOS_APPS_DOMAIN}`` by ``Host`` (the
ingress hands those over: ``IngressMiddleware``), with a subscription's key
(``X-API-Key``, or ``Authorization: Bearer nfc_...``). Before anything is
forwarded, in this order:

1. the key: live (not revoked, not past its rotation window), its subscription
   active, and for this API (a key of one subscription calls no other API: 403); a
   subscription past due (its renewal's fee unpaid) is a 402 ``RESOURCE_EXHAUSTED``;
2. the plan's rate limit: at most ``rate_limit_per_minute`` calls per subscription
   in any 60 seconds (a sliding minute, ``apicounts.slide``; 429 ``RATE_LIMITED``
   with ``RateLimit-Limit``, ``-Remaining``, ``-Reset`` and ``Retry-After``):
   counted when the call is admitted, so 200 calls at once against a limit of 50
   forward exactly 50, at a clock minute's turn too;
3. the call's units, declared by the API per endpoint (``domain.metering``: the
   first rule matching the method and path, else 1), then the plan's quota and
   price for them (``domain.plans.units_price``): the quota counts units, each of
   the call's units counted in turn (a call straddling the end of a free quota pays
   for its units beyond it only); a call with units beyond a quota with no price
   beyond is a 429 ``RESOURCE_EXHAUSTED`` (with ``X-Quota-Limit``/``-Remaining``); a
   priced call must be covered by the consumer's wallet less what its calls not
   charged yet already owe, less what calls in flight in this process hold (402
   ``RESOURCE_EXHAUSTED``). The rate limit counts calls, whatever their units.

Then the call goes to one of the API's replicas that pass their checks, through the
ingress (``Ingress.proxy``: least outstanding, bounded, streaming, one retry of an
idempotent request), at the API's ``base_path``, with the consumer's credentials
and cookies stripped and ``X-Request-ID``, ``X-Nefos-Consumer`` (the consumer's
organisation) and ``X-Forwarded-*`` added; the answer carries ``X-Request-ID``.

Every forwarded call is one ``api_calls`` row, keyed by the subscription and its
request id. The client's own well-formed ``X-Request-ID`` is claimed before the
call is forwarded (the row written in flight): a second call with it is a 409 and
goes nowhere, unless the first was answered 500 or more (not billed), whose retry
is forwarded on the same row; a call without one gets a fresh id and is recorded
once answered, handed to the call log (``billing.calllog``: written with the other
calls of a few milliseconds in one statement, off the call's cycle; its price held
until then; while too many wait unwritten, new calls are a 503). An answer of 500
or more is recorded with price 0 (not billed). When the API names a units header
(``units_header``) and its answer (below 500) carries it with an integer from 0 to
1000, that is the call's units: its row's ``units`` and ``price`` are those units'
(priced from the same place in the quota, with no second wallet check: the answer
is sent, so the call is charged what the header says, at most 1000 units), and its
quota count moves by the difference; a bad value is ignored (the declared units
stand). The header is stripped from the answer either way: the consumer never sees
it. The row is the call log the creator reads (``GET /apis/{id}/logs?source=gateway``)
and the figures of ``GET /apis/{id}/metrics``: method, the path within the API (after the slug, no
query), status, latency (until the answer's last byte), bytes in and out, the
consumer's organisation and subscription, the units and the price.

After a counted call is recorded (its answer sent), a count that has reached 50, 80
or 100 % of the plan's quota has ``billing.quota.check`` tell the ``usage_alert``
once (a unique row per threshold and period); nothing more awaits before a call is
forwarded.

Keys are remembered by each process for ``KEY_CACHE_SECONDS`` (a revoked key stops
within that). The plans' windows and the quotas' period counts are in Redis when the
process has it (``gateway/apicounts.py``: shared by every API process, one script a
call); without it they are this process's (the period count read from the database
on first use), exact for the one process of an embedded install. Money held by
calls in flight is each process's.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import unquote_to_bytes

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from starlette.types import Message, Receive, Scope, Send

from nefos.billing import quota
from nefos.billing.accounts import wallet
from nefos.billing.apicalls import charged_until
from nefos.billing.calllog import CallLog
from nefos.db.models import Api, ApiCall, Listing, ListingPlan, Wallet
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from nefos.domain.consumer_keys import key_hash, looks_like
from nefos.domain.metering import UnitRule, declared_units, header_units, rules_of
from nefos.domain.plans import CALL_IN_FLIGHT, PAST_DUE, ZERO, units_price
from nefos.gateway.apicounts import SECONDS, UNKNOWN, Admission, SharedCounts, slide
from nefos.gateway.envelope import send_error
from nefos.gateway.ingress import _SCOPE_KEY, GATEWAY_FORWARD, HOST_CALL, Ingress, TtlCache
from nefos.services.market_subscriptions import live_key

log = logging.getLogger("nefos.gateway.api")

PATH_PREFIX = "/gw/"
#: Seconds a quota's count is kept in Redis (longer than any period).
QUOTA_KEEP_SECONDS = 40 * 86400
#: How long a key's look-up is remembered by a process.
KEY_CACHE_SECONDS = 5.0
CACHE_SIZE = 10_000
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
#: The consumer's own headers that never reach the API.
_STRIPPED = frozenset(
    {
        b"authorization",
        b"x-api-key",
        b"x-auth-token",  # a Nefos session (seed 001): never the API's to see
        b"cookie",
        b"x-request-id",
        b"forwarded",  # the gateway says who called, in X-Forwarded-* and X-Nefos-*
    }
)
IN_FLIGHT = CALL_IN_FLIGHT
#: Headers of the gateway's own: a consumer's copy never reaches the API.
_OWN_PREFIX = b"x-nefos-"


@dataclass(frozen=True, slots=True)
class Caller:
    """A live key's subscription, plan and API, as one look-up found them."""

    key_id: str
    subscription_id: str
    organisation_id: str
    period_start: datetime
    past_due: bool
    plan: ListingPlan
    currency: str
    api_id: str
    slug: str
    container_id: str | None
    base_path: str
    #: The API's per-endpoint units, and the answer's header of units (lowercase).
    units: tuple[UnitRule, ...] = ()
    units_header: bytes | None = None


class ApiGateway:
    def __init__(self, ingress: Ingress) -> None:
        self.ingress = ingress
        self._keys: OrderedDict[str, tuple[float, Caller | None]] = OrderedDict()
        #: Each subscription's calls per second of its sliding minute (``slide``).
        self._windows: dict[str, dict[int, int]] = {}
        self._used: dict[str, tuple[datetime, int]] = {}
        #: The highest usage threshold known told, per (subscription, period start).
        self._told: dict[tuple[str, datetime], int] = {}
        #: Money held by priced calls in flight, per consumer organisation.
        self._held: dict[tuple[str, str], Decimal] = {}
        #: Which ``Host`` labels are API slugs (and which are not), for a while.
        self._slugs: TtlCache[str, bool] = TtlCache(ingress.settings.ingress_cache_seconds)
        #: The windows and quota counts in Redis, when the process has it.
        self.shared: SharedCounts | None = None
        self._shared_warned = -1e9
        #: Where answered calls go (``Core.calls``, set by the app's lifespan).
        self.calls: CallLog | None = None

    def share(self, redis: Any, prefix: str) -> None:
        """Count windows and quotas in Redis (``redis.asyncio.Redis``), with every
        other API process of the installation."""
        self.shared = SharedCounts(redis, prefix)

    async def _admit_shared(self, caller: Caller, units: int) -> Admission | None:
        """The call's admission by the shared counts (its quota places reserved);
        None if Redis failed (this process's own counts decide then)."""
        shared = self.shared
        assert shared is not None
        key = (
            shared.quota_key(caller.organisation_id, caller.api_id, caller.period_start.isoformat())
            if caller.plan.included_calls is not None
            else None
        )
        try:
            admission = await shared.admit(
                caller.subscription_id, caller.plan.rate_limit_per_minute, key, units
            )
            if admission.count == UNKNOWN:
                assert key is not None and self.ingress.db is not None
                await self._written()
                async with self.ingress.db.sessionmaker() as session:
                    counted = await quota.period_units(
                        session, caller.organisation_id, caller.api_id, caller.period_start
                    )
                count = await shared.start(key, counted, QUOTA_KEEP_SECONDS, units)
                admission = dataclasses.replace(admission, count=count)
        except Exception:  # Redis away: this process's counts, as the limiter does
            now = time.monotonic()
            if now - self._shared_warned > 30:
                self._shared_warned = now
                log.warning("gateway: Redis unreachable, counting in this process", exc_info=True)
            return None
        return admission

    async def _give_back(self, caller: Caller, shared: bool, units: int) -> None:
        """Give back the quota places reserved for a call that did not count (or, with
        a negative ``units``, take more: its answer said more units than declared)."""
        if not units:
            return
        if not shared:
            self._count(caller, -units)
            return
        assert self.shared is not None
        key = self.shared.quota_key(
            caller.organisation_id, caller.api_id, caller.period_start.isoformat()
        )
        try:
            await self.shared.give_back(key, units)
        except Exception:  # counted wrong by a few until the period's end: logged
            log.warning("gateway: a call's quota places were not adjusted", exc_info=True)

    async def is_slug(self, label: str) -> bool:
        """Is ``label`` (of ``{label}.{apps_domain}``) an API's slug?"""
        if not _SLUG.match(label):
            return False

        async def load() -> bool:
            assert self.ingress.db is not None
            async with self.ingress.db.sessionmaker() as session:
                found = await session.scalar(
                    select(Api.id).where(Api.slug == label, Api.deleted_at.is_(None))
                )
                return found is not None

        return await self._slugs.get(label, load)

    # --- look-ups ---------------------------------------------------------------------
    async def caller(self, key: str) -> Caller | None:
        digest = key_hash(key)
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await self._lookup(key)
        self._keys[digest] = (now + KEY_CACHE_SECONDS, found)
        self._keys.move_to_end(digest)
        while len(self._keys) > CACHE_SIZE:
            self._keys.popitem(last=False)
        return found

    async def _lookup(self, key: str) -> Caller | None:
        assert self.ingress.db is not None
        async with self.ingress.db.sessionmaker() as session:
            found = await live_key(session, key, utcnow())
            if found is None:
                return None
            key_row, sub, listing, plan = found
            api = await session.get(Api, listing.api_id)
        if api is None:
            return None
        return Caller(
            key_id=key_row.id,
            subscription_id=sub.id,
            organisation_id=sub.organisation_id,
            period_start=sub.period_start,
            past_due=sub.status == PAST_DUE,
            plan=plan,
            currency=listing.currency,
            api_id=api.id,
            slug=api.slug,
            container_id=api.container_id,
            base_path=api.base_path,
            units=rules_of(api.units),
            units_header=api.units_header.lower().encode() if api.units_header else None,
        )

    async def used(self, caller: Caller) -> int:
        """Units counted this period (calls answered below 500), this process's count
        after one read of the database."""
        known = self._used.get(caller.subscription_id)
        if known is not None and known[0] == caller.period_start:
            return known[1]
        assert self.ingress.db is not None
        await self._written()
        async with self.ingress.db.sessionmaker() as session:
            count = await quota.period_units(
                session, caller.organisation_id, caller.api_id, caller.period_start
            )
        known = self._used.get(caller.subscription_id)
        if known is None or known[0] != caller.period_start:
            # (Another call may have read it, and reserved its place, meanwhile.)
            known = self._used[caller.subscription_id] = (caller.period_start, count)
        return known[1]

    async def affordable(self, caller: Caller) -> bool:
        """The consumer's wallet covers what its calls not charged yet (after its
        watermark) owe and what its calls in flight hold (this one's price among
        them)."""
        assert self.ingress.db is not None
        org, currency = caller.organisation_id, caller.currency
        # One statement, so one snapshot: a charge committing between a read of the
        # balance and one of what is owed cannot be missed by both. Owed in this
        # currency only (a listing's calls are priced in its currency).
        balance_of = (
            select(Wallet.balance)
            .where(Wallet.organisation_id == org, Wallet.currency == currency)
            .scalar_subquery()
        )
        owed_of = (
            select(func.coalesce(func.sum(ApiCall.price), 0))
            .join(ListingPlan, ListingPlan.id == ApiCall.plan_id)
            .join(Listing, Listing.id == ListingPlan.listing_id)
            .where(
                ApiCall.organisation_id == org,
                # Not charged yet: after the account's watermark.
                ApiCall.created_at > charged_until(org, currency),
                ApiCall.price > 0,
                Listing.currency == currency,
            )
            .scalar_subquery()
        )
        # What this process holds, read before the database is: a row the call log
        # writes meanwhile is then counted twice (safe), never missed by both reads.
        held = self._held.get((org, currency), ZERO)
        if self.calls is not None:
            held += self.calls.owed(org, currency)  # answered, not written yet
        async with self.ingress.db.sessionmaker() as session:
            balance, owed = (await session.execute(select(balance_of, owed_of))).one()
        if balance is None:  # made on first use, in a write transaction of its own
            async with self.ingress.db.sessionmaker() as session:
                await begin_write(session)
                balance = (await wallet(session, self.ingress.settings, org, currency)).balance
                await session.commit()
        return Decimal(balance) - Decimal(owed or 0) - held >= 0

    def admit(self, caller: Caller) -> Admission:
        """Count the call in its subscription's sliding minute, in this process (on
        the monotonic clock: a step of the wall clock neither frees nor holds calls)."""
        now = time.monotonic()
        if len(self._windows) > CACHE_SIZE:
            self._windows = {k: w for k, w in self._windows.items() if w and max(w) > now - SECONDS}
        window = self._windows.setdefault(caller.subscription_id, {})
        return slide(window, now, caller.plan.rate_limit_per_minute)

    # --- a call -----------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        slug, rest = scope[HOST_CALL] if HOST_CALL in scope else _split(scope)
        if not slug:
            await send_error(send, 404, "NOT_FOUND", "No API has this name")
            return
        if _escapes(rest):
            # Under the API's base path, and nowhere else: no dot segment (decoded
            # too) may climb out of it, nor an encoded slash the API might decode.
            await send_error(
                send,
                400,
                "VALIDATION_ERROR",
                "A call's path may not contain '.' or '..' segments or encoded slashes",
            )
            return
        key = _key_of(scope)
        if key is None:
            await send_error(
                send,
                401,
                "UNAUTHORIZED",
                "Call with your subscription's key: X-API-Key: nfc_... "
                "(subscribe on the marketplace to get one)",
                headers=[(b"www-authenticate", b'Bearer realm="nefos-gateway"')],
            )
            return
        caller = await self.caller(key)
        if caller is None:
            await send_error(
                send,
                401,
                "UNAUTHORIZED",
                "This key is not valid (revoked, expired, or its subscription ended)",
                headers=[(b"www-authenticate", b'Bearer realm="nefos-gateway"')],
            )
            return
        if slug != caller.slug:
            await send_error(
                send, 403, "FORBIDDEN", "This key is for another API", {"api": caller.slug}
            )
            return
        if self.calls is not None and self.calls.full:
            # The calls already answered are not written yet (the database is away,
            # or slower than the calls): no call is made that could not be billed.
            await send_error(
                send,
                503,
                "SERVICE_UNAVAILABLE",
                "The gateway cannot record calls right now; try again shortly",
                headers=[(b"retry-after", b"1")],
            )
            return
        if caller.past_due:
            await send_error(
                send,
                402,
                "RESOURCE_EXHAUSTED",
                "This subscription's renewal is unpaid: top up the wallet (the next "
                "billing pass charges it) or cancel it",
                {
                    "reason": "past_due",
                    "subscription_id": caller.subscription_id,
                    "status": PAST_DUE,
                },
            )
            return
        method = str(scope["method"]).upper()
        units = declared_units(
            caller.units, method, rest.partition(b"?")[0].decode("utf-8", "replace")
        )
        admission = await self._admit_shared(caller, units) if self.shared is not None else None
        minute = self.admit(caller) if admission is None else admission
        limit_headers = [
            (b"ratelimit-limit", str(caller.plan.rate_limit_per_minute).encode()),
            (b"ratelimit-remaining", str(minute.remaining).encode()),
            (b"ratelimit-reset", str(math.ceil(minute.reset)).encode()),
        ]
        if not minute.admitted:
            retry = max(1, math.ceil(minute.retry_after))
            await send_error(
                send,
                429,
                "RATE_LIMITED",
                f"The plan allows {caller.plan.rate_limit_per_minute} calls a minute",
                {"retry_after": retry},
                [*limit_headers, (b"retry-after", str(retry).encode())],
            )
            return
        # The quota's places: reserved in Redis by the admission (``shared``), or here.
        shared = admission is not None and admission.count is not None
        if shared:
            assert admission is not None and admission.count is not None
            used = admission.count - units
        else:
            used = await self.used(caller)
        included = caller.plan.included_calls
        quota_headers = (
            [
                (b"x-quota-limit", str(included).encode()),
                (b"x-quota-remaining", str(max(0, included - used - units)).encode()),
            ]
            if included is not None
            else []
        )
        price = units_price(caller.plan, used, units)
        if price is None:
            if shared:
                await self._give_back(caller, shared, units)
            await send_error(
                send,
                429,
                "RESOURCE_EXHAUSTED",
                f"This period's {included} units are used up"
                + (f" (this call weighs {units})" if units > 1 else "")
                + "; change plan for more",
                {
                    "reason": "quota",
                    "included_calls": included,
                    "used": used,
                    "units": units,
                },
                [*limit_headers, *quota_headers],
            )
            return
        # Reserved before anything awaits, so that calls at once cannot all take
        # the last free call, or the last of the wallet: the call's place in the
        # quota and its price held; given back if it is refused, replayed or 5xx.
        if shared:
            # (This process's view of the count, for the usage alerts' crossing.)
            self._used[caller.subscription_id] = (caller.period_start, used + units)
        else:
            self._count(caller, units)
        purse = (caller.organisation_id, caller.currency)
        held = price if price > 0 else ZERO
        if held:
            self._held[purse] = self._held.get(purse, ZERO) + held

        def release() -> None:
            """The call's row owes its price now (or the call is over): held no more
            here, lest a wallet check count it twice."""
            nonlocal held
            if held:
                left = self._held[purse] - held
                if left > 0:
                    self._held[purse] = left
                else:
                    del self._held[purse]
                held = ZERO

        counted: int | None = None
        try:
            if price > 0 and not await self.affordable(caller):
                await send_error(
                    send,
                    402,
                    "RESOURCE_EXHAUSTED",
                    "Your wallet cannot pay for this call: top it up",
                    {
                        "reason": "wallet",
                        "price": str(price),
                        "units": units,
                        "currency": caller.currency,
                    },
                    limit_headers,
                )
                return
            if caller.container_id is None:
                await send_error(send, 404, "NOT_FOUND", "This API runs no replicas")
                return
            counted = await self._forward(
                scope,
                receive,
                send,
                caller,
                rest,
                (used, units, price),
                [*limit_headers, *quota_headers],
                release,
            )
            if counted is not None:
                if counted != units:  # the answer's header said other units
                    await self._give_back(caller, shared, units - counted)
                    if shared:  # (and this process's view, for the usage alerts)
                        self._count(caller, counted - units)
                await self._tell_usage(caller)
        finally:
            release()
            if counted is None:
                await self._give_back(caller, shared, units)

    def _count(self, caller: Caller, delta: int) -> None:
        period, count = self._used.get(caller.subscription_id, (caller.period_start, 0))
        self._used[caller.subscription_id] = (period, max(0, count + delta))

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        caller: Caller,
        rest: bytes,
        terms: tuple[int, int, Decimal],
        extra: list[tuple[bytes, bytes]],
        release: Callable[[], None],
    ) -> int | None:
        """Forward the call and record it (``release`` once its row owes its price);
        the units it counts against the quota, or None when it does not count
        (refused as a replay, or answered 500 or more). ``terms``: the units counted
        before it, its declared units and their price.

        A call with the client's own ``X-Request-ID`` is recorded *before* it is
        forwarded (in flight, its price held in the row), so that the id is claimed
        once: a second call with it is a 409 and goes nowhere, unless the first was
        answered 500 or more (not billed: a retry of it is forwarded, on the same
        row). A call without one gets a fresh id no client can send again, and is
        recorded once it is answered, before the answer's last byte is sent."""
        used, units, price = terms
        client_id = _client_request_id(scope)
        request_id = client_id or uuid.uuid4().hex
        path = rest.partition(b"?")[0].decode("utf-8", "replace")
        claimed: str | None = None
        if client_id is not None:
            claimed, earlier = await self._claim(caller, request_id, scope, path, units, price)
            if claimed is None:
                await send_error(
                    send,
                    409,
                    "CONFLICT",
                    "This X-Request-ID names a call already made "
                    + ("and still in flight" if earlier == IN_FLIGHT else f"(answered {earlier})")
                    + ": a new call needs a new request id",
                    {"request_id": request_id, "status": earlier},
                    [(b"x-request-id", request_id.encode()), *extra],
                )
                return None
            release()  # the claimed row owes the price from now on
        headers = [
            (k, v)
            for k, v in scope["headers"]
            if k not in _STRIPPED and not k.startswith(_OWN_PREFIX)
        ]
        headers += [
            (b"x-request-id", request_id.encode()),
            (b"x-nefos-consumer", caller.organisation_id.encode()),
        ]
        base = caller.base_path.rstrip("/").encode()
        inner = dict(scope)
        inner["headers"] = headers
        assert caller.container_id is not None
        inner[_SCOPE_KEY] = ("path", caller.container_id, base + rest)
        inner[GATEWAY_FORWARD] = True
        seen: dict[str, Any] = {"status": 502, "bytes": 0, "bytes_in": 0, "units": None}
        said = caller.units_header
        outcome: list[bool] = []  # [recorded] once the call is recorded
        started = time.perf_counter()

        async def record() -> None:
            """Record the answered call (once): before its answer's last byte is sent,
            so that whatever its client does next (read the call log, its usage)
            finds it."""
            nonlocal units, price
            if outcome:
                return
            latency = (time.perf_counter() - started) * 1000
            if seen["units"] is not None and seen["units"] != units and seen["status"] < 500:
                # What the answer says it weighed, priced from the same place in the
                # quota (units beyond a quota with no price beyond cost nothing: the
                # answer is sent).
                units = seen["units"]
                price = units_price(caller.plan, used, units) or ZERO
            if claimed is not None:
                outcome.append(await self._settle(claimed, seen, latency, units, price))
            else:
                outcome.append(
                    await self._record(caller, request_id, scope, path, seen, latency, units, price)
                )
            release()

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                answered = message.get("headers", [])
                if said is not None:
                    # The API's word to the gateway: read (its first value), never sent on.
                    values = [v for k, v in answered if k.lower() == said]
                    if values:
                        seen["units"] = header_units(values[0])
                        answered = [(k, v) for k, v in answered if k.lower() != said]
                message = {
                    **message,
                    "headers": [
                        *answered,
                        (b"x-request-id", request_id.encode()),
                        *extra,
                    ],
                }
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
                if not message.get("more_body", False):
                    await record()
            await send(message)

        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen["bytes_in"] += len(message.get("body", b""))
            return message

        try:
            await self.ingress.proxy(inner, counted, observed)
        finally:
            await record()  # (an answer cut short, or none: recorded as it stands)
        return units if outcome[0] and int(seen["status"]) < 500 else None

    async def _tell_usage(self, caller: Caller) -> None:
        """After a counted call (its answer sent): when this process's count of the
        period has reached a threshold of the quota not known told, have
        ``quota.check`` count in the database and tell what was crossed (once)."""
        included = caller.plan.included_calls
        _, used = self._used.get(caller.subscription_id, (caller.period_start, 0))
        # (``used`` holds this call, reserved when it was admitted.)
        reached = quota.crossed(used, included)
        key = (caller.subscription_id, caller.period_start)
        if not reached or reached[-1] <= self._told.get(key, 0):
            return
        assert self.ingress.db is not None
        try:
            await self._written()  # this call's row among them
            told, _ = await quota.check(self.ingress.db, caller.subscription_id)
        except SQLAlchemyError:
            # The answer is sent; the billing pass's sweep tells what this missed.
            log.warning("usage alerts of %s not checked", caller.subscription_id, exc_info=True)
            return
        if told:
            if len(self._told) > CACHE_SIZE:
                self._told.clear()
            self._told[key] = told[-1]

    async def _claim(
        self, caller: Caller, request_id: str, scope: Scope, path: str, units: int, price: Decimal
    ) -> tuple[str | None, int | None]:
        """Record the call in flight under the client's request id: (its row's id,
        None), or (None, the status of the call that holds the id) when it is taken
        by a call in flight or answered below 500."""
        assert self.ingress.db is not None
        key = f"{caller.subscription_id}:{request_id}"
        call = ApiCall(
            request_id=key,
            api_id=caller.api_id,
            subscription_id=caller.subscription_id,
            plan_id=caller.plan.id,
            organisation_id=caller.organisation_id,
            method=str(scope["method"])[:8],
            path=path[:500],
            status=IN_FLIGHT,
            latency_ms=0.0,
            bytes_in=0,
            bytes_out=0,
            units=units,
            price=price,
        )
        async with self.ingress.db.sessionmaker() as session:
            session.add(call)
            try:
                await session.commit()
                return call.id, None
            except IntegrityError:
                await session.rollback()
        async with self.ingress.db.sessionmaker() as session:
            await begin_write(session)
            # A retry of a call answered 500 or more (recorded, not billed) takes its
            # row, stamped anew: after any window the billing pass has closed, so the
            # retry is charged (once) in a window still to come.
            retried = await session.execute(
                update(ApiCall)
                .where(ApiCall.request_id == key, ApiCall.status >= 500)
                .values(
                    status=IN_FLIGHT,
                    units=units,
                    price=price,
                    plan_id=caller.plan.id,
                    created_at=utcnow(),
                )
                .returning(ApiCall.id)
            )
            again = retried.scalar_one_or_none()
            if again is not None:
                await session.commit()
                return again, None
            earlier = await session.scalar(select(ApiCall.status).where(ApiCall.request_id == key))
            await session.rollback()
        return None, int(earlier) if earlier is not None else IN_FLIGHT

    async def _settle(
        self, call_id: str, seen: dict[str, Any], latency_ms: float, units: int, price: Decimal
    ) -> bool:
        """Write the answer of a call recorded in flight. If that fails, the row
        stays in flight with its price: the billing pass charges it later (it was
        forwarded)."""
        status = int(seen["status"])
        assert self.ingress.db is not None
        try:
            async with self.ingress.db.sessionmaker() as session:
                await session.execute(
                    update(ApiCall)
                    .where(ApiCall.id == call_id)
                    .values(
                        status=status,
                        latency_ms=round(latency_ms, 3),
                        bytes_in=int(seen["bytes_in"]),
                        bytes_out=int(seen["bytes"]),
                        units=units,
                        price=price if status < 500 else ZERO,
                    )
                )
                await session.commit()
        except SQLAlchemyError:
            log.warning("the answer of call %s was not recorded", call_id, exc_info=True)
        return True

    async def _record(
        self,
        caller: Caller,
        request_id: str,
        scope: Scope,
        path: str,
        seen: dict[str, Any],
        latency_ms: float,
        units: int,
        price: Decimal,
    ) -> bool:
        """Hand the answered call to the call log (written with others in a moment;
        its price held until then: ``affordable``)."""
        status = int(seen["status"])
        assert self.calls is not None
        charged = price if status < 500 else ZERO
        row = {
            "id": str(uuid.uuid4()),
            "request_id": f"{caller.subscription_id}:{request_id}",
            "api_id": caller.api_id,
            "subscription_id": caller.subscription_id,
            "plan_id": caller.plan.id,
            "organisation_id": caller.organisation_id,
            "method": str(scope["method"])[:8],
            "path": path[:500],
            "status": status,
            "latency_ms": round(latency_ms, 3),
            "bytes_in": int(seen["bytes_in"]),
            "bytes_out": int(seen["bytes"]),
            "units": units,
            "price": charged,
            "created_at": utcnow(),
        }
        await self.calls.add(row, (caller.organisation_id, caller.currency), charged)
        return True

    async def _written(self) -> None:
        """Every call this process answered is in the database."""
        if self.calls is not None:
            await self.calls.flush()


def _split(scope: Scope) -> tuple[str, bytes]:
    """(slug, the rest of the raw path with the query) of a ``/gw/`` request."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    after = raw[len(PATH_PREFIX) :]
    slug, sep, rest = after.partition(b"/")
    text = slug.decode("latin-1")
    if not _SLUG.match(text):
        text = ""
    rest = b"/" + rest if sep else b"/"
    return text, rest + (b"?" + query if query else b"")


def _escapes(rest: bytes) -> bool:
    """Could the path (before its query) leave the API's base path: a ``.`` or ``..``
    segment, plain or percent-encoded, or an encoded ``/`` or ``\\``?"""
    path = rest.partition(b"?")[0]
    for segment in path.split(b"/"):
        if b"%" in segment or b"\\" in segment:
            decoded = unquote_to_bytes(segment)
            if b"/" in decoded or b"\\" in decoded:
                return True
            segment = decoded
        if segment in (b".", b".."):
            return True
    return False


def _key_of(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            text = str(value.decode("latin-1")).strip()
            return text if looks_like(text) else None
        if name == b"authorization":
            scheme, _, token = str(value.decode("latin-1")).partition(" ")
            if scheme.lower() == "bearer" and looks_like(token.strip()):
                return str(token.strip())
    return None


def _client_request_id(scope: Scope) -> str | None:
    """The client's own well-formed ``X-Request-ID``, if it sent one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = str(value.decode("latin-1")).strip()
            if _REQUEST_ID.match(text):
                return text
    return None
