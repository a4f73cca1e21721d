"""The generator's response parser: whole answers however they are cut, the body
counted and never kept, and what is not HTTP refused as a protocol error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nefos.loadtest.http import RequestFailed, _Http


class Transport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


async def feed(pieces: list[bytes], head: bool = False) -> tuple[_Http, Any]:
    proto = _Http()
    proto.connection_made(Transport())  # type: ignore[arg-type]
    waiter = proto.expect(head)
    for piece in pieces:
        proto.data_received(piece)
    return proto, waiter


def cut(raw: bytes, size: int) -> list[bytes]:
    return [raw[i : i + size] for i in range(0, len(raw), size)]


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
)
LENGTH = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize(("raw", "status"), [(CHUNKED, 200), (LENGTH, 201)])
async def test_an_answer_however_it_is_cut(raw: bytes, status: int, size: int) -> None:
    _, waiter = await feed(cut(raw, size))
    assert waiter.done() and waiter.result()[0] == status


async def test_an_answer_is_not_done_before_its_last_byte() -> None:
    for raw in (CHUNKED, LENGTH):
        _, waiter = await feed([raw[:-1]])
        assert not waiter.done()


async def test_a_huge_body_is_counted_not_kept() -> None:
    block = b"x" * 65536
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(block) * 200)
    proto = _Http()
    proto.connection_made(Transport())  # type: ignore[arg-type]
    waiter = proto.expect(False)
    proto.data_received(head)
    for _ in range(200):
        assert not waiter.done()
        proto.data_received(block)
    assert waiter.result()[0] == 200
    # Chunked too: only a chunk-size line is ever held.
    proto = _Http()
    proto.connection_made(Transport())  # type: ignore[arg-type]
    waiter = proto.expect(False)
    proto.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(200):
        proto.data_received(b"10000\r\n" + block + b"\r\n")
        assert not waiter.done()
    proto.data_received(b"0\r\n\r\n")
    assert waiter.result()[0] == 200


async def test_a_body_to_the_end_of_the_connection() -> None:
    proto, waiter = await feed([b"HTTP/1.0 200 OK\r\n\r\nabc", b"def"])
    assert not waiter.done()
    proto.connection_lost(None)
    assert waiter.result()[0] == 200
    # A body cut short of its Content-Length is a failed read, not an answer.
    proto, waiter = await feed([b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"])
    proto.connection_lost(None)
    with pytest.raises(RequestFailed) as failed:
        await waiter
    assert failed.value.kind == "read"


async def test_keep_alive_follows_the_answer() -> None:
    proto, waiter = await feed([LENGTH])
    assert waiter.done() and not proto.transport.closed  # type: ignore[union-attr]
    proto, waiter = await feed(
        [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"]
    )
    assert waiter.done() and proto.transport.closed  # type: ignore[union-attr]


async def test_head_and_no_body_answers() -> None:
    _, waiter = await feed([b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"], head=True)
    assert waiter.result()[0] == 200
    _, waiter = await feed([b"HTTP/1.1 204 No Content\r\n\r\n"])
    assert waiter.result()[0] == 204


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 99999999999 Odd\r\n\r\n",
        b"HTTP/1.1 42 Low\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000,
    ],
)
async def test_what_is_not_http_is_a_protocol_error(raw: bytes) -> None:
    proto, waiter = await feed([raw])
    with pytest.raises(RequestFailed) as failed:
        await asyncio.wait_for(waiter, 1)
    assert failed.value.kind == "protocol"
    assert proto.transport is not None and proto.transport.closed  # type: ignore[attr-defined]
