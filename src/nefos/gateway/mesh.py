"""The port mesh: Nefos listens on containers' fixed host ports and balances each
connection over the container's routable replicas (Docker Swarm's routing mesh, on
the hosts Nefos can listen on: ``services.endpoints.meshable``).

One process listens at a time: the holder of the ``port-mesh`` lease
(``nefos.bootstrap``). On each pass (``NEFOS_PORT_MESH_INTERVAL``) it reads the
table of meshed ports from the database (``services.endpoints.mesh_table``) and makes
its listeners agree: a port opens once its container has a routable replica, takes
each pass's instance list, and closes when the container (or its fixed port) is gone.
Losing the lease closes every listener and the connections they carry.

Each connection is a plain TCP relay with asyncio streams: the first instance not
known down that accepts the connection gets it (round-robin; an instance that refuses
is left out for ``DOWN_SECONDS`` and the next one is tried, as nothing has been sent
yet). At most ``NEFOS_PORT_MESH_MAX_CONNECTIONS`` per port at once (more are closed
at once); a connection silent both ways for ``NEFOS_PORT_MESH_IDLE_TIMEOUT`` is
closed. The mesh only ever connects to the addresses Nefos recorded for the
container's replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from nefos.config import Settings
from nefos.db.session import Database
from nefos.services.endpoints import MeshPort, Upstream, mesh_table

log = logging.getLogger("nefos.mesh")

DOWN_SECONDS = 10.0
CONNECT_TIMEOUT = 5.0
CHUNK = 64 * 1024


@dataclass
class PortStats:
    service_id: str
    host_port: int
    active: int
    refused: int
    connections: dict[str, int] = field(default_factory=dict)


class _Listener:
    def __init__(self, mesh: PortMesh, port: MeshPort) -> None:
        self.mesh = mesh
        self.service_id = port.service_id
        self.host_port = port.host_port
        self.upstreams: tuple[Upstream, ...] = port.upstreams
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.down: dict[Upstream, float] = {}
        self.turn = itertools.count()
        self.connections: dict[str, int] = {}
        self.refused = 0

    async def open(self, address: str) -> None:
        self.server = await asyncio.start_server(
            self._serve, host=address, port=self.host_port, reuse_address=True
        )

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self.server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 5)
            self.server = None

    def stats(self) -> PortStats:
        return PortStats(
            self.service_id, self.host_port, len(self.tasks), self.refused, dict(self.connections)
        )

    def _order(self) -> list[Upstream]:
        """The instances to try, in turn: round-robin, those known down left out."""
        now = time.monotonic()
        alive = [u for u in self.upstreams if self.down.get(u, 0.0) <= now]
        if not alive:
            return []
        start = next(self.turn) % len(alive)
        return alive[start:] + alive[:start]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self.tasks) >= self.mesh.settings.port_mesh_max_connections:
            self.refused += 1
            writer.close()
            return
        self.tasks.add(task)
        try:
            await self._relay(reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.debug("port %d: a connection failed", self.host_port, exc_info=True)
        finally:
            self.tasks.discard(task)
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for up in self._order():
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection(up.address, up.port), CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError):
                self.down[up] = time.monotonic() + DOWN_SECONDS
                continue
            self.connections[up.instance_id] = self.connections.get(up.instance_id, 0) + 1
            break
        if upstream is None:
            self.refused += 1
            return
        up_reader, up_writer = upstream
        idle = self.mesh.settings.port_mesh_idle_timeout
        last = [time.monotonic()]
        try:
            await asyncio.gather(
                _pump(reader, up_writer, last, idle), _pump(up_reader, writer, last, idle)
            )
        finally:
            up_writer.close()


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, last: list[float], idle: float
) -> None:
    """Copy until EOF (then half-close the other side), or until both directions have
    been silent for ``idle`` seconds."""
    try:
        while True:
            try:
                data = await asyncio.wait_for(reader.read(CHUNK), idle)
            except TimeoutError:
                if time.monotonic() - last[0] >= idle:
                    writer.close()
                    return
                continue
            if not data:
                if writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                return
            last[0] = time.monotonic()
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        writer.close()


class PortMesh:
    """Every listener of this process; ``sync`` is the lease's pass, ``start``/``stop``
    its service (``operations.leases.Service``)."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.listeners: dict[int, _Listener] = {}
        #: Ports that could not be opened, and why (the next pass tries again).
        self.errors: dict[int, str] = {}
        self._lock = asyncio.Lock()

    def start(self) -> None:
        """Nothing to do: the first pass opens the ports."""

    async def stop(self) -> None:
        async with self._lock:
            listeners, self.listeners = list(self.listeners.values()), {}
            for listener in listeners:
                await listener.close()

    async def sync(self) -> None:
        async with self.db.sessionmaker() as session:
            table = await mesh_table(session)
        async with self._lock:
            await self._apply(table)

    async def _apply(self, table: Sequence[MeshPort]) -> None:
        wanted: dict[int, MeshPort] = {}
        for port in table:
            held = wanted.get(port.host_port)
            if held is not None and held.service_id != port.service_id:
                # Two containers name one fixed port (made before the check at create):
                # the port stays with the one that has it.
                current = self.listeners.get(port.host_port)
                if current is not None and current.service_id == port.service_id:
                    wanted[port.host_port] = port
                continue
            wanted[port.host_port] = port
        for host_port in list(self.listeners):
            old = self.listeners[host_port]
            keep = wanted.get(host_port)
            if keep is None or keep.service_id != old.service_id:
                del self.listeners[host_port]
                await old.close()
                log.info("port mesh: port %d closed", host_port)
        address = self.settings.container_publish_ip
        for host_port, port in wanted.items():
            current = self.listeners.get(host_port)
            if current is not None:
                current.upstreams = port.upstreams
                continue
            if not port.upstreams:
                continue  # opened with the container's first routable replica
            listener = _Listener(self, port)
            try:
                await listener.open(address)
            except OSError as exc:
                if self.errors.get(host_port) != str(exc):
                    log.warning("port mesh: cannot listen on %s:%d: %s", address, host_port, exc)
                self.errors[host_port] = str(exc)
                continue
            self.errors.pop(host_port, None)
            self.listeners[host_port] = listener
            log.info("port mesh: listening on %s:%d", address, host_port)
        for host_port in list(self.errors):
            if host_port not in wanted:
                del self.errors[host_port]

    def stats(self) -> dict[int, PortStats]:
        return {port: listener.stats() for port, listener in self.listeners.items()}
