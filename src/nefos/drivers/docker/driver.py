"""Containers on a Docker Engine API (Docker itself, or ``podman system service``).

The docker SDK is blocking; every call runs in a worker thread. Each container is
hardened the same way, whatever the spec says: not privileged, every Linux
capability dropped, ``no-new-privileges``, no mounts of the host (no binds, no
engine socket), cpu/memory/pids limits, and restart policy ``no`` because Nefos's
reconciler, not the engine, decides what runs. The engine name of a container is
``nefos-<nefos_id>``, so one Nefos instance has at most one container per host.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import contextvars
import functools
import json
import shutil
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import docker
import docker.errors
import docker.utils.socket
import requests.adapters
import requests.exceptions

from nefos.domain.image_refs import BadReference, parse_image_reference, registry_listed
from nefos.drivers.base import (
    LABEL_ID,
    LABEL_MANAGED,
    LABEL_PROJECT,
    Capabilities,
    ComputeDriver,
    DriverError,
    ExecResult,
    HostCapacity,
    HostUnreachable,
    HostUsage,
    ImageNotFound,
    ImagePullRefused,
    InstanceCounters,
    InstanceInfo,
    InstanceKind,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
    InstanceStats,
    InsufficientCapacity,
    InvalidSpec,
    InvalidState,
    Protocol,
    PublishedPort,
    Shell,
    Unsupported,
)
from nefos.security.addresses import (
    UnsafeTarget,
    check_address,
    parse_networks,
    resolve_blocking,
)

T = TypeVar("T")

#: Engine API version we speak. Pinned, so building a client does not call the
#: engine (the SDK's "auto" asks the server) and a dead host fails on first use.
API_VERSION = "1.41"
#: Bytes of a terminal's output read at once.
SHELL_CHUNK = 64 * 1024
LABEL_NAME = "nefos.name"

_STATES = {
    "created": InstanceState.CREATED,
    "configured": InstanceState.CREATED,
    "running": InstanceState.RUNNING,
    "restarting": InstanceState.RUNNING,
    "paused": InstanceState.PAUSED,
    "exited": InstanceState.STOPPED,
    "stopped": InstanceState.STOPPED,
    "removing": InstanceState.STOPPED,
    "dead": InstanceState.ERROR,
}

_PORT_TAKEN = ("port is already allocated", "address already in use", "bind: address")


def container_name(nefos_id: str) -> str:
    return f"nefos-{nefos_id}"


@contextmanager
def _translated(instance_id: str | None = None, *, creating: bool = False) -> Iterator[None]:
    """Re-raise the SDK's and requests' errors as the driver error tree."""
    try:
        yield
    except DriverError:
        raise
    except docker.errors.ImageNotFound as exc:
        raise ImageNotFound(_explain(exc), instance_id=instance_id) from exc
    except docker.errors.NotFound as exc:
        if creating:
            raise ImageNotFound(_explain(exc), instance_id=instance_id) from exc
        raise InstanceNotFound(_explain(exc), instance_id=instance_id) from exc
    except docker.errors.APIError as exc:
        message = _explain(exc)
        if any(s in message.lower() for s in _PORT_TAKEN):
            raise InsufficientCapacity(message, instance_id=instance_id) from exc
        if creating and "already in use" in message.lower():
            # Docker says 409, Podman 500: either way the name belongs to another
            # container, which create's clean-up must not touch.
            raise InvalidSpec(message, instance_id=instance_id) from exc
        if exc.status_code == 409:
            kind = InvalidSpec if creating else InvalidState
            raise kind(message, instance_id=instance_id) from exc
        if exc.status_code == 400:
            raise InvalidSpec(message, instance_id=instance_id) from exc
        raise DriverError(message, instance_id=instance_id) from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        _release_sockets(exc)
        slow = isinstance(exc, requests.exceptions.Timeout)
        raise HostUnreachable(f"container engine unreachable: {exc}", slow=slow) from exc
    except docker.errors.DockerException as exc:
        # The SDK wraps connection failures it meets while building a request.
        if "connection" in str(exc).lower():
            _release_sockets(exc)
            raise HostUnreachable(f"container engine unreachable: {exc}") from exc
        raise DriverError(str(exc), instance_id=instance_id) from exc


def _release_sockets(exc: BaseException) -> None:
    """Close the socket of a failed connection attempt, and drop its frames.

    docker-py's unix-socket ``connect()`` does not close the socket it made when
    connecting fails; the socket lives on in the traceback's frames (and this
    error's ``__cause__``). Left to the garbage collector it is closed with a
    ResourceWarning, so it is closed here, then the frames are cleared.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        tb = cur.__traceback__
        while tb is not None:
            for value in list(tb.tb_frame.f_locals.values()):
                if isinstance(value, socket.socket):
                    value.close()
            tb = tb.tb_next
        traceback.clear_frames(cur.__traceback__)
        cur = cur.__cause__ or cur.__context__


def _explain(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)


def _parse_ports(raw: Mapping[str, Any] | None) -> tuple[PublishedPort, ...]:
    """``NetworkSettings.Ports`` of an inspect: {"8080/tcp": [{"HostIp", "HostPort"}]}."""
    found = []
    for key, bindings in (raw or {}).items():
        port, _, proto = key.partition("/")
        for b in bindings or ():
            if b.get("HostPort"):
                found.append(
                    PublishedPort(
                        container_port=int(port),
                        protocol=_protocol(proto),
                        host_ip=b.get("HostIp") or "0.0.0.0",  # noqa: S104 - reported, not bound
                        host_port=int(b["HostPort"]),
                    )
                )
    return tuple(sorted(found, key=lambda p: (p.container_port, p.protocol, p.host_ip)))


def _protocol(raw: str | None) -> Protocol:
    return "udp" if raw == "udp" else "tcp"


def _info_from_inspect(attrs: Mapping[str, Any]) -> InstanceInfo:
    labels = dict((attrs.get("Config") or {}).get("Labels") or {})
    status = str((attrs.get("State") or {}).get("Status", "")).lower()
    return InstanceInfo(
        driver_id=str(attrs["Id"]),
        nefos_id=labels.get(LABEL_ID),
        project_id=labels.get(LABEL_PROJECT),
        name=labels.get(LABEL_NAME) or str(attrs.get("Name", "")).lstrip("/"),
        image=str((attrs.get("Config") or {}).get("Image") or attrs.get("Image", "")),
        state=_STATES.get(status, InstanceState.ERROR),
        ports=_parse_ports((attrs.get("NetworkSettings") or {}).get("Ports")),
        labels=labels,
    )


def _info_from_listing(row: Mapping[str, Any]) -> InstanceInfo:
    labels = dict(row.get("Labels") or {})
    ports = [
        PublishedPort(
            container_port=int(p["PrivatePort"]),
            protocol=_protocol(p.get("Type")),
            host_ip=p.get("IP") or "0.0.0.0",  # noqa: S104 - reported, not bound
            host_port=int(p["PublicPort"]),
        )
        for p in row.get("Ports") or ()
        if p.get("PublicPort")
    ]
    names = row.get("Names") or [""]
    return InstanceInfo(
        driver_id=str(row["Id"]),
        nefos_id=labels.get(LABEL_ID),
        project_id=labels.get(LABEL_PROJECT),
        name=labels.get(LABEL_NAME) or str(names[0]).lstrip("/"),
        image=str(row.get("Image", "")),
        state=_STATES.get(str(row.get("State", "")).lower(), InstanceState.ERROR),
        ports=tuple(sorted(ports, key=lambda p: (p.container_port, p.protocol, p.host_ip))),
        labels=labels,
    )


class DockerDriver(ComputeDriver):
    """A :class:`ComputeDriver` for one Docker Engine API endpoint."""

    name = "docker"

    _CAPABILITIES = Capabilities(
        kind=InstanceKind.CONTAINER,
        supports_ports=True,
        supports_stats=True,
        supports_logs=True,
        supports_log_times=True,
        supports_exec=True,
        supports_shell=True,
    )

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30,
        pull: bool = False,
        registries: Sequence[str] | None = None,
        registry_networks: Sequence[str] = (),
        threads: int = 16,
    ) -> None:
        """``threads``: how many engine calls of this host run at once (the SDK blocks), in
        threads of the driver's own; more wait for one. Not the loop's default
        executor: that one has a handful of threads for the whole process, which one
        host's slow calls (a stop's grace, a large pull, a stats sample) could all
        hold, and every other host's calls, and every other blocking call of the
        process, would wait behind them.

        ``pull``: fetch an image the host lacks from its registries on create (off by
        default: a missing image is then ``ImageNotFound`` at once).
        ``registries``: the only registries a pull may use (None: any); whichever, the
        registry's host must resolve to public addresses or into ``registry_networks``
        (the address guard of webhooks), else :class:`ImagePullRefused`."""
        self.base_url = base_url
        self.pull = pull
        self.registries = None if registries is None else list(registries)
        self.registry_networks = parse_networks(
            registry_networks, setting="container_registry_allowed_networks"
        )
        self.timeout = timeout
        self.threads = threads
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nefos-engine")
        self._client: docker.DockerClient | None = None
        if not base_url.startswith("ssh://"):
            self._connect()
        # ssh:// connects when the client is made: that happens on first use, in the
        # worker thread, so a dead host is HostUnreachable there, never a blocked loop.

    def _connect(self) -> docker.DockerClient:
        if self._client is None:
            try:
                # As many connections kept as threads may use at once.
                self._client = docker.DockerClient(
                    base_url=self.base_url,
                    version=API_VERSION,
                    timeout=self.timeout,
                    max_pool_size=self.threads,
                )
                if urlsplit(self.base_url).scheme in ("tcp", "http"):
                    self._client.api.mount(
                        "http://", requests.adapters.HTTPAdapter(pool_maxsize=self.threads)
                    )
            except docker.errors.DockerException:
                raise  # a malformed URL: the caller's InvalidSpec
            except Exception as exc:  # paramiko's connection errors
                raise HostUnreachable(f"container engine unreachable: {exc}") from exc
        return self._client

    @property
    def _api(self) -> Any:
        return self._connect().api

    @property
    def capabilities(self) -> Capabilities:
        return self._CAPABILITIES

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        try:
            future = asyncio.get_running_loop().run_in_executor(self._threads, call)
        except RuntimeError as exc:  # closed: its host was removed while a call came
            raise HostUnreachable("the host's driver is closed (the host was removed)") from exc
        return await future

    # --- host -------------------------------------------------------------------------
    async def ping(self) -> None:
        """``GET /_ping`` on a connection of its own, on the event loop (an ``ssh://``
        engine: through the SDK, in a thread). Not through the driver's threads where
        it can be helped: the host's long calls (a stop's grace, a create, a pull) may
        all hold them, and a ping waiting for one would time a queue of this process,
        not the engine."""
        if urlsplit(self.base_url).scheme not in ("unix", "tcp", "http"):
            await self._run(self._ping)
            return
        reader, writer = await self._engine_stream("")
        try:
            writer.write(
                f"GET /v{API_VERSION}/_ping HTTP/1.1\r\nHost: docker\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout)
        except (
            OSError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as exc:
            slow = isinstance(exc, TimeoutError)
            raise HostUnreachable(f"container engine unreachable: {exc!r}", slow=slow) from exc
        finally:
            writer.close()
        status_line = head.split(b"\r\n", 1)[0]
        if status_line.split(b" ", 2)[1:2] != [b"200"]:
            raise DriverError(f"the engine answered its ping with {status_line!r}")

    def _ping(self) -> None:
        with _translated():
            self._api.ping()

    async def capacity(self) -> HostCapacity:
        return await self._run(self._capacity)

    def _capacity(self) -> HostCapacity:
        with _translated():
            info = self._api.info()
        disk_gb = None
        root = info.get("DockerRootDir")
        # The engine does not report its disk; on a local socket we can look.
        if self.base_url.startswith("unix://") and root and Path(root).exists():
            disk_gb = shutil.disk_usage(root).total // 1024**3
        return HostCapacity(
            cpus=int(info["NCPU"]), memory_mb=int(info["MemTotal"]) // 1024**2, disk_gb=disk_gb
        )

    # --- lifecycle --------------------------------------------------------------------
    async def create(self, spec: InstanceSpec) -> InstanceInfo:
        return await self._run(self._create, spec)

    def _create(self, spec: InstanceSpec) -> InstanceInfo:
        name = container_name(spec.nefos_id)
        self._ensure_image(spec.image)
        ports: dict[str, tuple[str] | tuple[str, int]] = {}
        for p in spec.ports:
            key = f"{p.container_port}/{p.protocol}"
            # "All interfaces" is an empty HostIp: Podman's compat API publishes an
            # explicit "0.0.0.0" binding that accepts connections but never forwards them.
            ip = "" if p.host_ip == "0.0.0.0" else p.host_ip  # noqa: S104
            ports[key] = (ip, p.host_port) if p.host_port else (ip,)
        host_config = self._api.create_host_config(
            privileged=False,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            binds=None,
            port_bindings=ports or None,
            nano_cpus=int(spec.cpu * 1e9),
            mem_limit=spec.memory_mb * 1024**2,
            # Same as the memory limit: no swap on top of it.
            memswap_limit=spec.memory_mb * 1024**2,
            pids_limit=spec.pids_limit,
            restart_policy={"Name": "no"},
            init=True,
        )
        try:
            with _translated(creating=True):
                created = self._api.create_container(
                    image=spec.image,
                    command=list(spec.command) if spec.command is not None else None,
                    name=name,
                    environment=dict(spec.env),
                    labels={**spec.all_labels(), LABEL_NAME: spec.name},
                    ports=[(p.container_port, p.protocol) for p in spec.ports] or None,
                    host_config=host_config,
                    detach=True,
                )
            return self._get(str(created["Id"]))
        except DriverError as exc:
            if isinstance(exc, ImageNotFound) and exc.image is None:
                exc.image = spec.image
            # A name clash is someone else's container: leave it alone.
            if not (isinstance(exc, InvalidSpec) and "already in use" in exc.message):
                self._remove_quietly(name)
            raise
        except BaseException:
            self._remove_quietly(name)
            raise

    async def has_image(self, image: str) -> bool:
        return await self._run(self._has_image, image)

    def _has_image(self, image: str) -> bool:
        try:
            with _translated(creating=True):
                self._api.inspect_image(image)
        except ImageNotFound:
            return False
        return True

    def _vet_pull(self, image: str) -> None:
        """ImagePullRefused unless pulling ``image`` is allowed: a listed registry whose
        host resolves only to allowed addresses. Nothing is connected to.

        The engine resolves the name again when it pulls and cannot be pinned to the
        address checked here: a DNS answer that changes in between (rebinding) is
        the residual risk (docs/security.md)."""

        def refuse(reason: str) -> ImagePullRefused:
            return ImagePullRefused(
                f"image {image!r} is not on the host and could not be pulled: "
                f"refused before pulling: {reason}",
                image=image,
            )

        try:
            ref = parse_image_reference(image)
        except BadReference as exc:
            raise refuse(str(exc)) from None
        if self.registries is not None and not registry_listed(ref, self.registries):
            raise refuse(f"the registry {ref.registry!r} is not in container_registries")
        try:
            for ip in resolve_blocking(ref.endpoint_host, ref.port):
                check_address(
                    ip,
                    self.registry_networks,
                    what="image pulls",
                    setting="container_registry_allowed_networks",
                )
        except UnsafeTarget as exc:
            raise refuse(f"registry {ref.registry!r}: {exc}") from None

    def _ensure_image(self, image: str) -> None:
        """The image is on the host, or (with ``pull``, from an allowed registry) is
        pulled; else ImageNotFound."""
        if self._has_image(image):
            return
        if not self.pull:
            raise ImageNotFound(f"image {image!r} is not on the host (pulling is off)", image=image)
        self._vet_pull(image)
        repository, tag = docker.utils.parse_repository_tag(image)
        with _translated(creating=True):
            # The engine streams progress and reports a failed pull inside the
            # stream, not as an HTTP error: the inspect afterwards is the verdict.
            output = self._api.pull(repository, tag=tag or "latest")
        try:
            with _translated(creating=True):
                self._api.inspect_image(image)
        except ImageNotFound as exc:
            reason = str(output).strip().splitlines()[-1:] or [""]
            raise ImageNotFound(
                f"image {image!r} is not on the host and could not be pulled: {reason[0][:300]}",
                image=image,
            ) from exc

    def _remove_quietly(self, name: str) -> None:
        try:
            self._destroy(name)
        except DriverError:
            pass  # the original error matters more; the reconciler finds leftovers

    async def start(self, instance_id: str) -> InstanceInfo:
        return await self._run(self._start, instance_id)

    def _start(self, instance_id: str) -> InstanceInfo:
        with _translated(instance_id):
            self._api.start(instance_id)
        return self._get(instance_id)

    async def stop(self, instance_id: str, *, grace_seconds: float = 10) -> InstanceInfo:
        return await self._run(self._stop, instance_id, grace_seconds)

    def _stop(self, instance_id: str, grace_seconds: float) -> InstanceInfo:
        with _translated(instance_id):
            self._api.stop(instance_id, timeout=max(0, round(grace_seconds)))
        return self._get(instance_id)

    async def destroy(self, instance_id: str) -> None:
        await self._run(self._destroy, instance_id)

    def _destroy(self, instance_id: str) -> None:
        try:
            with _translated(instance_id):
                self._api.remove_container(instance_id, v=True, force=True)
        except InstanceNotFound:
            return
        except DriverError as exc:
            # Podman answers a missing container with 500 on some versions.
            if "no such container" in exc.message.lower():
                return
            raise

    # --- inspection -------------------------------------------------------------------
    async def get(self, instance_id: str) -> InstanceInfo:
        return await self._run(self._get, instance_id)

    def _get(self, instance_id: str) -> InstanceInfo:
        with _translated(instance_id):
            return _info_from_inspect(self._api.inspect_container(instance_id))

    async def list(self, labels: Mapping[str, str] | None = None) -> list[InstanceInfo]:
        return await self._run(self._list, dict(labels or {}))

    def _list(self, labels: dict[str, str]) -> builtins.list[InstanceInfo]:
        wanted = {**labels, LABEL_MANAGED: "true"}
        with _translated():
            rows = self._api.containers(
                all=True, filters={"label": [f"{k}={v}" for k, v in wanted.items()]}
            )
        return [_info_from_listing(row) for row in rows]

    async def stats(self, instance_id: str) -> InstanceStats:
        return await self._run(self._stats, instance_id)

    def _stats(self, instance_id: str) -> InstanceStats:
        with _translated(instance_id):
            attrs = self._api.inspect_container(instance_id)
            limit = int((attrs.get("HostConfig") or {}).get("Memory") or 0)
            if not (attrs.get("State") or {}).get("Running"):
                return InstanceStats(0.0, 0, limit, 0.0, 0, 0)
            raw = self._api.stats(instance_id, stream=False)
        return _parse_stats(raw, limit)

    async def counters(self, instance_ids: Sequence[str]) -> dict[str, InstanceCounters]:
        reads = await asyncio.gather(
            *(self._run(self._counters, i) for i in instance_ids), return_exceptions=True
        )
        out: dict[str, InstanceCounters] = {}
        for instance_id, read in zip(instance_ids, reads, strict=True):
            if isinstance(read, InstanceNotFound):
                continue
            if isinstance(read, BaseException):
                raise read
            out[instance_id] = read
        return out

    def _counters(self, instance_id: str) -> InstanceCounters:
        with _translated(instance_id):
            attrs = self._api.inspect_container(instance_id)
            host_config = attrs.get("HostConfig") or {}
            limit = int(host_config.get("Memory") or 0)
            cpus = int(host_config.get("NanoCpus") or 0) / 1e9
            if not cpus and int(host_config.get("CpuQuota") or 0) > 0:
                cpus = int(host_config["CpuQuota"]) / int(host_config.get("CpuPeriod") or 100_000)
            if not (attrs.get("State") or {}).get("Running"):
                return InstanceCounters(
                    False, 0, cpus or 1.0, 0, limit, 0, 0, 0, 0, time.monotonic()
                )
            # one_shot: the counters now, without the engine's second sample a second later.
            raw = self._api.stats(instance_id, stream=False, one_shot=True)
        return _parse_counters(raw, limit, cpus, time.monotonic())

    async def host_usage(self) -> HostUsage | None:
        return await self._run(self._host_usage)

    def _host_usage(self) -> HostUsage | None:
        # The Engine API reports no host usage; Podman's own API reports memory.
        with _translated():
            answer = self._api.get(self._api.base_url + "/v4.0.0/libpod/info")
        try:
            info = answer.json() if answer.status_code == 200 else None
        except ValueError:
            info = None
        host = info.get("host") if isinstance(info, dict) else None
        if not isinstance(host, dict) or not host.get("memTotal"):
            return None  # Docker itself: no such endpoint
        total = int(host["memTotal"])
        return HostUsage(
            cpu_busy_ns=None,
            cpu_total_ns=None,
            memory_used_bytes=max(total - int(host.get("memFree") or 0), 0),
            memory_total_bytes=total,
            read_at=time.monotonic(),
        )

    async def logs(
        self,
        instance_id: str,
        *,
        tail: int = 100,
        since: datetime | None = None,
        until: datetime | None = None,
        timestamps: bool = False,
    ) -> str:
        return await self._run(self._logs, instance_id, tail, since, until, timestamps)

    def _logs(
        self,
        instance_id: str,
        tail: int,
        since: datetime | None,
        until: datetime | None,
        timestamps: bool,
    ) -> str:
        # The engine takes times as (fractional) seconds since the epoch.
        window: dict[str, float] = {}
        if since is not None:
            window["since"] = since.timestamp()
        if until is not None:
            window["until"] = until.timestamp()
        with _translated(instance_id):
            out = self._api.logs(
                instance_id, stdout=True, stderr=True, tail=tail, timestamps=timestamps, **window
            )
        return bytes(out).decode("utf-8", errors="replace")

    async def exec(
        self,
        instance_id: str,
        command: Sequence[str],
        *,
        deadline: float | None = None,
        output_limit: int = 4096,
    ) -> ExecResult:
        return await self._run(self._exec, instance_id, list(command), deadline, output_limit)

    def _exec(
        self,
        instance_id: str,
        command: builtins.list[str],
        deadline: float | None,
        output_limit: int,
    ) -> ExecResult:
        with _translated(instance_id):
            created = self._api.exec_create(instance_id, command, stdout=True, stderr=True)
            # The raw socket, closed here: the SDK's streamed answer leaves its socket
            # open. Frames are read to the end (the exec's end), only the start kept.
            sock = self._api.exec_start(created["Id"], socket=True)
            raw = getattr(sock, "_sock", None)  # the SocketIO's own socket
            if raw is not None:
                raw.settimeout(deadline)
            ends = None if deadline is None else time.monotonic() + deadline
            kept = bytearray()
            try:
                for _, chunk in docker.utils.socket.frames_iter(sock, tty=False):
                    if len(kept) < output_limit:
                        kept += chunk[: output_limit - len(kept)]
                    if ends is not None and time.monotonic() > ends:
                        raise TimeoutError  # a command that never stops talking
            except TimeoutError as exc:
                raise DriverError(
                    f"the command did not end within {deadline:g} s", instance_id=instance_id
                ) from exc
            finally:
                sock.close()
                if raw is not None:
                    raw.close()
            code = self._api.exec_inspect(created["Id"]).get("ExitCode")
        return ExecResult(
            exit_code=int(code) if code is not None else -1,
            output=bytes(kept).decode("utf-8", errors="replace"),
        )

    # --- interactive terminals ---------------------------------------------------------
    async def open_shell(
        self, instance_id: str, command: Sequence[str], *, cols: int = 80, rows: int = 24
    ) -> Shell:
        exec_id = await self._run(self._shell_create, instance_id, list(command))
        reader, writer = await self._engine_stream(instance_id)
        try:
            # The Engine API's hijack: the answer's headers, then the terminal's raw
            # bytes both ways on the same connection (read here, so no byte of the
            # first output is left in an HTTP client's buffer).
            body = json.dumps({"Detach": False, "Tty": True}).encode()
            writer.write(
                (
                    f"POST /v{API_VERSION}/exec/{exec_id}/start HTTP/1.1\r\n"
                    "Host: docker\r\nContent-Type: application/json\r\n"
                    "Connection: Upgrade\r\nUpgrade: tcp\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout)
            status_line = head.split(b"\r\n", 1)[0]
            if status_line.split(b" ", 2)[1:2] not in ([b"101"], [b"200"]):
                raise DriverError(
                    f"the engine refused the terminal: {status_line!r}", instance_id=instance_id
                )
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            writer.close()
            raise HostUnreachable(f"container engine unreachable: {exc}") from exc
        except BaseException:
            writer.close()
            raise
        shell = _DockerShell(self, instance_id, exec_id, reader, writer)
        await shell.resize(cols, rows)
        return shell

    def _shell_create(self, instance_id: str, command: builtins.list[str]) -> str:
        with _translated(instance_id):
            created = self._api.exec_create(
                instance_id, command, stdin=True, tty=True, stdout=True, stderr=True
            )
        return str(created["Id"])

    async def _engine_stream(
        self, instance_id: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection of its own to the engine (a unix socket, or plain TCP)."""
        url = urlsplit(self.base_url)
        try:
            if url.scheme == "unix":
                return await asyncio.wait_for(asyncio.open_unix_connection(url.path), self.timeout)
            if url.scheme in ("tcp", "http") and url.hostname:
                return await asyncio.wait_for(
                    asyncio.open_connection(url.hostname, url.port or 2375), self.timeout
                )
        except (OSError, TimeoutError) as exc:
            slow = isinstance(exc, TimeoutError)
            raise HostUnreachable(f"container engine unreachable: {exc!r}", slow=slow) from exc
        raise Unsupported(
            f"interactive terminals need an engine reached by unix:// or tcp://, not "
            f"{url.scheme}://",
            instance_id=instance_id,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._run(self._client.close)
        # Calls already queued still run (their callers await them); no new one starts.
        self._threads.shutdown(wait=False)


def _parse_stats(raw: Mapping[str, Any], configured_limit: int) -> InstanceStats:
    """One Engine API stats sample -> InstanceStats, computed as `docker stats` does."""
    cpu = raw.get("cpu_stats") or {}
    pre = raw.get("precpu_stats") or {}
    cpu_delta = _int(cpu, "cpu_usage", "total_usage") - _int(pre, "cpu_usage", "total_usage")
    sys_delta = int(cpu.get("system_cpu_usage") or 0) - int(pre.get("system_cpu_usage") or 0)
    online = int(cpu.get("online_cpus") or 0) or len(
        (cpu.get("cpu_usage") or {}).get("percpu_usage") or ()
    )
    cpu_percent = (cpu_delta / sys_delta) * max(online, 1) * 100.0 if sys_delta > 0 else 0.0

    mem = raw.get("memory_stats") or {}
    usage = int(mem.get("usage") or 0)
    # Page cache is reclaimable: `docker stats` leaves it out, so do we.
    cache = int((mem.get("stats") or {}).get("inactive_file") or 0)
    used = max(usage - cache, 0)
    limit = int(mem.get("limit") or 0) or configured_limit
    rx = tx = 0
    for net in (raw.get("networks") or {}).values():
        rx += int(net.get("rx_bytes") or 0)
        tx += int(net.get("tx_bytes") or 0)
    return InstanceStats(
        cpu_percent=max(cpu_percent, 0.0),
        memory_bytes=used,
        memory_limit_bytes=limit,
        memory_percent=(used / limit * 100.0) if limit else 0.0,
        net_rx_bytes=rx,
        net_tx_bytes=tx,
    )


def _parse_counters(
    raw: Mapping[str, Any], configured_limit: int, cpus: float, read_at: float
) -> InstanceCounters:
    """One Engine API stats sample -> cumulative counters (memory as `docker stats`)."""
    cpu = raw.get("cpu_stats") or {}
    online = int(cpu.get("online_cpus") or 0) or len(
        (cpu.get("cpu_usage") or {}).get("percpu_usage") or ()
    )
    stats = _parse_stats(raw, configured_limit)
    read = write = 0
    for row in (raw.get("blkio_stats") or {}).get("io_service_bytes_recursive") or ():
        op = str(row.get("op") or "").lower()
        if op == "read":
            read += int(row.get("value") or 0)
        elif op == "write":
            write += int(row.get("value") or 0)
    return InstanceCounters(
        running=True,
        cpu_time_ns=_int(cpu, "cpu_usage", "total_usage"),
        cpus=cpus or float(max(online, 1)),
        memory_bytes=stats.memory_bytes,
        memory_limit_bytes=stats.memory_limit_bytes,
        net_rx_bytes=stats.net_rx_bytes,
        net_tx_bytes=stats.net_tx_bytes,
        disk_read_bytes=read,
        disk_write_bytes=write,
        read_at=read_at,
    )


def _int(d: Mapping[str, Any], *path: str) -> int:
    cur: Any = d
    for key in path:
        cur = (cur or {}).get(key)
    return int(cur or 0)


class _DockerShell(Shell):
    """An exec with a terminal, on its hijacked Engine API connection."""

    def __init__(
        self,
        driver: DockerDriver,
        instance_id: str,
        exec_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._driver = driver
        self._instance_id = instance_id
        self._exec_id = exec_id
        self._reader = reader
        self._writer = writer

    async def read(self) -> bytes:
        try:
            return await self._reader.read(SHELL_CHUNK)
        except OSError:
            return b""

    async def write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise InvalidState("the terminal is closed", instance_id=self._instance_id)
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            raise InvalidState(
                f"the terminal is closed: {exc}", instance_id=self._instance_id
            ) from exc

    async def resize(self, cols: int, rows: int) -> None:
        def resize() -> None:
            with contextlib.suppress(docker.errors.APIError):
                # An exec that ended, or not started yet: nothing to size.
                self._driver._api.exec_resize(self._exec_id, height=rows, width=cols)

        with _translated(self._instance_id):
            await self._driver._run(resize)

    async def exit_code(self) -> int | None:
        def inspect() -> int | None:
            with _translated(self._instance_id):
                info = self._driver._api.exec_inspect(self._exec_id)
            if info.get("Running"):
                return None
            code = info.get("ExitCode")
            return int(code) if code is not None else None

        try:
            return await self._driver._run(inspect)
        except DriverError:
            return None

    async def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
