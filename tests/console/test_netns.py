"""The browser's network namespace (tests/console/netns.py): only a loopback, and the
relays that expose the host's servers in it. No browser: sockets made inside."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.console.netns import BrowserNetwork


@pytest.fixture(scope="module")
def network() -> Iterator[BrowserNetwork]:
    net = BrowserNetwork()
    try:
        yield net
    finally:
        net.close()


@pytest.fixture
def echo() -> Iterator[int]:
    """A server on the host's loopback that sends back in capitals what it read, once
    the client has finished sending (so a half-close must pass through)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(30)
            received = b""
            while data := conn.recv(4096):
                received += data
            conn.sendall(received.upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(30)


def _exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while data := s.recv(4096):
            answer += data
        return answer


def test_the_namespace_has_only_a_loopback_and_it_is_up(network: BrowserNetwork) -> None:
    def interfaces() -> list[str]:
        lines = Path("/proc/thread-self/net/dev").read_text().splitlines()[2:]
        return [line.split(":")[0].strip() for line in lines]

    assert network.inside(interfaces) == ["lo"]
    # Up: a socket can listen and be reached there.
    with network.inside(lambda: socket.create_server(("127.0.0.1", 0))) as inner:
        port = inner.getsockname()[1]
        network.inside(lambda: socket.create_connection(("127.0.0.1", port), timeout=5)).close()


def test_an_exposed_port_reaches_the_host_server_both_ways_until_closed(
    network: BrowserNetwork, echo: int
) -> None:
    payload = b"nefos " * 50_000  # several chunks each way
    relay = network.expose(echo)
    try:
        assert network.inside(lambda: _exchange(echo, payload)) == payload.upper()
    finally:
        relay.close()
    with pytest.raises(ConnectionRefusedError):
        network.inside(lambda: _exchange(echo, b"again"))


def test_a_host_port_not_exposed_is_not_reachable(network: BrowserNetwork, echo: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        network.inside(lambda: _exchange(echo, b"hello"))
    assert _exchange(echo, b"hello") == b"HELLO"  # while the host reaches it


def test_a_refusal_on_the_host_reaches_the_browser_as_a_reset(network: BrowserNetwork) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    relay = network.expose(port)
    try:
        # A reset, whichever call meets it first (not an empty answer, as a FIN gives).
        with pytest.raises(OSError):
            network.inside(lambda: _exchange(port, b"hello"))
    finally:
        relay.close()
