"""A running VM's serial console, interactive: libvirt's ``virDomainOpenConsole``
over a non-blocking stream, as ``virsh console`` does.

libvirt delivers a stream's data through an event loop: :func:`ensure_event_loop`
registers libvirt's default one, once per process and before the driver opens a
connection (a connection opened earlier would not use it), and runs it in a daemon
thread. A stream's READABLE event reads what is there on that thread and hands it
to the asyncio loop that opened the console.

Bounded like a serial line: libvirt's client reads the socket whatever its reader
does (its queue of a stream's data has no bound of its own), so the console always
drains it, and a reader :data:`MAX_QUEUED` chunks behind loses what comes next, as a
UART overruns; the next output it gets says how much it lost. A guest printing
without end holds at most ``MAX_QUEUED * CHUNK`` bytes in memory.

One console per domain at a time: opening one while another is open is
:class:`InvalidState`, unless ``force`` takes it over (the other one ends).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import libvirt

from nefos.drivers.base import DriverError, Shell

log = logging.getLogger("nefos.drivers.libvirt.console")

#: The most a read hands over at once.
CHUNK = 64 * 1024
#: Chunks waiting for the reader before more output is dropped.
MAX_QUEUED = 64
#: Seconds a write, or the hang-up, may take before the console is given up.
WRITE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 10.0

_EVENTS = (
    libvirt.VIR_STREAM_EVENT_READABLE
    | libvirt.VIR_STREAM_EVENT_HANGUP
    | libvirt.VIR_STREAM_EVENT_ERROR
)

_event_lock = threading.Lock()
_event_thread: threading.Thread | None = None


def ensure_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread (once)."""
    global _event_thread
    with _event_lock:
        if _event_thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        _event_thread = threading.Thread(target=_run_events, name="libvirt-events", daemon=True)
        _event_thread.start()


def _run_events() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except Exception:  # one bad callback must not end every console
            log.exception("libvirt's event loop failed an iteration")
            time.sleep(0.1)


def overrun_notice(dropped: int) -> bytes:
    """What the reader is told, before what comes next, of the output it lost."""
    return f"\r\n[nefos: {dropped} bytes of output dropped: the reader fell behind]\r\n".encode()


class SerialConsole(Shell):
    """The serial console of one domain (see the module docstring).

    ``run`` runs a blocking call in a worker thread (the driver's ``_run``)."""

    def __init__(
        self,
        stream: libvirt.virStream,
        loop: asyncio.AbstractEventLoop,
        run: Callable[..., Any],
        *,
        conn: Any = None,
    ) -> None:
        #: The connection the stream is on (its close ends the console: hang_up).
        self.conn = conn
        self._stream = stream
        self._loop = loop
        self._run = run
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._lock = threading.Lock()  # _queued, _dropped, _ended between the threads
        self._queued = 0
        self._dropped = 0
        self._ended = False
        self._closed = False
        self._seen_end = False

    def start(self) -> None:
        """Begin delivering output (call once, after the console opened; blocking)."""
        self._stream.eventAddCallback(_EVENTS, self._event, None)

    # --- the event thread ------------------------------------------------------------
    def _event(self, stream: libvirt.virStream, events: int, _opaque: Any) -> None:
        while True:
            with self._lock:
                ended = self._ended
            if ended:
                # Closed meanwhile: the stream is not ours to read any more, and a
                # callback left registered (a close that raced its registration)
                # must not fire again and again on data nobody reads.
                with suppress(libvirt.libvirtError):
                    stream.eventRemoveCallback()
                return
            try:
                data: bytes | int = stream.recv(CHUNK)
            except libvirt.libvirtError:
                data = b""  # the stream broke: the console ended
            if data == -2:  # nothing more for now
                return
            if not isinstance(data, bytes) or not data:
                self._end()
                return
            with self._lock:
                if self._ended:
                    continue  # ended while this was read: never after the end
                if self._queued >= MAX_QUEUED:
                    self._dropped += len(data)  # an overrun: the reader is behind
                    continue
                self._queued += 1
                dropped, self._dropped = self._dropped, 0
                # Where output was lost, the reader is told so, in its place. Handed
                # over under the lock: nothing can follow the end's b"".
                self._deliver(overrun_notice(dropped) + data if dropped else data)

    def hang_up(self) -> None:
        """The connection under the console is gone (any thread): it ends."""
        self._end()

    def _end(self) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
            self._deliver(b"")
        with suppress(libvirt.libvirtError):
            self._stream.eventRemoveCallback()

    def _deliver(self, data: bytes) -> None:
        with suppress(RuntimeError):  # the loop closed: nobody reads any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, data)

    # --- the Shell -------------------------------------------------------------------
    async def read(self) -> bytes:
        if self._seen_end:
            return b""  # every later read sees the end too
        data = await self._queue.get()
        if not data:
            self._seen_end = True
            return b""
        with self._lock:
            self._queued -= 1
        return data

    async def write(self, data: bytes) -> None:
        if self._ended or self._closed:
            raise DriverError("the console has ended")
        try:
            await asyncio.wait_for(self._run(self._send, data), WRITE_TIMEOUT)
        except TimeoutError as exc:
            raise DriverError("the console takes no input") from exc

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self._stream.send(bytes(view))
            except libvirt.libvirtError as exc:
                raise DriverError(f"the console has ended: {exc.get_error_message()}") from exc
            if sent == -2:  # a local stream's buffer is full: a moment
                time.sleep(0.01)
                continue
            view = view[sent:]

    async def resize(self, cols: int, rows: int) -> None:
        """A serial line has no size to tell the guest (``stty`` in it does)."""

    async def exit_code(self) -> int | None:
        return None  # a console ends, it does not exit

    async def close(self) -> None:
        """Hang up; a host that does not answer is given up after CLOSE_TIMEOUT (its
        thread is left to finish on its own)."""
        if self._closed:
            return
        self._closed = True
        with suppress(TimeoutError):
            await asyncio.wait_for(self._run(self.close_now), CLOSE_TIMEOUT)

    def close_now(self) -> None:
        """Hang up, blocking (any thread)."""
        with self._lock:
            ended, self._ended = self._ended, True
            if not ended:
                self._deliver(b"")  # a read under way ends
        if not ended:
            with suppress(libvirt.libvirtError):
                self._stream.eventRemoveCallback()
        with suppress(libvirt.libvirtError):
            self._stream.abort()
