"""The serial console's bounds and ends (drivers/libvirt/console.py), on a stream
that stands in for libvirt's: what the guest prints past what the reader holds is
dropped and told, as a UART overruns; the end reaches every read; a closed console
reads nothing more. The real console is tested on a real guest in
tests/contract/test_libvirt_vm.py and tests/api/test_vm_console.py."""

from __future__ import annotations

import asyncio
from typing import Any

import libvirt
import pytest

from nefos.drivers.base import DriverError
from nefos.drivers.libvirt import console as serial
from nefos.drivers.libvirt.console import MAX_QUEUED, SerialConsole, overrun_notice


class Stream:
    """What the console calls of a virStream: recv hands out ``chunks``, then -2
    (nothing for now), or b"" (the end) once ``ended``."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.ended = False
        self.calls: list[str] = []

    def recv(self, _n: int) -> bytes | int:
        if self.chunks:
            return self.chunks.pop(0)
        return b"" if self.ended else -2

    def send(self, data: bytes) -> int:
        if "abort" in self.calls:
            raise libvirt.libvirtError("stream aborted")
        return len(data)

    def eventAddCallback(self, *_: Any) -> None:  # noqa: N802 - libvirt's name
        self.calls.append("add")

    def eventRemoveCallback(self) -> None:  # noqa: N802
        self.calls.append("remove")

    def abort(self) -> None:
        self.calls.append("abort")


async def in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def settled() -> None:
    """Let the loop run what the event thread handed it (call_soon_threadsafe)."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_output_past_what_the_reader_holds_is_dropped_and_told() -> None:
    stream = Stream()
    console = SerialConsole(stream, asyncio.get_running_loop(), in_thread)  # type: ignore[arg-type]
    console.start()
    stream.chunks = [f"{i:04d}".encode() for i in range(MAX_QUEUED + 10)]
    console._event(stream, libvirt.VIR_STREAM_EVENT_READABLE, None)  # type: ignore[arg-type]
    await settled()
    got = [await console.read() for _ in range(MAX_QUEUED)]
    assert got == [f"{i:04d}".encode() for i in range(MAX_QUEUED)]
    # Ten chunks of four bytes were lost; the next output says so first.
    stream.chunks = [b"next"]
    console._event(stream, libvirt.VIR_STREAM_EVENT_READABLE, None)  # type: ignore[arg-type]
    await settled()
    assert await console.read() == overrun_notice(40) + b"next"
    assert b"40 bytes of output dropped" in overrun_notice(40)


async def test_the_end_reaches_every_read_and_a_write_after_it_fails() -> None:
    stream = Stream()
    console = SerialConsole(stream, asyncio.get_running_loop(), in_thread)  # type: ignore[arg-type]
    stream.chunks, stream.ended = [b"last words"], True
    console._event(stream, libvirt.VIR_STREAM_EVENT_READABLE, None)  # type: ignore[arg-type]
    await settled()
    assert await console.read() == b"last words"
    assert await console.read() == b"" and await console.read() == b""
    assert "remove" in stream.calls
    with pytest.raises(DriverError):
        await console.write(b"echo\n")
    assert await console.exit_code() is None


async def test_a_closed_console_reads_nothing_more_and_ends_a_read_under_way() -> None:
    stream = Stream()
    console = SerialConsole(stream, asyncio.get_running_loop(), in_thread)  # type: ignore[arg-type]
    waiting = asyncio.create_task(console.read())
    await settled()
    await console.close()
    await console.close()  # once is enough
    assert await asyncio.wait_for(waiting, 5) == b""
    assert stream.calls.count("abort") == 1
    # An event already on its way finds the console closed: nothing is read.
    stream.chunks = [b"late"]
    console._event(stream, libvirt.VIR_STREAM_EVENT_READABLE, None)  # type: ignore[arg-type]
    assert stream.chunks == [b"late"]


async def test_a_stuck_write_is_a_driver_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serial, "WRITE_TIMEOUT", 0.05)
    stream = Stream()

    async def never(*_: Any) -> None:
        await asyncio.Event().wait()

    console = SerialConsole(stream, asyncio.get_running_loop(), never)  # type: ignore[arg-type]
    with pytest.raises(DriverError, match="takes no input"):
        await console.write(b"x")


async def test_a_closed_connection_ends_the_console_and_a_stray_callback_unregisters() -> None:
    stream = Stream()
    console = SerialConsole(stream, asyncio.get_running_loop(), in_thread)  # type: ignore[arg-type]
    console.start()
    waiting = asyncio.create_task(console.read())
    await settled()
    await asyncio.to_thread(console.hang_up)  # libvirt's thread: the connection closed
    assert await asyncio.wait_for(waiting, 5) == b""
    # A callback that fires after the end (one registered as a close raced it) takes
    # itself off rather than firing again and again on data nobody reads.
    stream.calls.clear()
    stream.chunks = [b"unread"]
    console._event(stream, libvirt.VIR_STREAM_EVENT_READABLE, None)  # type: ignore[arg-type]
    assert stream.calls == ["remove"] and stream.chunks == [b"unread"]
    assert await console.read() == b""
