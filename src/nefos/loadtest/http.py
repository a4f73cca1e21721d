"""A lean HTTP/1.1 client for the generator: one keep-alive connection per object,
requests prepared once as bytes, responses parsed as they arrive by httptools
(``Content-Length``, chunked encoding, or to the end of the connection).

Why not httpx here: its per-request cost (about half a millisecond of Python) would
make the generator the bottleneck long before the target. And the clock: a response
is timed in ``data_received``, when its last byte arrives, not when the waiting
coroutine gets its turn on the event loop (with many users, that turn comes later,
and the wait would be counted as the target's). Only what a load test sends is
supported: no TLS (targets are the tenant's own services on Nefos's hosts, reached
over plain HTTP), no redirects, no cookies.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import cast

import httptools

from nefos.loadtest.plan import RequestSpec, host_port

MAX_HEADER_BYTES = 64 * 1024


class RequestFailed(Exception):
    """No HTTP answer: ``kind`` is ``connect``, ``timeout``, ``read`` or ``protocol``."""

    def __init__(self, kind: str, message: str = "") -> None:
        super().__init__(message or kind)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Prepared:
    """One request to one target, as the bytes to send."""

    host: str
    port: int
    raw: bytes
    head: bool


def prepare(url: str, spec: RequestSpec) -> Prepared:
    host, port = host_port(url)
    base = url.split("://", 1)[1].split("/", 1)
    prefix = "/" + base[1].rstrip("/") if len(base) > 1 and base[1].strip("/") else ""
    path = prefix + spec.path
    body = spec.body.encode() if spec.body is not None else b""
    lines = [f"{spec.method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    names = {k.lower() for k in spec.headers}
    if "user-agent" not in names:
        lines.append("User-Agent: nefos-loadtest")
    if "accept" not in names:
        lines.append("Accept: */*")
    lines += [f"{k}: {v}" for k, v in spec.headers.items()]
    if body or spec.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    return Prepared(host, port, raw, spec.method == "HEAD")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    sent: float  # monotonic, just before the request's bytes were written
    done: float  # monotonic, when the response's last byte arrived


class _Http(asyncio.Protocol):
    """One response at a time, parsed by httptools (llhttp, as uvicorn's server
    side) as its bytes arrive. The head is bounded by ``MAX_HEADER_BYTES``; the body
    is never kept (the parser is given no ``on_body``): a target that answers
    gigabytes costs the generator no memory."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, float]] | None = None
        self.head = False
        self.lost = False
        self.parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.in_body = False
        self.head_bytes = 0  # bytes fed before the head ended
        self.complete = False
        self.framed = False  # a Content-Length or Transfer-Encoding: not to the end
        self.close = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def expect(self, head: bool) -> asyncio.Future[tuple[int, float]]:
        self.head = head
        self._reset()
        # A parser per response: an answer to HEAD leaves one mid-body (llhttp cannot
        # be told the request was HEAD), and a fresh one costs less than a reset.
        self.parser = httptools.HttpResponseParser(self)
        self.waiter = asyncio.get_running_loop().create_future()
        return self.waiter

    # --- httptools' callbacks ------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) in (14, 17) and name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        # (Asked here: llhttp answers for the message being parsed.)
        self.status = self.parser.get_status_code()
        self.close = not self.parser.should_keep_alive()
        self.in_body = True

    def on_message_complete(self) -> None:
        self.complete = True

    # --- bytes in ------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            return  # nothing asked (a server's stray bytes): dropped
        if not self.in_body:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(RequestFailed("protocol", str(exc) or type(exc).__name__))
            return
        if self.complete or (self.head and self.in_body):
            self._finish()
        elif not self.in_body and self.head_bytes > MAX_HEADER_BYTES:
            self._fail(RequestFailed("protocol", "response head too long"))

    def _finish(self) -> None:
        now = time.monotonic()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.status, now))
        if self.close and self.transport is not None:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is None or self.waiter.done():
            return
        if self.in_body and not self.framed and exc is None:
            self._finish()  # a body read to the end of the connection
        else:
            self._fail(RequestFailed("read", str(exc) if exc else "connection closed"))


class Connection:
    """One connection to one ``host:port``, opened on first use and again after the
    server closes it.

    A request that waits too long is ended by ``expire``, called by the generator's
    ticker for each connection ``busy_since`` longer than the timeout: one look per
    tick for all connections rather than a timer per request, which cost more than
    the rest of the client's work."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        #: When the request in flight was sent (monotonic), 0 when idle.
        self.busy_since = 0.0
        self._proto: _Http | None = None

    async def request(self, req: Prepared) -> Answer:
        """Send ``req`` and read the whole response. ``RequestFailed`` if no response
        came (the caller bounds the time with a timeout)."""
        reused = self._proto is not None and not self._proto.lost
        try:
            return await self._exchange(req)
        except RequestFailed as exc:
            self.close()
            if not (reused and exc.kind == "read"):
                raise
            # The server closed an idle keep-alive connection: once more, fresh.
            try:
                return await self._exchange(req)
            except RequestFailed:
                self.close()
                raise
        except BaseException:
            self.close()
            raise

    async def _exchange(self, req: Prepared) -> Answer:
        proto = self._proto
        if proto is None or proto.lost:
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.timeout):
                    _, proto = await loop.create_connection(_Http, self.host, self.port)
            except TimeoutError as exc:
                raise RequestFailed("timeout", "connect timed out") from exc
            except OSError as exc:
                raise RequestFailed("connect", str(exc)) from exc
            self._proto = proto
        assert proto.transport is not None
        waiter = proto.expect(req.head)
        sent = time.monotonic()
        self.busy_since = sent
        proto.transport.write(req.raw)
        try:
            status, done = await waiter
        finally:
            self.busy_since = 0.0
        return Answer(status, sent, done)

    def expire(self) -> None:
        """End the request in flight as a ``timeout`` (and close the connection)."""
        if self._proto is not None:
            self._proto._fail(RequestFailed("timeout", "no response in time"))

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
