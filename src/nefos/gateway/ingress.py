"""The HTTP ingress (pure ASGI): services' stable endpoints, on the API's own port;
and, through it, consumers' calls to published APIs (``/gw/``: ``gateway/apigw.py``).

A request reaches a service by its host name or by path:

* ``Host: {name}-{first 8 characters of its id}.{NEFOS_APPS_DOMAIN}`` (any path);
* ``/svc/{service id}/...`` on any host: the rest of the path goes to the service.

It is proxied to one of the service's routable instances (``services.endpoints``:
running replicas, at the addresses Nefos recorded for them; never an address a caller
gives): the one with the fewest requests in flight (round-robin among equals),
skipping instances known down; at most ``NEFOS_INGRESS_INSTANCE_CONCURRENCY`` at once
per instance (more wait for a slot). Bodies stream both ways; the
request body is bounded by ``NEFOS_MAX_BODY_BYTES`` (``BodyLimitMiddleware``).
Hop-by-hop headers are dropped; ``X-Forwarded-For``/``-Proto``/``-Host`` are set. An
idempotent request (GET, HEAD, OPTIONS, PUT, DELETE) whose body has not started to
stream is tried once more on another instance when the first cannot be connected to
(or closes without answering); that instance is then known down for ``DOWN_SECONDS``.

Answers of its own, in the envelope: 404 ``NOT_FOUND`` (no such service), 503
``SERVICE_UNAVAILABLE`` (no instance to take it), 502 ``BAD_GATEWAY`` (the instance
failed), 504 ``GATEWAY_TIMEOUT`` (``NEFOS_INGRESS_TIMEOUT``). The ingress is public:
a service's endpoint is its owner's published app. It never shows an upstream.

The instance list of a service is read from the database at most once per
``NEFOS_INGRESS_CACHE_SECONDS`` per process (one read for concurrent misses), and
forgotten at once when the container's status changes (the event bus).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from nefos.config import Settings
from nefos.db.session import Database
from nefos.events import Event, EventType
from nefos.events.bus import EventBus, Subscription
from nefos.gateway.bodylimit import BodyLimitMiddleware, BodyTooLarge
from nefos.gateway.envelope import send_error
from nefos.gateway.traffic import TrafficStats
from nefos.services.endpoints import (
    Upstream,
    find_by_label,
    is_api_container,
    label_of_host,
    upstreams,
)

log = logging.getLogger("nefos.ingress")

PATH_PREFIX = "/svc/"
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: How long an instance that refused a connection is left out.
DOWN_SECONDS = 10.0
#: Services (and host names) whose look-ups a process remembers.
CACHE_SIZE = 10_000
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Set by the ingress itself from what it saw, whatever the client sent.
_OWN = frozenset({b"x-forwarded-proto", b"x-forwarded-host"})
_SCOPE_KEY = "nefos.ingress"
MAX_ID = 36

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A bounded map whose entries live ``ttl`` seconds; concurrent misses of one key
    share one load."""

    def __init__(self, ttl: float, size: int = CACHE_SIZE) -> None:
        self.ttl = ttl
        self.size = size
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._loading: dict[K, asyncio.Future[V]] = {}
        self.loads = 0

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        now = time.monotonic()
        hit = self._items.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await load()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        else:
            future.set_result(value)
        finally:
            del self._loading[key]
        self.loads += 1
        if self.ttl > 0:
            self._items[key] = (time.monotonic() + self.ttl, value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def forget(self, key: K) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()


def _container_status(event: Event) -> bool:
    """What changes a service's instances: its container's or VM's status (replicas
    placed, removed, lost; a VM started or stopped) and an instance's health
    (passing, critical, maintenance)."""
    return event.type in (
        EventType.CONTAINER_STATUS,
        EventType.VM_STATUS,
        EventType.SERVICE_HEALTH,
    )


class _Gate:
    """One instance's requests in flight through this process, and the slots that
    bound them. The bound keeps httpx's connection pool small: its cost per request
    grows with the requests waiting in it (about 5 ms of CPU at 50 at once, 0.9 ms
    at 8 on the benchmark's machine)."""

    __slots__ = ("inflight", "slots")

    def __init__(self, limit: int) -> None:
        self.inflight = 0
        self.slots = asyncio.Semaphore(limit)


class _Refused(Exception):
    """The instance could not be connected to, or closed without answering."""


class Ingress:
    """The ingress's state in one process: the HTTP client (one pool for every
    service), the caches and which instances are known down. ``start``/``stop`` are
    the composition root's (``nefos.bootstrap``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db: Database | None = None
        self.client: httpx.AsyncClient | None = None
        self.labels: TtlCache[str, str | None] = TtlCache(settings.ingress_cache_seconds)
        #: Which services are APIs' containers (reached through the gateway only).
        self.gated: TtlCache[str, bool] = TtlCache(settings.ingress_cache_seconds)
        self.instances: TtlCache[str, list[Upstream] | None] = TtlCache(
            settings.ingress_cache_seconds
        )
        self.down: dict[tuple[str, int], float] = {}
        self._gates: dict[tuple[str, int], _Gate] = {}
        self._changes: Subscription | None = None
        self._listener: asyncio.Task[None] | None = None
        self._turn = itertools.count()
        self.retries = 0
        #: Requests each instance was sent (its id -> count), for operators and tests.
        self.sent: dict[str, int] = {}
        #: Requests in flight per service (bounded by ingress_service_concurrency).
        self._service_inflight: dict[str, int] = {}
        #: Each instance's last minute: requests/s, error rate, p95 (GET /services/{id}).
        self.traffic = TrafficStats()

    def start(self, db: Database, events: EventBus | None = None) -> None:
        """Open the client; with ``events``, forget a service's instances as soon as
        its container's status changes (started, stopped, scaled, degraded, deleted:
        in any process, when the bus is Redis) rather than at the cache's expiry."""
        self.db = db
        if events is not None:
            self._changes = events.subscribe(_container_status)
            self._listener = asyncio.create_task(self._forget_changed(self._changes))
        limit = self.settings.ingress_max_connections
        timeout = self.settings.ingress_timeout
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            follow_redirects=False,
            trust_env=False,  # never through a proxy of the environment
        )

    async def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        if self._changes is not None:
            self._changes.close()
            self._changes = None
        client, self.client = self.client, None
        if client is not None:
            await client.aclose()

    async def _forget_changed(self, changes: Subscription) -> None:
        while True:
            event = await changes.get()
            service_id = event.data.get("container_id") or event.data.get("service_id")
            if isinstance(service_id, str):
                self.instances.forget(service_id)

    @property
    def running(self) -> bool:
        return self.client is not None and self.db is not None

    # --- look-ups -------------------------------------------------------------------------
    async def service_of_label(self, label: str) -> str | None:
        async def load() -> str | None:
            assert self.db is not None
            async with self.db.sessionmaker() as session:
                return await find_by_label(session, label)

        return await self.labels.get(label, load)

    async def is_gated(self, service_id: str) -> bool:
        db = self.db
        if db is None:  # (no database, no APIs)
            return False

        async def load() -> bool:
            async with db.sessionmaker() as session:
                return await is_api_container(session, service_id)

        return await self.gated.get(service_id, load)

    async def upstreams(self, service_id: str) -> list[Upstream] | None:
        async def load() -> list[Upstream] | None:
            assert self.db is not None
            async with self.db.sessionmaker() as session:
                return await upstreams(session, service_id)

        return await self.instances.get(service_id, load)

    def gate(self, up: Upstream) -> _Gate:
        key = (up.address, up.port)
        gate = self._gates.get(key)
        if gate is None:
            if len(self._gates) > CACHE_SIZE:
                self._gates = {k: g for k, g in self._gates.items() if g.inflight}
            gate = self._gates[key] = _Gate(self.settings.ingress_instance_concurrency)
        return gate

    def pick(self, ups: list[Upstream], tried: set[Upstream]) -> Upstream | None:
        """The instance with the fewest requests in flight, among those not tried yet
        and not known down; ties go round-robin."""
        now = time.monotonic()
        count = len(ups)
        start = next(self._turn)
        best: Upstream | None = None
        least = 0
        for i in range(count):
            up = ups[(start + i) % count]
            if up in tried or self.down.get((up.address, up.port), 0.0) > now:
                continue
            gate = self._gates.get((up.address, up.port))
            load = gate.inflight if gate is not None else 0
            if best is None or load < least:
                best, least = up, load
        return best

    def mark_down(self, up: Upstream) -> None:
        self.down[(up.address, up.port)] = time.monotonic() + DOWN_SECONDS
        if len(self.down) > CACHE_SIZE:
            now = time.monotonic()
            self.down = {k: v for k, v in self.down.items() if v > now}

    # --- proxying -------------------------------------------------------------------------
    async def proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind, key, raw_path = scope[_SCOPE_KEY]
        if not raw_path.startswith(b"/"):
            # ``OPTIONS *`` or an absolute-form target: nothing an instance is sent.
            await send_error(
                send, 400, "VALIDATION_ERROR", "A service is sent origin-form paths only"
            )
            return
        if kind == "host":
            service_id = await self.service_of_label(key)
            if service_id is None:
                await send_error(send, 404, "NOT_FOUND", "No service has this host name")
                return
        else:
            service_id = key
        if service_id and not scope.get(GATEWAY_FORWARD) and await self.is_gated(service_id):
            # An API's replicas answer its consumers' calls, each checked, limited
            # and priced by the gateway: never a call around it.
            service_id = ""
        ups = await self.upstreams(service_id) if service_id else None
        if ups is None:
            await send_error(
                send, 404, "NOT_FOUND", "Service not found", {"service_id": service_id}
            )
            return
        if not ups:
            await _unavailable(send, service_id, "none of its instances passes its checks")
            return
        busy = self._service_inflight.get(service_id, 0)
        if busy >= self.settings.ingress_service_concurrency:
            await _unavailable(send, service_id, "it has too many requests in flight")
            return
        self._service_inflight[service_id] = busy + 1
        try:
            await self._forward(scope, receive, send, service_id, ups, raw_path)
        finally:
            left = self._service_inflight[service_id] - 1
            if left:
                self._service_inflight[service_id] = left
            else:
                del self._service_inflight[service_id]

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        service_id: str,
        ups: list[Upstream],
        raw_path: bytes,
    ) -> None:
        assert self.client is not None
        method: str = scope["method"]
        headers, has_body = _request_headers(scope)
        streamed = False

        #: Why the client's side of the body ended early (too large, or gone): the
        #: HTTP client may report it as its own error; this is what is answered.
        broken: list[BaseException] = []

        async def body() -> AsyncIterator[bytes]:
            nonlocal streamed
            while True:
                try:
                    message = await receive()
                except BodyTooLarge as exc:
                    broken.append(exc)
                    raise
                if message["type"] == "http.disconnect":
                    broken.append(_ClientGone())
                    raise broken[-1]
                chunk = message.get("body", b"")
                if chunk:
                    streamed = True
                    yield chunk
                if not message.get("more_body", False):
                    return

        tried: set[Upstream] = set()
        attempts = 2 if method in IDEMPOTENT else 1
        for attempt in range(attempts):
            up = self.pick(ups, tried)
            if up is None:
                break
            tried.add(up)
            if len(self.sent) > CACHE_SIZE:
                self.sent.clear()  # instances long gone; the counts restart
            self.sent[up.instance_id] = self.sent.get(up.instance_id, 0) + 1
            url = httpx.URL(scheme="http", host=up.address, port=up.port, raw_path=raw_path)
            gate = self.gate(up)
            gate.inflight += 1
            try:
                if gate.slots.locked():
                    # The instance has its share in flight: wait for one to end.
                    try:
                        await asyncio.wait_for(gate.slots.acquire(), self.settings.ingress_timeout)
                    except TimeoutError:
                        await _unavailable(send, service_id, "its instances are all busy")
                        return
                else:
                    await gate.slots.acquire()
                try:
                    started = time.perf_counter()
                    request = self.client.build_request(
                        method, url, headers=headers, content=body() if has_body else None
                    )
                    try:
                        try:
                            response = await self._send(request)
                        except Exception:
                            if broken:
                                raise broken[0] from None
                            raise
                    except _Refused:
                        self.traffic.record(up.instance_id, time.perf_counter() - started, True)
                        self.mark_down(up)
                        self.instances.forget(service_id)
                        if streamed or attempt + 1 == attempts:
                            await send_error(
                                send, 502, "BAD_GATEWAY", "The service's instance did not answer"
                            )
                            return
                        self.retries += 1
                        continue
                    except httpx.TimeoutException:
                        self.traffic.record(up.instance_id, time.perf_counter() - started, True)
                        await send_error(
                            send,
                            504,
                            "GATEWAY_TIMEOUT",
                            "The service did not answer within "
                            f"{self.settings.ingress_timeout:g} s",
                        )
                        return
                    except _ClientGone:
                        return
                    except httpx.HTTPError:
                        await send_error(send, 502, "BAD_GATEWAY", "The service's instance failed")
                        return
                    await _relay(response, send, on_api_origin=scope[_SCOPE_KEY][0] == "path")
                    self.traffic.record(
                        up.instance_id, time.perf_counter() - started, response.status_code >= 500
                    )
                    return
                finally:
                    gate.slots.release()
            finally:
                gate.inflight -= 1
        await _unavailable(send, service_id, "none of its instances answers")

    async def _send(self, request: httpx.Request) -> httpx.Response:
        assert self.client is not None
        try:
            return await self.client.send(request, stream=True)
        except (
            httpx.ConnectError,
            httpx.ConnectTimeout,
            httpx.RemoteProtocolError,
            httpx.ReadError,
        ) as exc:
            # Refused, or closed before a byte of an answer: another instance may serve.
            raise _Refused from exc


class _ClientGone(Exception):
    """The client went away while its body was being sent on."""


async def _unavailable(send: Send, service_id: str, why: str) -> None:
    await send_error(
        send,
        503,
        "SERVICE_UNAVAILABLE",
        f"The service cannot take requests now: {why}",
        {"service_id": service_id},
        [(b"retry-after", b"1")],
    )


def _request_headers(scope: Scope) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The headers to send on, and whether the request has a body."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    named: set[bytes] = set()
    for key, value in raw:
        if key == b"connection":
            named |= {v.strip().lower() for v in value.split(b",")}
    out: list[tuple[bytes, bytes]] = []
    forwarded_for = b""
    host = b""
    has_body = False
    for key, value in raw:
        if key == b"content-length":
            has_body = value.strip() not in (b"", b"0")
        elif key == b"transfer-encoding":
            has_body = True
        if key in HOP_BY_HOP or key in named or key in _OWN:
            continue
        if key == b"x-forwarded-for":
            forwarded_for = value if not forwarded_for else forwarded_for + b", " + value
            continue
        if key == b"host":
            host = value
        out.append((key, value))
    client = scope.get("client")
    peer = client[0].encode() if client else b"unknown"
    out.append((b"x-forwarded-for", forwarded_for + b", " + peer if forwarded_for else peer))
    out.append((b"x-forwarded-proto", str(scope.get("scheme", "http")).encode()))
    if host:
        out.append((b"x-forwarded-host", host))
    return out, has_body


#: Headers a service may not set on the API's own origin (the ``/svc/`` form): a
#: cookie of the API's domain, a service worker scoped over the API's pages.
_ORIGIN_BOUND = frozenset({b"set-cookie", b"set-cookie2", b"service-worker-allowed"})
#: The ``/svc/`` form serves the tenant's page on the API's origin: sandboxed, it
#: runs as an opaque origin, with no access to the API's storage, cookies or pages.
_SANDBOX = (b"content-security-policy", b"sandbox allow-scripts allow-forms allow-popups")


async def _relay(response: httpx.Response, send: Send, *, on_api_origin: bool = False) -> None:
    try:
        named: set[bytes] = set()
        for key, value in response.headers.raw:
            if key.lower() == b"connection":
                named |= {v.strip().lower() for v in value.split(b",")}
        dropped = HOP_BY_HOP | named | (_ORIGIN_BOUND if on_api_origin else frozenset())
        headers = [
            (key.lower(), value)
            for key, value in response.headers.raw
            if key.lower() not in dropped
        ]
        if on_api_origin:
            headers.append(_SANDBOX)
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        try:
            async for chunk in response.aiter_raw():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError:
            # The answer broke off after it started: end it (the client sees a short
            # body, or a chunked answer without its last chunk).
            log.info("an instance's answer broke off", exc_info=True)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await response.aclose()


_SERVICE_ID = re.compile(r"^[A-Za-z0-9_-]+$")
#: Set by the API gateway on the calls it forwards: only those reach an API's container.
GATEWAY_FORWARD = "nefos.gateway.forward"
#: The scope key under which the ingress hands the API gateway a call by ``Host``
#: (``{api slug}.{apps_domain}``): (slug, the raw path with its query).
HOST_CALL = "nefos.gateway.host"


def _route(scope: Scope, apps_domain: str) -> tuple[str, str, bytes] | None:
    """``("host", label, raw path)`` or ``("path", service id, raw path)``, or None
    when the request is not the ingress's."""
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    for key, value in scope["headers"]:
        if key == b"host":
            label = label_of_host(value.decode("latin-1"), apps_domain)
            if label is not None:
                return "host", label, raw_path + (b"?" + query if query else b"")
            break
    path: str = scope["path"]
    if not path.startswith(PATH_PREFIX):
        return None
    service_id, _, _ = path[len(PATH_PREFIX) :].partition("/")
    if not service_id:
        return None
    if len(service_id) > MAX_ID or not _SERVICE_ID.match(service_id):
        service_id = ""  # no such service: a 404 without a look in the database
    # The rest of the path as the client wrote it (percent-escapes kept).
    prefix = PATH_PREFIX.encode() + service_id.encode()
    rest = raw_path[len(prefix) :] if raw_path.startswith(prefix) else b""
    if not rest.startswith(b"/"):
        rest = b"/" + rest
    return "path", service_id, rest + (b"?" + query if query else b"")


class IngressMiddleware:
    """Outermost: requests for a service never reach the API (no API rate limits, no
    request log entry, no path rewrite); every other request passes untouched."""

    def __init__(
        self,
        app: ASGIApp,
        ingress: Ingress,
        gateway: ASGIApp | None = None,
        gateway_prefix: str = "/gw/",
        gateway_slug: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.app = app
        self.ingress = ingress
        self.apps_domain = ingress.settings.apps_domain
        self.limited = BodyLimitMiddleware(ingress.proxy, ingress.settings.max_body_bytes)
        self.gateway_prefix = gateway_prefix
        #: Is a ``Host`` label an API's slug? Then the call is the gateway's.
        self.gateway_slug = gateway_slug
        self.gated = (
            BodyLimitMiddleware(gateway, ingress.settings.max_body_bytes) if gateway else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.ingress.running:
            # A host name under the apps domain first: every path of it is the
            # service's (or the API's), ``/gw/...`` included.
            route = _route(scope, self.apps_domain)
            if (
                route is not None
                and route[0] == "host"
                and scope["type"] == "http"
                and self.gated is not None
                and self.gateway_slug is not None
                and await self.gateway_slug(route[1])
            ):
                # ``{api slug}.{apps_domain}``: a consumer's call to a published API.
                scope[HOST_CALL] = (route[1], route[2])
                await self.gated(scope, receive, send)
                return
            if (
                (route is None or route[0] != "host")
                and self.gated is not None
                and scope["type"] == "http"
                and scope["path"].startswith(self.gateway_prefix)
            ):
                # A consumer's call to a published API (gateway/apigw.py).
                await self.gated(scope, receive, send)
                return
            if route is not None:
                if scope["type"] == "websocket":
                    # Not proxied (yet); and never the API's own /ws under a service's
                    # name. Closing before the accept is a 403 to the client.
                    await send({"type": "websocket.close", "code": 1008})
                    return
                scope[_SCOPE_KEY] = route
                await self.limited(scope, receive, send)
                return
        await self.app(scope, receive, send)


__all__ = ["GATEWAY_FORWARD", "HOST_CALL", "Ingress", "IngressMiddleware", "TtlCache"]
