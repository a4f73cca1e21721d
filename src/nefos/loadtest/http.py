"""A lean HTTP/1.1 client for the generator: one keep-alive connection per object,
requests prepared once as bytes, responses read with ``Content-Length``, chunked
encoding or to the end of the connection.

Why not httpx here: its per-request cost (about half a millisecond of Python) would
make the generator the bottleneck long before the target; this is a tenth of that.
Only what a load test sends is supported: no TLS (targets are the tenant's own
services on Nefos's hosts, reached over plain HTTP), no redirects, no cookies.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from nefos.loadtest.plan import RequestSpec, host_port

MAX_HEADER_BYTES = 64 * 1024


class RequestFailed(Exception):
    """No HTTP answer: ``kind`` is ``connect``, ``timeout`` or ``read``."""

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


class Connection:
    """One connection to one ``host:port``, opened on first use and again after the
    server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, req: Prepared) -> int:
        """Send ``req`` and read the whole response; its status. ``RequestFailed`` if
        no response came (the caller bounds the time with a timeout)."""
        reused = self._writer is not None
        try:
            return await self._exchange(req)
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            self.close()
            if reused and isinstance(exc, ConnectionError | asyncio.IncompleteReadError):
                # The server closed an idle keep-alive connection: once more, fresh.
                try:
                    return await self._exchange(req)
                except (ConnectionError, asyncio.IncompleteReadError, OSError) as again:
                    self.close()
                    raise _failure(again) from again
            raise _failure(exc) from exc
        except BaseException:
            self.close()
            raise

    async def _exchange(self, req: Prepared) -> int:
        if self._writer is None:
            try:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            except OSError as exc:
                raise RequestFailed("connect", str(exc)) from exc
        reader, writer = self._reader, self._writer
        assert reader is not None
        writer.write(req.raw)
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, _, rest = head.partition(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise asyncio.IncompleteReadError(head, None)
        status = int(parts[1])
        length: int | None = None
        chunked = False
        close = parts[0] == b"HTTP/1.0"
        for line in rest.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                v = value.strip().lower()
                close = v == b"close" or (close and v != b"keep-alive")
        if req.head or status in (204, 304) or 100 <= status < 200:
            pass
        elif chunked:
            await _read_chunked(reader)
        elif length is not None:
            await reader.readexactly(length)
        else:
            await reader.read()  # to the end of the connection
            close = True
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def _read_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return
        await reader.readexactly(size + 2)


def _failure(exc: BaseException) -> RequestFailed:
    if isinstance(exc, RequestFailed):
        return exc
    if isinstance(exc, ConnectionRefusedError):
        return RequestFailed("connect", str(exc))
    return RequestFailed("read", str(exc) or type(exc).__name__)
