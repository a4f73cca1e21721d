"""The event bus: in-process fan-out, and Redis pub/sub across processes.

``publish`` never blocks and never raises: it puts the event on an outbox that a
pump task drains. The pump names the event's organisation (from its project, with
a process-wide cache: a project never changes organisation) and sends it on:

* ``EventBus`` (the embedded default) hands it to this process's subscribers;
* ``RedisBus`` publishes it on one Redis channel, which every process (this one
  included) listens to and hands on to its own subscribers. While Redis cannot be
  reached the event is delivered in this process only, ``check_redis`` says so,
  and the listener reconnects with backoff.

A subscriber owns a bounded queue: one that cannot keep up loses its oldest events
and is told how many (``Subscription.take_dropped``), never slowing the others.

Beside the events, the bus carries *control messages* between Nefos's own processes
(never to a subscriber, never to a tenant): "forget these cached principals"
(``nefos.services.authn``). ``control`` hands one to this process's handlers at once
and, on Redis, publishes it on a channel of its own before it returns, so a change
committed in one process is known to the others before its request is answered.
``shares_control`` says whether every process can be told: always in one process,
only while the Redis subscription is up otherwise (caches must not be trusted then).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from nefos.events import Event

log = logging.getLogger("nefos.events")

OrgResolver = Callable[[str], Awaitable[str | None]]
Accept = Callable[[Event], bool]

OUTBOX_SIZE = 100_000
ControlHandler = Callable[[dict[str, Any]], None]
#: A control message's size limit: what arrives larger is ignored.
MAX_CONTROL_BYTES = 1_000_000


def _untyped(value: Any) -> Any:
    return value


class Subscription:
    """One listener's bounded queue of events."""

    def __init__(self, bus: EventBus, maxsize: int, accept: Accept | None) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.accept = accept
        self.dropped = 0
        self._unreported = 0

    def offer(self, event: Event) -> None:
        if self.accept is not None and not self.accept(event):
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            self._unreported += 1
        self._queue.put_nowait(event)

    async def get(self) -> Event:
        return await self._queue.get()

    def get_nowait(self) -> Event | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def take_dropped(self) -> int:
        """Events lost since the last call (the queue was full)."""
        n, self._unreported = self._unreported, 0
        return n

    def close(self) -> None:
        self._bus._subscribers.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class EventBus:
    """In-process fan-out (one server process)."""

    kind = "memory"

    def __init__(
        self, resolve_org: OrgResolver | None = None, *, single_process: bool = True
    ) -> None:
        self._resolve_org = resolve_org
        self._single_process = single_process
        self._subscribers: set[Subscription] = set()
        self._outbox: asyncio.Queue[Event] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._orgs: dict[str, str | None] = {}
        self._control_handlers: list[ControlHandler] = []
        self.dropped = 0

    # --- life -------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._outbox = asyncio.Queue(OUTBOX_SIZE)
        self._tasks = [asyncio.create_task(self._pump(), name="nefos-events-pump")]

    async def stop(self) -> None:
        # What is still in the outbox goes out first (a short wait at most).
        if self._outbox is not None and self.running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), 2.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not self._tasks[0].done()

    # --- publishing ---------------------------------------------------------------
    def publish(self, event: Event) -> None:
        """Queue ``event`` for delivery; from the bus's loop or any other thread."""
        loop = self._loop
        if loop is None or self._outbox is None:
            return  # not started (a bare Database in a script): nobody listens
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._put(event)
        else:  # another thread (or loop): hand it over safely
            try:
                loop.call_soon_threadsafe(self._put, event)
            except RuntimeError:  # the bus's loop is closed: the server is gone
                self.dropped += 1

    def publish_many(self, events: list[Event]) -> None:
        for event in events:
            self.publish(event)

    def _put(self, event: Event) -> None:
        assert self._outbox is not None
        try:
            self._outbox.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("event outbox full: %s dropped", event.type)

    async def _pump(self) -> None:
        assert self._outbox is not None
        while True:
            event = await self._outbox.get()
            try:
                await self._send(await self._named(event))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event %s could not be sent", event.type)
            finally:
                self._outbox.task_done()

    async def _named(self, event: Event) -> Event:
        if event.organisation_id is not None or event.project_id is None:
            return event
        project = event.project_id
        if project not in self._orgs:
            org = await self._resolve_org(project) if self._resolve_org else None
            if org is None:
                return event  # a project gone already: no tenant can be named
            if len(self._orgs) > 100_000:
                self._orgs.clear()
            self._orgs[project] = org
        return event.with_org(self._orgs[project])

    async def _send(self, event: Event) -> None:
        self.deliver(event)

    # --- control messages (between Nefos's processes) -------------------------------
    def on_control(self, handler: ControlHandler) -> None:
        self._control_handlers.append(handler)

    def control(self, message: dict[str, Any]) -> None:
        """Hand ``message`` to this process's handlers now (and to the others')."""
        self._handle_control(message)

    def _handle_control(self, message: dict[str, Any]) -> None:
        for handler in self._control_handlers:
            try:
                handler(message)
            except Exception:
                log.exception("control handler failed")

    @property
    def shares_control(self) -> bool:
        """Whether a control message reaches every process: in memory, only when this
        is the installation's one process (``--role all``, one process)."""
        return self._single_process

    # --- subscribing ----------------------------------------------------------------
    def subscribe(self, accept: Accept | None = None, *, maxsize: int = 1000) -> Subscription:
        sub = Subscription(self, maxsize, accept)
        self._subscribers.add(sub)
        return sub

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def deliver(self, event: Event) -> None:
        """Hand ``event`` to this process's subscribers."""
        for sub in list(self._subscribers):
            sub.offer(event)

    # --- health ---------------------------------------------------------------------
    async def check(self) -> str:
        return "healthy" if self.running else "unhealthy"

    async def check_redis(self) -> str | None:
        """Redis's state, or None when this bus uses none."""
        return None


class RedisBus(EventBus):
    """Fan-out across server processes through one Redis pub/sub channel."""

    kind = "redis"

    def __init__(
        self, url: str, *, prefix: str = "nefos", resolve_org: OrgResolver | None = None
    ) -> None:
        super().__init__(resolve_org, single_process=False)
        import redis.asyncio as aioredis

        self.url = url
        self.channel = f"{prefix}:events"
        self.control_channel = f"{prefix}:control"
        self._redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=15
        )
        # Control messages are published from synchronous code (a commit's hook),
        # before the commit returns: a blocking client with a short timeout.
        import redis as syncredis

        self._sync = syncredis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        self._origin = f"{os.getpid()}:{id(self):x}"
        self._listening = asyncio.Event()
        self._last_warning = 0.0

    async def start(self) -> None:
        await super().start()
        self._tasks.append(asyncio.create_task(self._listen(), name="nefos-events-redis"))
        # Give the listener a moment, so that events published right after start
        # come back to this process's subscribers through Redis.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), 3.0)

    async def stop(self) -> None:
        await super().stop()
        with contextlib.suppress(Exception):
            await self._redis.aclose()
        with contextlib.suppress(Exception):
            self._sync.close()

    def control(self, message: dict[str, Any]) -> None:
        self._handle_control(message)
        try:
            self._sync.publish(
                self.control_channel, orjson.dumps({"origin": self._origin, "message": message})
            )
        except Exception as exc:  # Redis away: the others stop trusting their caches
            self._warn(f"Redis publish of a control message failed ({exc})")

    @property
    def shares_control(self) -> bool:
        return self._listening.is_set()

    def _on_control(self, data: bytes) -> None:
        if len(data) > MAX_CONTROL_BYTES:
            return
        try:
            wire = orjson.loads(data)
            origin, message = wire["origin"], wire["message"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed control message")
            return
        if origin != self._origin and isinstance(message, dict):
            self._handle_control(message)

    async def _send(self, event: Event) -> None:
        if not self._listening.is_set():
            # Our own listener is away: Redis would not bring it back here.
            self.deliver(event)
        try:
            await self._redis.publish(self.channel, orjson.dumps(event.to_wire()))
        except Exception as exc:  # any Redis or socket failure: degrade, never lose locally
            if self._listening.is_set():
                self.deliver(event)
            self._warn(f"Redis publish failed ({exc}); events stay in this process")

    async def _listen(self) -> None:
        delay = 0.2
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.channel, self.control_channel)
                # What was missed while away is unknown: every process's caches start over.
                self._handle_control({"principals": "all"})
                self._listening.set()
                delay = 0.2
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is None or message.get("type") != "message":
                        continue
                    if message.get("channel") in (
                        self.control_channel,
                        self.control_channel.encode(),
                    ):
                        self._on_control(message["data"])
                        continue
                    try:
                        event = Event.from_wire(orjson.loads(message["data"]))
                    except (ValueError, KeyError, TypeError):
                        log.warning("ignored a malformed event on %s", self.channel)
                        continue
                    self.deliver(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: retry with backoff
                self._listening.clear()
                self._warn(f"Redis subscription lost ({exc}); retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await _untyped(pubsub).aclose()  # typed in some redis releases only

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning > 30:
            self._last_warning = now
            log.warning(message)

    async def check_redis(self) -> str:
        try:
            await asyncio.wait_for(self._redis.ping(), 2.0)
        except Exception:  # unreachable, refused, timed out: all the same to /health
            return "unhealthy"
        return "healthy" if self._listening.is_set() else "degraded"
