"""The compute driver contract: what every driver (docker, libvirt, sim) promises.

A driver turns an :class:`InstanceSpec` into a running instance on one host and
reports on it. It knows nothing of tenants, quotas, the database or HTTP: the
services layer decides *what* should exist, records it, and calls a driver to make
the host agree; the reconciler compares :meth:`ComputeDriver.list` with the
database to find orphans and lost instances.

Identity. Every instance a driver makes carries the labels (or metadata)
``nefos.id``, ``nefos.project`` and ``nefos.managed=true``, plus the spec's own
labels. ``driver_id`` is the host's own name for the instance (a container id, a
domain UUID); every method that takes an ``instance_id`` accepts the driver id.

Calling. The methods are ``async``; drivers around blocking libraries run them in
threads of their own (the Docker driver: a pool per host, ``NEFOS_ENGINE_THREADS``;
libvirt: a thread a call), so services await them directly. A
call may block for as long as the host takes (an image to unpack, a stop
timeout), so services call drivers from operations, not from request handlers.

Capabilities. What a driver can do is data (:class:`Capabilities`), read by the
caller before it calls; a method a driver does not support raises
:class:`Unsupported`, which a caller that checked never sees.

Errors. Drivers raise only :class:`DriverError` subclasses, wrapping the library's
own error with ``raise ... from exc``. Each carries the wire ``code`` of the
domain error the services layer should raise in its place; its ``message`` is the
engine's own text, for logs and platform admins only (the services layer's
``domain_error`` gives tenants a plain one)::

    DriverError           INTERNAL_ERROR       anything else the host refused
    ├── HostUnreachable   SERVICE_UNAVAILABLE  the engine/hypervisor does not answer
    ├── InstanceNotFound  NOT_FOUND            no such instance on this host
    ├── ImageNotFound     IMAGE_PULL_FAILED    the image is not on the host, nor pulled
    │   └── ImagePullRefused                   a pull Nefos refused (registry, address)
    ├── InvalidSpec       VALIDATION_ERROR     the host rejects the spec itself
    ├── InsufficientCapacity RESOURCE_EXHAUSTED the host has no room (port, memory)
    ├── InvalidState      CONFLICT             the instance cannot do that now
    └── Unsupported       INTERNAL_ERROR       not in this driver's Capabilities
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Literal

#: Labels every Nefos-made instance carries.
LABEL_ID = "nefos.id"
LABEL_PROJECT = "nefos.project"
LABEL_MANAGED = "nefos.managed"

Protocol = Literal["tcp", "udp"]


# --- errors ---------------------------------------------------------------------------
class DriverError(Exception):
    """A driver call failed. ``code`` names the domain error services map it to."""

    code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(self, message: str, *, instance_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.instance_id = instance_id


class HostUnreachable(DriverError):
    """The engine or hypervisor did not answer (down, socket gone, timed out).
    ``slow``: it did not answer in time (rather than refused or went away)."""

    code = "SERVICE_UNAVAILABLE"

    def __init__(self, message: str, *, instance_id: str | None = None, slow: bool = False) -> None:
        super().__init__(message, instance_id=instance_id)
        self.slow = slow


class InstanceNotFound(DriverError):
    code = "NOT_FOUND"


class ImageNotFound(DriverError):
    """The image is not on the host and was not (or could not be) pulled."""

    code = "IMAGE_PULL_FAILED"

    def __init__(
        self, message: str, *, instance_id: str | None = None, image: str | None = None
    ) -> None:
        super().__init__(message, instance_id=instance_id)
        self.image = image


class ImagePullRefused(ImageNotFound):
    """Nefos refused to let the engine pull: the registry is not listed, or its host
    resolves to an address tenants may not reach. Nothing was connected to."""


class InvalidSpec(DriverError):
    code = "VALIDATION_ERROR"


class InsufficientCapacity(DriverError):
    code = "RESOURCE_EXHAUSTED"


class InvalidState(DriverError):
    code = "CONFLICT"


class Unsupported(DriverError):
    """The call is outside the driver's :class:`Capabilities` (a caller's bug)."""


# --- data -----------------------------------------------------------------------------
class InstanceKind(enum.StrEnum):
    CONTAINER = "container"
    VM = "vm"


class InstanceState(enum.StrEnum):
    CREATED = "created"  # made, never started
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"  # exited or stopped
    MISSING = "missing"  # the host has no such instance (any more)
    ERROR = "error"  # the host reports it dead or broken


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a driver can do; callers check these instead of catching errors."""

    kind: InstanceKind
    supports_ports: bool = False  # InstanceSpec.ports are published on the host
    supports_stats: bool = False  # stats() returns live numbers
    supports_logs: bool = False  # logs() returns the console/stdout
    supports_log_times: bool = False  # logs() takes since/until/timestamps
    supports_snapshots: bool = False
    supports_resize: bool = False
    supports_reboot: bool = False
    supports_user_data: bool = False  # cloud-init style user data
    supports_volumes: bool = False  # data volumes: create, attach, detach, grow, delete
    supports_networks: bool = False  # isolated private networks instances can join
    supports_backups: bool = False  # full standalone disk copies, restorable into new VMs
    supports_exec: bool = False  # exec() runs a command inside a running instance
    supports_shell: bool = False  # open_shell() gives an interactive terminal inside it
    supports_console: bool = False  # open_console() attaches to its serial console


@dataclass(frozen=True, slots=True)
class ExecResult:
    """What ``exec`` ran: its exit code and (the start of) its output."""

    exit_code: int
    output: str


class Shell(abc.ABC):
    """An interactive command inside a running instance, on a terminal: bytes in (its
    keyboard), bytes out (its screen), a size, and an exit code at the end
    (``ComputeDriver.open_shell``). One reader and one writer at a time."""

    @abc.abstractmethod
    async def read(self) -> bytes:
        """The next output the terminal has (at most 64 KiB); ``b""`` once it ended."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Type ``data`` (raises :class:`DriverError` once the terminal is gone)."""

    @abc.abstractmethod
    async def resize(self, cols: int, rows: int) -> None:
        """The terminal's new size (best effort: a command that ended ignores it)."""

    @abc.abstractmethod
    async def exit_code(self) -> int | None:
        """The command's exit code once it ended (None while it runs or if unknown)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Hang up: the terminal's input ends (the command sees end-of-file and, a
        shell, exits). Idempotent."""


@dataclass(frozen=True, slots=True)
class HostCapacity:
    """The host's total resources (not what is free: the scheduler counts that)."""

    cpus: int
    memory_mb: int
    disk_gb: int | None  # None when the driver cannot see the host's disk


@dataclass(frozen=True, slots=True)
class PortSpec:
    """Publish ``container_port/protocol`` on the host; ``host_port`` None = any free."""

    container_port: int
    protocol: Protocol = "tcp"
    host_port: int | None = None
    host_ip: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class PublishedPort:
    container_port: int
    protocol: Protocol
    host_ip: str
    host_port: int


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """Everything a driver needs to make one instance."""

    nefos_id: str
    project_id: str
    name: str
    image: str
    command: tuple[str, ...] | None = None  # None: the image's default command
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[PortSpec, ...] = ()
    cpu: float = 1.0  # cores, fractions allowed
    memory_mb: int = 256
    pids_limit: int = 256
    labels: Mapping[str, str] = field(default_factory=dict)

    def all_labels(self) -> dict[str, str]:
        """The spec's labels plus the identity labels, which always win."""
        return {
            **self.labels,
            LABEL_ID: self.nefos_id,
            LABEL_PROJECT: self.project_id,
            LABEL_MANAGED: "true",
        }


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    driver_id: str
    nefos_id: str | None  # None for an instance Nefos did not make
    project_id: str | None
    name: str
    image: str
    state: InstanceState
    ports: tuple[PublishedPort, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InstanceStats:
    cpu_percent: float  # of one core x cores: 200.0 = two cores busy
    memory_bytes: int
    memory_limit_bytes: int
    memory_percent: float
    net_rx_bytes: int
    net_tx_bytes: int


@dataclass(frozen=True, slots=True)
class InstanceCounters:
    """An instance's cumulative usage counters, read at one moment.

    The monitoring collector turns two reads into rates (cpu %, bytes per second);
    a counter that went down (the instance restarted) starts a new series.
    """

    running: bool
    cpu_time_ns: int  # CPU time used by all its CPUs since it (re)started
    cpus: float  # the CPUs it may use (a container's limit, a VM's vCPUs)
    memory_bytes: int  # in use now, page cache left out (as InstanceStats)
    memory_limit_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int
    disk_read_bytes: int
    disk_write_bytes: int
    read_at: float  # time.monotonic() of this process when the host answered


@dataclass(frozen=True, slots=True)
class HostUsage:
    """A host's own usage, read at one moment. CPU time is cumulative over all its
    cores (None when the host does not report it: rates need two reads)."""

    cpu_busy_ns: int | None
    cpu_total_ns: int | None  # busy + idle
    memory_used_bytes: int
    memory_total_bytes: int
    read_at: float  # time.monotonic() of this process when the host answered


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    """A data volume (a disk that outlives the VMs it is attached to)."""

    volume_id: str
    name: str  # the host's name for it (a libvirt pool volume name)
    size_gb: int  # virtual size, whole GiB
    allocation_bytes: int  # what it really takes on the host
    path: str  # where it is on the host
    attached_to: str | None  # the driver id of the instance using it, or None


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    """A private network on one host that instances' NICs can join."""

    network_id: str
    name: str  # the host's name for it (nefos-net-<id>)
    cidr: str | None  # its IPv4 subnet (DHCP on it), or None: a bare layer-2 segment
    bridge: str  # the host's bridge device
    active: bool
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A point-in-time state of an instance's disks, kept with the instance."""

    snapshot_id: str
    name: str  # the host's name for it (nefos-snap-<id>)
    created_at: datetime  # timezone-aware, UTC
    state: str  # the instance's state when taken, as the host says it ("shutoff")


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """A full, standalone copy of an instance's disks, independent of the instance."""

    backup_id: str
    volumes: tuple[str, ...]  # the host's names of the copies, sorted
    size_bytes: int  # what the copies take on the host


# --- the contract ----------------------------------------------------------------------
class ComputeDriver(abc.ABC):
    """One host's compute engine, as Nefos sees it."""

    #: Short name ("docker", "libvirt", "sim") used in configuration and logs.
    name: ClassVar[str]

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """Constant for the driver's lifetime; no I/O."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return if the host answers; raise :class:`HostUnreachable` otherwise.

        Bounded by the driver's connection timeout: a dead host fails fast.
        """

    @abc.abstractmethod
    async def capacity(self) -> HostCapacity:
        """The host's total cpus, memory and (if visible) disk. Raises HostUnreachable."""

    @abc.abstractmethod
    async def create(self, spec: InstanceSpec) -> InstanceInfo:
        """Make the instance described by ``spec``, and leave it not running.

        On success the instance exists in state ``CREATED`` (or ``STOPPED``), carries
        ``spec.all_labels()``, and has its limits (cpu, memory, pids) applied.
        Published host ports may only be known after :meth:`start`.

        On failure nothing the call made is left on the host (the half-made instance
        is destroyed) and the error says why: :class:`ImageNotFound` for a missing
        image, :class:`InvalidSpec` for a spec the host refuses (a name already in
        use included), :class:`HostUnreachable` if the host stopped answering.
        """

    @abc.abstractmethod
    async def start(self, instance_id: str) -> InstanceInfo:
        """Start the instance; on return it is ``RUNNING`` with its ports published.

        Starting a running instance succeeds and changes nothing. If the start
        fails the instance is left stopped (not destroyed: it is Nefos's record)
        and the error is raised; :class:`InsufficientCapacity` when a host port
        is taken. Raises :class:`InstanceNotFound` if it is gone.
        """

    @abc.abstractmethod
    async def stop(self, instance_id: str, *, grace_seconds: float = 10) -> InstanceInfo:
        """Stop the instance gracefully, forcing it after ``grace_seconds``.

        On return it is ``STOPPED``; stopping a stopped instance succeeds. Raises
        :class:`InstanceNotFound` if it is gone.
        """

    @abc.abstractmethod
    async def destroy(self, instance_id: str) -> None:
        """Remove the instance and everything the driver made for it, running or not.

        On return the host has no such instance. Destroying an instance that is
        already gone succeeds: destroy is how the reconciler cleans up, and it
        may run twice.
        """

    @abc.abstractmethod
    async def get(self, instance_id: str) -> InstanceInfo:
        """The instance as the host sees it now. Raises :class:`InstanceNotFound`."""

    @abc.abstractmethod
    async def list(self, labels: Mapping[str, str] | None = None) -> list[InstanceInfo]:
        """Every Nefos-made instance (``nefos.managed=true``) on the host that also
        carries all of ``labels``; for the reconciler. No I/O beyond one listing."""

    @abc.abstractmethod
    async def stats(self, instance_id: str) -> InstanceStats:
        """One sample of the instance's usage (needs ``supports_stats``).

        A stopped instance reports zero usage. Raises :class:`InstanceNotFound`.
        """

    @abc.abstractmethod
    async def counters(self, instance_ids: Sequence[str]) -> dict[str, InstanceCounters]:
        """One read of the usage counters of each of ``instance_ids`` (driver or
        Nefos ids), keyed as given; needs ``supports_stats``.

        Bulk, for the monitoring collector: one call per host and pass. An id the
        host does not have is left out of the answer (it never raises
        :class:`InstanceNotFound`); a stopped instance reports ``running=False`` and
        zero usage. Raises :class:`HostUnreachable` if the host does not answer.
        """

    @abc.abstractmethod
    async def host_usage(self) -> HostUsage | None:
        """The host's own CPU time and memory use now, or None when the host does
        not report them. Raises :class:`HostUnreachable` if it does not answer."""

    @abc.abstractmethod
    async def logs(
        self,
        instance_id: str,
        *,
        tail: int = 100,
        since: datetime | None = None,
        until: datetime | None = None,
        timestamps: bool = False,
    ) -> str:
        """The last ``tail`` lines of the console/stdout+stderr (``supports_logs``),
        of those written after ``since`` and not after ``until`` when given; with
        ``timestamps``, each line starts with its time (RFC 3339, UTC) and a space.
        A driver whose log keeps no times (``supports_log_times`` False) raises
        :class:`Unsupported` for ``since``, ``until`` or ``timestamps``.

        Raises :class:`InstanceNotFound` if it is gone.
        """

    async def exec(
        self,
        instance_id: str,
        command: Sequence[str],
        *,
        deadline: float | None = None,
        output_limit: int = 4096,
    ) -> ExecResult:
        """Run ``command`` (argv, no shell) inside the running instance and wait for
        it (``supports_exec``): its exit code and the first ``output_limit`` bytes of
        its stdout and stderr. With ``deadline`` (seconds), stop reading once it has
        passed and raise :class:`DriverError` (the command may go on in the instance;
        the caller's thread no longer waits on it).

        Raises :class:`InstanceNotFound` if it is gone, :class:`InvalidState` if it
        is not running.
        """
        raise Unsupported(f"{self.name} instances cannot run commands")

    async def open_shell(
        self, instance_id: str, command: Sequence[str], *, cols: int = 80, rows: int = 24
    ) -> Shell:
        """Start ``command`` (argv) inside the running instance on a terminal of
        ``cols`` x ``rows`` and give its :class:`Shell` (``supports_shell``).

        Raises :class:`InstanceNotFound` if it is gone, :class:`InvalidState` if it
        is not running, :class:`InvalidSpec` if the command cannot be started.
        """
        raise Unsupported(f"{self.name} instances have no interactive terminal")

    async def open_console(self, instance_id: str, *, force: bool = False) -> Shell:
        """Attach to the running instance's serial console (``supports_console``): its
        :class:`Shell` carries what the guest prints and what is typed, has no size
        and no exit code, and ends when the instance stops or another console takes
        over. One console per instance at a time: another open one is
        :class:`InvalidState`, unless ``force`` takes it over.

        Raises :class:`InstanceNotFound` if it is gone, :class:`InvalidState` if it
        is not running.
        """
        raise Unsupported(f"{self.name} instances have no serial console")

    async def has_image(self, image: str) -> bool:
        """Whether ``image`` is on the host already, so that creating from it pulls
        nothing (container drivers). Raises :class:`HostUnreachable`."""
        raise Unsupported(f"{self.name} hosts have no container images")

    async def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release connections; the driver is unusable afterwards."""
