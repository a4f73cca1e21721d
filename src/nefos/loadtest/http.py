"""A lean HTTP/1.1 client for the generator: one keep-alive connection per object,
requests prepared once as bytes, responses parsed as they arrive, with
``Content-Length``, chunked encoding, or to the end of the connection.

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
    """Parses one response at a time as its bytes arrive. The head is kept (bounded by
    ``MAX_HEADER_BYTES``); the body is counted, never kept: a target that answers
    gigabytes costs the generator no memory."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()  # the head, then a chunk-size line or a trailer
        self.waiter: asyncio.Future[tuple[int, float]] | None = None
        self.head = False
        self.lost = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.in_body = False
        self.length: int | None = None  # bytes of body (or of the chunk) still to come
        self.chunked = False
        self.chunk_state = "size"  # size, data, data-end, trailer
        self.close = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def expect(self, head: bool) -> asyncio.Future[tuple[int, float]]:
        self.head = head
        self._reset()
        self.buf.clear()
        self.waiter = asyncio.get_running_loop().create_future()
        return self.waiter

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            return  # nothing asked (a server's stray bytes): dropped
        try:
            if not self.in_body:
                self.buf += data
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > MAX_HEADER_BYTES:
                        raise ValueError("response head too long")
                    return
                self._head(bytes(self.buf[:end]))
                data = bytes(self.buf[end + 4 :])
                self.buf.clear()
            if self._body(data):
                self._finish()
        except (ValueError, IndexError) as exc:
            self._fail(RequestFailed("protocol", str(exc)))

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ValueError("not an HTTP response")
        if not (len(parts[1]) == 3 and parts[1].isdigit() and 100 <= int(parts[1]) <= 599):
            raise ValueError("not an HTTP status")
        self.status = int(parts[1])
        self.close = parts[0] == b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self.length = int(value.strip())
                if self.length < 0:
                    raise ValueError("negative Content-Length")
            elif name == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif name == b"connection":
                v = value.strip().lower()
                self.close = v == b"close" or (self.close and v != b"keep-alive")
        self.in_body = True
        if self.head or self.status in (204, 304) or 100 <= self.status < 200:
            self.length, self.chunked = 0, False
        elif self.chunked:
            self.length = None
        elif self.length is None:
            self.close = True  # to the end of the connection: connection_lost ends it

    def _body(self, data: bytes) -> bool:
        """Count ``data`` against the body; True once the body is complete."""
        if not self.chunked:
            if self.length is None:
                return False
            self.length -= min(len(data), self.length)
            return self.length == 0
        at = 0
        while True:
            if self.chunk_state in ("data", "data-end"):
                # A chunk's bytes, then the CRLF after them: counted, not kept.
                assert self.length is not None
                take = min(len(data) - at, self.length)
                self.length -= take
                at += take
                if self.length:
                    return False
                if self.chunk_state == "data":
                    self.chunk_state, self.length = "data-end", 2
                else:
                    self.chunk_state = "size"
                continue
            # "size" and "trailer": a line at a time, kept until its CRLF (which may
            # come cut in two).
            if self.buf:
                data, at = bytes(self.buf) + data[at:], 0
                self.buf.clear()
            eol = data.find(b"\r\n", at)
            if eol < 0:
                self.buf += data[at:]
                if len(self.buf) > MAX_HEADER_BYTES:
                    raise ValueError("chunk line too long")
                return False
            line = data[at:eol]
            at = eol + 2
            if self.chunk_state == "trailer":
                if not line:
                    return True  # the empty line after the trailers: done
                continue
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size < 0:
                raise ValueError("negative chunk size")
            if size == 0:
                self.chunk_state = "trailer"
            else:
                self.chunk_state, self.length = "data", size

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
        if self.in_body and self.length is None and not self.chunked:
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
