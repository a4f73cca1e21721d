"""Chromium in a network namespace of its own, with only the ports it needs.

Chromium watches the host's addresses (netlink) and, when one appears or goes, aborts
its connections in flight with ``net::ERR_NETWORK_CHANGED``: a page load, a script's
chunk, an API call. The rest of the suite adds and removes interfaces all along (a
VM's tap device, a container's veth, a libvirt network's bridge), so on the shared
machine a console test would lose a request now and then, whatever it waits for.

So the browser runs in a network namespace that has only a loopback: nothing changes
there. Each server the browser must reach (the console's ``nefos serve``, Stripe's
stand-in) is exposed in it on the same address and port by a relay that copies bytes
both ways to the real server on the host's loopback. The browser's URLs, origins and
Content-Security-Policy are those of the real servers.

The namespace is made by a thread of this process (``unshare``), which keeps a
descriptor of it; Chromium enters it through ``nsenter`` (``chromium-in-netns``).
Root only, as the whole suite is.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
#: The wrapper Playwright starts instead of /usr/bin/chromium.
LAUNCHER = Path(__file__).with_name("chromium-in-netns")
#: The variable the wrapper reads the namespace's path from.
NETNS_VARIABLE = "NEFOS_BROWSER_NETNS"
CHUNK = 64 * 1024

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def _check(result: int) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _bring_up_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


class BrowserNetwork:
    """A network namespace with a loopback, and relays into it."""

    def __init__(self) -> None:
        self._fd = self._in_thread(self._create)
        self._relays: list[_Relay] = []

    @property
    def path(self) -> str:
        """A path that names the namespace, for ``nsenter --net=``."""
        return f"/proc/{os.getpid()}/fd/{self._fd}"

    def env(self) -> dict[str, str]:
        """The browser's environment: this one, and where its namespace is."""
        return {**os.environ, NETNS_VARIABLE: self.path}

    def expose(self, port: int) -> _Relay:
        """Serve 127.0.0.1:``port`` in the namespace by the host's 127.0.0.1:``port``
        until the relay returned is closed."""
        listener = self.inside(lambda: self._listen(port))
        relay = _Relay(listener, port)
        self._relays.append(relay)
        return relay

    def close(self) -> None:
        for relay in self._relays:
            relay.close()
        self._relays.clear()
        os.close(self._fd)

    @staticmethod
    def _create() -> int:
        _check(_libc.unshare(CLONE_NEWNET))
        _bring_up_loopback()
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def inside(self, work: Callable[[], T]) -> T:
        """``work()``'s result, run in the namespace (sockets it makes stay there)."""

        def entered() -> T:
            _check(_libc.setns(self._fd, CLONE_NEWNET))
            return work()

        return self._in_thread(entered)

    @staticmethod
    def _listen(port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        return listener

    @staticmethod
    def _in_thread(work: Callable[[], T]) -> T:
        """Run ``work`` on a thread of its own: a namespace entered there stays there
        (the thread ends), while the sockets made in it keep their namespace."""
        result: list[T] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                result.append(work())
            except BaseException as exc:  # handed to the caller below
                failure.append(exc)

        thread = threading.Thread(target=run, name="browser-netns")
        thread.start()
        thread.join()
        if failure:
            raise failure[0]
        return result[0]


class _Relay:
    """Accepts in the namespace, connects on the host, copies both ways."""

    def __init__(self, listener: socket.socket, port: int) -> None:
        self._listener = listener
        self._port = port
        self._lock = threading.Lock()
        self._open: set[_Pair] = set()
        self._closed = False
        threading.Thread(target=self._accept, name=f"relay-{port}", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pairs = list(self._open)
        _shut(self._listener)  # wakes the thread blocked in accept()
        self._listener.close()
        for pair in pairs:
            pair.end()

    def _accept(self) -> None:
        while True:
            try:
                inside, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                outside = socket.create_connection(("127.0.0.1", self._port), timeout=10)
            except OSError:
                _reset(inside)  # the browser sees a reset, as near a refusal as it gets
                continue
            outside.settimeout(None)
            pair = _Pair(inside, outside, self._forget)
            with self._lock:
                if self._closed:
                    inside.close()
                    outside.close()
                    return
                self._open.add(pair)
            pair.start()

    def _forget(self, pair: _Pair) -> None:
        with self._lock:
            self._open.discard(pair)


class _Pair:
    """One browser connection and its server connection."""

    def __init__(
        self, inside: socket.socket, outside: socket.socket, done: Callable[[_Pair], None]
    ) -> None:
        self._sockets = (inside, outside)
        self._done = done
        self._lock = threading.Lock()
        self._running = 2

    def start(self) -> None:
        inside, outside = self._sockets
        for source, sink in ((inside, outside), (outside, inside)):
            threading.Thread(
                target=self._copy, args=(source, sink), name="relay-copy", daemon=True
            ).start()

    def end(self) -> None:
        """Both connections down (shutdown wakes a thread blocked in recv)."""
        for s in self._sockets:
            _shut(s)

    def _copy(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)  # the end of one direction, passed on
        except OSError:
            self.end()  # one side went away: so does the other, as without a relay
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            for s in self._sockets:
                s.close()
            self._done(self)


def _reset(s: socket.socket) -> None:
    """Close with a reset (RST), not an orderly end of stream."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected, or closed already
