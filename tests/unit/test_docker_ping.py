"""The Docker driver's ping (``DockerDriver.ping``): ``GET /_ping`` on a connection of
its own, on the event loop, against the test Podman that ``make services`` starts."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from pathlib import Path

import pytest

from nefos.drivers.base import DriverError, HostUnreachable
from nefos.drivers.docker.driver import DockerDriver
from tests.conftest import docker_host_uri


def test_a_ping_waits_for_no_thread_and_one_hosts_calls_hold_up_no_other_host() -> None:
    """Every thread of a host's driver held (long engine calls: a stop's grace, a
    pull), a ping still measures the engine, not the queue for a thread; and another
    host's driver, with threads of its own, still makes its calls."""

    async def run() -> None:
        busy = DockerDriver(docker_host_uri(), timeout=10, threads=2)
        other = DockerDriver(docker_host_uri(), timeout=10, threads=2)
        release = threading.Event()
        held = [asyncio.wrap_future(busy._threads.submit(release.wait, 60)) for _ in range(2)]
        try:
            # Deadlines, not timings: a thread of ``busy`` frees only at 60 s.
            await asyncio.wait_for(busy.ping(), 10)
            assert (await asyncio.wait_for(other.capacity(), 10)).cpus >= 1
            queued = asyncio.ensure_future(busy.capacity())
            await asyncio.sleep(0.5)
            assert not queued.done()  # behind the two held calls, bounded as set
            release.set()
            assert (await asyncio.wait_for(queued, 10)).cpus >= 1
        finally:
            release.set()
            await asyncio.gather(*held)
            await busy.close()
            await other.close()

    asyncio.run(run())


def test_a_closed_driver_makes_no_call_and_says_so() -> None:
    """A request that took the driver before its host was removed (``forget`` closes
    it) gets the host's unavailability, not an error of the thread pool."""

    async def run() -> None:
        driver = DockerDriver(docker_host_uri(), timeout=10, threads=2)
        assert (await driver.capacity()).cpus >= 1
        await driver.close()
        with pytest.raises(HostUnreachable, match="closed"):
            await driver.capacity()

    asyncio.run(run())


def test_a_ping_of_no_engine_is_unreachable_and_of_another_server_an_error(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        gone = DockerDriver(f"unix://{tmp_path / 'nothing.sock'}", timeout=5)
        with pytest.raises(HostUnreachable):
            await gone.ping()

        # A server that is no engine: it answers, with something else than 200.
        path = tmp_path / f"{uuid.uuid4().hex[:8]}.sock"

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(answer, str(path))
        other = DockerDriver(f"unix://{path}", timeout=5)
        try:
            with pytest.raises(DriverError, match="404") as caught:
                await other.ping()
            assert not isinstance(caught.value, HostUnreachable)
        finally:
            server.close()
            await server.wait_closed()

        # A server that accepts and never answers: unreachable within the timeout.
        silent_path = tmp_path / "silent.sock"
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        silent.bind(str(silent_path))
        silent.listen(8)
        try:
            with pytest.raises(HostUnreachable) as caught_slow:
                await DockerDriver(f"unix://{silent_path}", timeout=0.5).ping()
            assert isinstance(caught_slow.value.__cause__, TimeoutError)
        finally:
            silent.close()

    asyncio.run(run())
