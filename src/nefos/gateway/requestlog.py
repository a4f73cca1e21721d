"""The request log: every HTTP request recorded for ``/analytics`` and ``GET /metrics``.

Nothing on the request path waits for the database:

* ``RequestLogMiddleware`` (pure ASGI, the outermost middleware) notes method, route
  template, status, duration, bytes and the caller once the response is sent, and
  appends one tuple to a bounded in-memory queue (``request_log_queue_size``). When
  the queue is full the entry is dropped and counted (``dropped["queue_full"]``,
  exposed as ``nefos_request_log_dropped_total``).
* ``RequestLog``'s writer task, started in the app's lifespan, wakes every
  ``request_log_flush_interval`` (or earlier, once the queue is half full) and drains
  the whole queue, ``request_log_batch_size`` rows per ``INSERT`` (one Core
  ``executemany`` in a transaction of its own). The work that needs more than the
  scope (the client's network and country, a user's personal organisation) is done
  there too, off the request path.
* A batch whose write fails is logged and kept for the next flush; after
  :data:`MAX_ATTEMPTS` failed writes it is dropped and counted
  (``dropped["write_failed"]``). The loop never dies of it.
* Once a minute the writer deletes the rows older than ``request_log_retention_days``,
  :data:`PRUNE_BATCH` rows a statement (short transactions: SQLite's one writer is
  never held for long).
* At shutdown what is still queued is written.

What is recorded for whom: the user and API key that ``get_principal`` verified
(``scope["state"]["principal"]``; for a request the rate limiter refused, the user of
its token, or its API key with the key's user, found by the key's hash), the
organisation of the route's target or the one it acts for
(``scope["state"]["organisation_id"]``, set by ``Authorize`` and ``Access.org``),
else the API key's organisation, else the user's personal organisation, else none
(anonymous calls).
A request that raised is recorded as a 500. WebSocket connections are not recorded:
they are not requests with a status and a duration (the event stream is one
connection that lasts for hours).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nefos.config import Settings
from nefos.db.models import ApiKey, Membership, Organisation, RequestLogEntry
from nefos.db.session import WRITE_OPTION, Database
from nefos.gateway.client import client_ip

log = logging.getLogger("nefos.gateway.requestlog")

#: Failed writes of one batch before it is dropped (and counted).
MAX_ATTEMPTS = 3
#: Rows deleted by one statement of the retention pass.
PRUNE_BATCH = 5000
#: Seconds between two retention passes.
PRUNE_INTERVAL = 60.0
#: Seconds ``stop`` waits for the writer's pass in progress.
STOP_TIMEOUT = 10.0
#: Longest user agent kept (the column's width).
MAX_USER_AGENT = 256
#: Users whose personal organisation is remembered (then the cache starts again).
MAX_CACHED_USERS = 50_000
UNMATCHED = "<unmatched>"
#: The api_key_id of a queued entry known only by its key's SHA-256 (a refusal).
KEY_HASH = "sha256:"

# One queued request, in this order (the columns the writer derives come after).
Entry = tuple[
    int,  # ts: epoch ms at the request's start
    str,  # method
    str,  # route template
    int,  # status
    float,  # duration_ms
    str | None,  # user_id
    str | None,  # organisation_id (target or the API key's)
    str | None,  # api_key_id
    str | None,  # ip
    str | None,  # user_agent
    int,  # bytes_in
    int,  # bytes_out
    str | None,  # request_id
]


# The columns the writer inserts, in the order of its rows.
COLUMNS = (
    "ts",
    "method",
    "route",
    "status",
    "duration_ms",
    "user_id",
    "organisation_id",
    "api_key_id",
    "ip",
    "network",
    "country",
    "user_agent",
    "bytes_in",
    "bytes_out",
    "request_id",
)


def insert_sql(paramstyle: str) -> str:
    """The writer's INSERT in the driver's parameter style (aiosqlite's ``qmark``,
    asyncpg's ``numeric_dollar``)."""
    if paramstyle == "qmark":
        marks = ["?"] * len(COLUMNS)
    elif paramstyle == "numeric_dollar":
        marks = [f"${i}" for i in range(1, len(COLUMNS) + 1)]
    elif paramstyle == "numeric":
        marks = [f":{i}" for i in range(1, len(COLUMNS) + 1)]
    elif paramstyle == "format":
        marks = ["%s"] * len(COLUMNS)
    else:
        raise ValueError(f"the request log cannot insert with paramstyle {paramstyle!r}")
    table = RequestLogEntry.__tablename__
    return f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({', '.join(marks)})"  # noqa: S608


@functools.lru_cache(maxsize=65536)
def network_of(ip: str | None) -> str | None:
    """The client's network: its /24 (IPv4) or /48 (IPv6); None if not an address.
    Cached: parsing an address costs about 8 µs, and the writer runs on the event
    loop that serves requests."""
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def route_template(scope: Scope) -> str:
    """The matched route's path without the ``/api/v1`` or ``/api`` prefix, so that
    both aliases log as one route; ``<unmatched>`` when no route matched."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    for prefix in ("/api/v1", "/api"):
        if path == prefix:
            return "/"
        if path.startswith(prefix + "/"):
            return path[len(prefix) :]
    return path


class GeoIP:
    """Country lookups in a MaxMind-format database (``.mmdb``: GeoLite2-Country,
    GeoIP2-Country, DB-IP's, or any with ``country.iso_code``)."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self._cache: dict[str, str | None] = {}

    @classmethod
    def open(cls, path: Path) -> GeoIP:
        import maxminddb

        return cls(maxminddb.open_database(str(path)))

    def country(self, ip: str | None) -> str | None:
        if not ip:
            return None
        if ip in self._cache:
            return self._cache[ip]
        code: str | None = None
        try:
            record = self.reader.get(ip)
        except ValueError:  # not an address
            record = None
        if isinstance(record, dict):
            for key in ("country", "registered_country"):
                found = record.get(key)
                if isinstance(found, dict) and isinstance(found.get("iso_code"), str):
                    code = found["iso_code"][:2].upper()
                    break
        if len(self._cache) > MAX_CACHED_USERS:
            self._cache.clear()
        self._cache[ip] = code
        return code

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.reader.close()


class RequestLog:
    """The bounded queue of requests and the task that writes it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = settings.request_log_enabled
        self.queue: deque[Entry] = deque()
        self.queue_size = settings.request_log_queue_size
        self._wake_at = max(self.queue_size // 2, 1)
        self.batch_size = settings.request_log_batch_size
        self.dropped: dict[str, int] = {"queue_full": 0, "write_failed": 0}
        self.written = 0
        self.geoip: GeoIP | None = None
        self._db: Database | None = None
        self._writer: AsyncEngine | None = None
        self._pending: list[tuple[Any, ...]] = []  # a batch that failed to be written
        self._sql: str | None = None  # the INSERT, in the driver's parameter style
        self._attempts = 0
        self._personal: dict[str, str | None] = {}
        # API key hash -> (key id, user id, key's organisation), None if no such key
        self._keys: dict[str, tuple[str, str, str | None] | None] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_prune = 0.0
        # Retention in the writer's loop; the bootstrap turns it off and runs prune()
        # under the singleton "retention" lease (one process prunes, not each).
        self.prune_in_writer = True
        self._stopping = False
        self._failed = False  # the last write failed: the writer waits an interval
        # The INSERT of one batch; tests replace it to make writes fail.
        self.insert: Callable[[Sequence[tuple[Any, ...]]], Any] = self._insert

    # --- the request path -------------------------------------------------------------
    def record(self, entry: Entry) -> None:
        """Queue one request (never blocks): dropped and counted when the queue is full."""
        queue = self.queue
        if len(queue) >= self.queue_size:
            self.dropped["queue_full"] += 1
            return
        queue.append(entry)
        if len(queue) >= self._wake_at:
            self._wake.set()

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    # --- running ----------------------------------------------------------------------
    def start(self, db: Database) -> None:
        self._db = db
        self._writer = db.engine.execution_options(**{WRITE_OPTION: True})
        self._wake = asyncio.Event()  # of the serving loop
        self._lock = asyncio.Lock()
        if self.settings.geoip_database is not None and self.geoip is None:
            try:
                self.geoip = GeoIP.open(self.settings.geoip_database)
            except Exception:
                log.exception("cannot open the GeoIP database %s", self.settings.geoip_database)
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="request-log")

    async def stop(self) -> None:
        """Stop the writer (its pass in progress ends first) and write what is still
        queued."""
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT)
            except Exception:  # TimeoutError included
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
            self._task = None
            self._stopping = False
        if self._db is not None:
            try:
                await self.flush()
            except Exception:
                log.exception("request log: the last flush failed")
        if self.geoip is not None:
            self.geoip.close()
            self.geoip = None

    async def _loop(self) -> None:
        interval = self.settings.request_log_flush_interval
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            if self._stopping:
                return  # stop() writes what is left
            try:
                await self.flush()
                if self.prune_in_writer and time.monotonic() - self._last_prune >= PRUNE_INTERVAL:
                    self._last_prune = time.monotonic()
                    await self.prune()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("request log: a writer pass failed")
                self._failed = True
            if self._failed:  # a full queue wakes us at once: not while writes fail
                self._failed = False
                await asyncio.sleep(interval)

    # --- writing ----------------------------------------------------------------------
    async def flush(self) -> int:
        """Write everything queued now, batch after batch; the rows written. A failed
        batch is kept for the next flush (dropped after ``MAX_ATTEMPTS``)."""
        written = 0
        async with self._lock:
            while True:
                if not self._pending:
                    if not self.queue:
                        break
                    n = min(len(self.queue), self.batch_size)
                    batch = [self.queue.popleft() for _ in range(n)]
                    self._pending = await self._rows(batch)
                    self._attempts = 0
                try:
                    await self.insert(self._pending)
                except Exception:
                    self._attempts += 1
                    if self._attempts >= MAX_ATTEMPTS:
                        log.exception(
                            "request log: %d requests dropped after %d failed writes",
                            len(self._pending),
                            self._attempts,
                        )
                        self.dropped["write_failed"] += len(self._pending)
                        self._pending = []
                        self._attempts = 0
                    else:
                        log.exception("request log: a write failed (will retry)")
                    self._failed = True
                    break  # the next flush tries again
                written += len(self._pending)
                self.written += len(self._pending)
                self._pending = []
        return written

    async def _insert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        assert self._writer is not None, "RequestLog.start() first"
        async with self._writer.begin() as conn:
            if self._writer.dialect.driver == "asyncpg":
                # PostgreSQL: COPY, the bulk path (asyncpg encodes on this loop, and
                # COPY's encoding is the cheapest it has).
                raw = await conn.get_raw_connection()
                asyncpg_conn: Any = raw.driver_connection
                await asyncpg_conn.copy_records_to_table(
                    RequestLogEntry.__tablename__, records=rows, columns=COLUMNS
                )
                return
            # Otherwise the driver's executemany with plain tuples: SQLAlchemy's per-row
            # parameter processing was half the writer's time on the serving loop.
            if self._sql is None:
                self._sql = insert_sql(self._writer.dialect.paramstyle)
            await conn.exec_driver_sql(self._sql, list(rows))

    async def _rows(self, batch: list[Entry]) -> list[tuple[Any, ...]]:
        """The batch as rows: with each client's network and country, and the personal
        organisation of users who named none."""
        hashes = {e[7][len(KEY_HASH) :] for e in batch if e[7] and e[7].startswith(KEY_HASH)}
        if hashes - self._keys.keys():
            await self._load_keys(hashes - self._keys.keys())
        if hashes:
            batch = [self._with_key(e) for e in batch]
        unknown = {e[5] for e in batch if e[6] is None and e[5] is not None} - self._personal.keys()
        if unknown:
            await self._load_personal(unknown)
        geo = self.geoip
        rows: list[tuple[Any, ...]] = []
        for (
            ts,
            method,
            route,
            status,
            duration,
            user,
            org,
            key,
            ip,
            agent,
            b_in,
            b_out,
            rid,
        ) in batch:
            if org is None and user is not None:
                org = self._personal.get(user)
            rows.append(
                (  # in the order of COLUMNS
                    ts,
                    method[:8],
                    route[:256],
                    status,
                    duration,
                    user,
                    org,
                    key,
                    ip,
                    network_of(ip),
                    geo.country(ip) if geo is not None else None,
                    agent,
                    b_in,
                    b_out,
                    rid,
                )
            )
        return rows

    def _with_key(self, e: Entry) -> Entry:
        """An entry the rate limiter refused before authentication, known by its API
        key's hash: with the key's id, user and organisation (none if no such key)."""
        if not (e[7] and e[7].startswith(KEY_HASH)):
            return e
        found = self._keys.get(e[7][len(KEY_HASH) :])
        key_id, user_id, org_id = found if found is not None else (None, None, None)
        return (*e[:5], user_id, e[6] or org_id, key_id, *e[8:])

    async def _load_keys(self, hashes: set[str]) -> None:
        await self._fill(
            self._keys,
            hashes,
            select(ApiKey.key_hash, ApiKey.id, ApiKey.user_id, ApiKey.organisation_id).where(
                ApiKey.key_hash.in_(hashes)
            ),
            "API keys",
        )

    async def _load_personal(self, users: set[str]) -> None:
        await self._fill(
            self._personal,
            users,
            select(Membership.user_id, Organisation.id)
            .join(Organisation, Organisation.id == Membership.organisation_id)
            .where(Membership.user_id.in_(users), Organisation.is_personal.is_(True)),
            "personal organisations",
        )

    async def _fill(self, cache: dict[str, Any], wanted: set[str], query: Any, what: str) -> None:
        """Cache what ``query`` finds for the ``wanted`` keys (its rows: the key, then
        the value's columns), None for a key it does not find. A lookup that fails
        caches nothing: the next batch asks again."""
        if len(cache) > MAX_CACHED_USERS:
            cache.clear()
        found: dict[str, Any] = dict.fromkeys(wanted)
        assert self._db is not None
        try:
            async with self._db.engine.connect() as conn:
                for key, *value in await conn.execute(query):
                    found[key] = value[0] if len(value) == 1 else tuple(value)
        except Exception:
            log.exception("request log: cannot look up %s", what)
            return
        cache.update(found)

    async def prune(self, now_ms: int | None = None) -> int:
        """Delete the rows older than the retention, in batches; how many."""
        if self._writer is None:
            return 0
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        cut = now_ms - int(self.settings.request_log_retention_days * 86_400_000)
        table = RequestLogEntry
        gone = 0
        while True:
            oldest = select(table.id).where(table.ts < cut).limit(PRUNE_BATCH)
            async with self._writer.begin() as conn:
                result = await conn.execute(delete(table).where(table.id.in_(oldest)))
            n = max(result.rowcount or 0, 0)
            gone += n
            if n < PRUNE_BATCH:
                return gone


class RequestLogMiddleware:
    """Pure ASGI: times each HTTP request and queues it in ``request_log``."""

    def __init__(self, app: ASGIApp, request_log: RequestLog) -> None:
        self.app = app
        self.log = request_log
        self.settings = request_log.settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.log.enabled:
            await self.app(scope, receive, send)
            return
        started_ns = time.perf_counter_ns()
        ts = time.time_ns() // 1_000_000
        state = scope.setdefault("state", {})
        status = 0
        bytes_in = 0
        bytes_out = 0

        async def counting_receive() -> Message:
            nonlocal bytes_in
            message = await receive()
            body = message.get("body")
            if body:
                bytes_in += len(body)
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, bytes_out
            kind = message["type"]
            if kind == "http.response.start":
                status = int(message["status"])
            elif kind == "http.response.body":
                body = message.get("body")
                if body:
                    bytes_out += len(body)
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        except BaseException:
            status = 500
            raise
        finally:
            duration = (time.perf_counter_ns() - started_ns) / 1_000_000
            user_id = api_key_id = None
            org_id = state.get("organisation_id")
            principal = state.get("principal")
            # A detached or expired user: the request still counts, without them.
            with contextlib.suppress(Exception):
                if principal is not None:
                    user_id = principal.user.id
                    api_key_id = principal.api_key_id
                    if org_id is None:
                        org_id = principal.key_organisation_id
                elif (caller := state.get("rate_limit_caller")) is not None:
                    # Refused by the rate limiter before authentication: the user of
                    # the (signature-checked) token it counted against, or the API key
                    # it knows by its hash (the writer finds the key's id and user).
                    if caller.kind == "user":
                        user_id = caller.id
                    elif caller.kind == "key":
                        api_key_id = KEY_HASH + caller.id
            agent = None
            for key, value in scope["headers"]:
                if key == b"user-agent":
                    agent = value[:MAX_USER_AGENT].decode("latin-1")
                    break
            self.log.record(
                (
                    ts,
                    scope["method"],
                    route_template(scope),
                    status or 500,
                    duration,
                    user_id,
                    org_id,
                    api_key_id,
                    client_ip(scope, self.settings.forwarded_allow_ips),
                    agent,
                    bytes_in,
                    bytes_out,
                    state.get("request_id"),
                )
            )
