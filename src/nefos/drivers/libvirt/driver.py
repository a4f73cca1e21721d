"""Virtual machines on libvirt: QEMU with KVM, or QEMU's TCG emulator where KVM is
absent or broken.

libvirt-python is blocking; every call runs in a worker thread. One connection
per driver, opened on first use and opened again after libvirtd went away; a
failed connect, a dropped connection or an RPC failure is :class:`HostUnreachable`
(a read is retried once on a fresh connection first).

Domains. The domain of Nefos instance ``<id>`` is named ``nefos-<id>`` (so one
Nefos instance has at most one VM per host); ``driver_id`` is the domain's UUID,
and every method takes either. Its ``<metadata>`` holds the Nefos identity and
labels (:mod:`.domain`); a domain without it is not Nefos's, and the driver treats
it as absent (:class:`InstanceNotFound`; ``destroy`` leaves it alone).

Images. ``spec.image`` is either
  * an absolute path to a directory on the host holding ``vmlinuz`` and
    ``initrd.img`` (and optionally ``cmdline``, the kernel command line; default
    ``console=ttyS0``), booted directly (local hosts only), or
  * a name: first ``<image_dir>/<name>/`` as above when the driver has an
    ``image_dir`` (local hosts), then volumes of the storage ``pool``:
    ``<name>.vmlinuz`` + ``<name>.initrd`` (kernel boot), or ``<name>.qcow2`` /
    ``<name>.raw`` (a disk the VM boots from; each VM gets a copy-on-write qcow2
    overlay of it). :meth:`import_image` uploads them, :meth:`delete_image`
    removes them.
Anything else is :class:`ImageNotFound`. A bzImage's setup header says how much
memory it needs to unpack itself; a spec with less is :class:`InvalidSpec` rather
than a guest that reboots forever.

Per-instance files are volumes of the (directory) pool, named after the domain,
so they are reachable over remote URIs too and ``destroy`` removes them all:
``nefos-<id>.console.log`` (the serial console, written by virtlogd, read by
:meth:`logs`), ``nefos-<id>.seed.iso`` (the NoCloud seed: instance id, hostname,
SSH keys, user data) and ``nefos-<id>.root.qcow2`` (the root disk, ``vda``: an
overlay of a disk image, a blank disk of ``VmSpec.disk_gb``, or a restored
backup; see :class:`VmSpec`).

Specs. vCPUs are ``spec.cpu`` rounded up (at least one), and a fractional
``cpu`` is also a CFS cap on the whole domain (``cputune/global_quota``: 0.5 is
half a core); memory is ``spec.memory_mb``. ``pids_limit`` and ``ports`` do not
apply to a VM (its processes are its kernel's; ``supports_ports`` is false).
User data and SSH keys come from a :class:`VmSpec` (or any spec with
``user_data``/``ssh_keys`` attributes); a plain spec's ``command`` (with its
``env`` exported) becomes a ``#!/bin/sh`` user data, which cloud-init (and the tiny
test image) runs after boot. A spec with both a command and user data is
:class:`InvalidSpec`.

Networking. ``network=None`` (the default) gives each VM one virtio NIC on a host
tap device of its own, connected to nothing yet (so the counters of
:meth:`stats` are real); a libvirt network name attaches it there instead.

Domain type. ``domain_type`` is ``"kvm"``, ``"qemu"`` (TCG) or ``"auto"``: the
host must offer kvm, and a throwaway kvm guest (the kernel of the first
kernel-boot image created, with no init) must boot to its panic within
``probe_timeout`` seconds; otherwise ``qemu``. The answer is cached for the
driver's lifetime. (A ``/dev/kvm`` that exists but hangs guests is why presence
alone proves nothing.)

Stop is an ACPI power-button press, then after ``grace_seconds`` a forced
destroy. ``reboot`` and ``resize`` are here too (the contract has no methods for
them yet): see their docstrings.

Beyond the contract, each with its own docstring: images in the pool
(:meth:`import_image`), snapshots (:meth:`snapshot`), backups (:meth:`backup`, to
the ``backup_pool``), data volumes (:meth:`create_volume`) and private networks
(:meth:`create_network`). Their ids, like instance ids, are the caller's; the host
names derive from them (``nefos-snap-<id>``, ``nefos-bak-<id>.<disk>.qcow2``,
``nefos-vol-<id>.qcow2``, ``nefos-net-<id>``), so a retried call finds what an
earlier one made, and every such call is idempotent. These ids are 1-63 letters,
digits, ``_`` and ``-`` (no dots); anything else is :class:`InvalidSpec`.
"""

from __future__ import annotations

import asyncio
import builtins
import math
import re
import secrets
import threading
import time
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import libvirt

from nefos.drivers.base import (
    LABEL_ID,
    LABEL_MANAGED,
    LABEL_PROJECT,
    BackupInfo,
    Capabilities,
    ComputeDriver,
    DriverError,
    HostCapacity,
    HostUnreachable,
    HostUsage,
    ImageNotFound,
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
    NetworkInfo,
    Shell,
    SnapshotInfo,
    Unsupported,
    VolumeInfo,
)
from nefos.drivers.libvirt import seed as seeds
from nefos.drivers.libvirt.console import SerialConsole, ensure_event_loop
from nefos.drivers.libvirt.domain import (
    CPU_PERIOD_US,
    DEFAULT_CMDLINE,
    KERNEL_HEADER_BYTES,
    NAMESPACE,
    QCOW2_HEADER_BYTES,
    BootSource,
    DomainPlan,
    DomainType,
    NefosMetadata,
    cpu_quota_us,
    disk_xml,
    disks_of,
    domain_xml,
    kernel_min_memory_mb,
    networks_of,
    parse_metadata,
    probe_xml,
    qcow2_problem,
    snapshot_xml,
    vcpus_for,
)
from nefos.drivers.libvirt.network import (
    NETWORK_PREFIX,
    NetworkPlan,
    ParsedNetwork,
    network_name,
    network_xml,
    normal_cidr,
    parse_network,
)

T = TypeVar("T")

DomainTypeSetting = Literal["auto", "kvm", "qemu"]
DiskFormat = Literal["qcow2", "raw"]
_DISK_FORMATS: tuple[DiskFormat, ...] = ("qcow2", "raw")

_MIB = 1024**2
_KIB = 1024
_GIB = 1024**3
#: Longest kernel command line a spec may give (x86 takes 2048 bytes with the NUL).
_MAX_CMDLINE = 2047
# The Engine API's rule for container names: one rule for every driver's ids.
_NEFOS_ID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: Ids of volumes, snapshots, backups and networks: no dots, so the names made of
#: them (nefos-vol-<id>.qcow2, nefos-bak-<id>.<disk>.qcow2) parse back unambiguously.
_OBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
#: A libvirt network's name, as a spec may give it.
_OBJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
#: A pool volume's name, as a spec may give it (no path).
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
#: Image names that would name volumes that are not images: an instance's root
#: disk (<name>.root -> nefos-<id>.root.qcow2) or a data volume (nefos-vol-<id>).
_NOT_AN_IMAGE = re.compile(r".*\.root|nefos-vol-.*|nefos-bak-.*")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
#: Suffixes of the volumes an instance owns (virtlogd rotates the log to .log.N).
_SNAPSHOT_PREFIX = "nefos-snap-"
_BACKUP_PREFIX = "nefos-bak-"
_VOLUME_PREFIX = "nefos-vol-"
_DATA_VOLUME = re.compile(r"nefos-vol-[A-Za-z0-9][A-Za-z0-9_-]*\.qcow2")
_BACKUP_VOLUME = re.compile(r"nefos-bak-([A-Za-z0-9][A-Za-z0-9_-]*)\.([a-z0-9]+)\.qcow2")
_OWNED_SUFFIX = re.compile(r"\.(console\.log(\.[0-9]+)?|seed\.iso|root\.qcow2)")
#: libvirt errors that mean the daemon, not the request, failed.
_UNREACHABLE_CODES = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_AUTH_FAILED,
    libvirt.VIR_ERR_AUTH_UNAVAILABLE,
    libvirt.VIR_ERR_OPERATION_TIMEOUT,  # a domain's job lock stayed taken
}
_SPEC_CODES = {
    libvirt.VIR_ERR_XML_ERROR,
    libvirt.VIR_ERR_XML_DETAIL,
    libvirt.VIR_ERR_XML_INVALID_SCHEMA,
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
    libvirt.VIR_ERR_INVALID_ARG,
}
_NO_MEMORY = ("cannot allocate memory", "cannot set up guest memory", "out of memory")

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: InstanceState.ERROR,
    libvirt.VIR_DOMAIN_RUNNING: InstanceState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: InstanceState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: InstanceState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: InstanceState.RUNNING,  # shutting down: still running
    libvirt.VIR_DOMAIN_SHUTOFF: InstanceState.STOPPED,
    libvirt.VIR_DOMAIN_CRASHED: InstanceState.ERROR,
    libvirt.VIR_DOMAIN_PMSUSPENDED: InstanceState.PAUSED,
}


def domain_name(nefos_id: str) -> str:
    """The libvirt domain of Nefos instance ``nefos_id`` (what a VM whose ``driver_id``
    is not recorded yet is found by)."""
    return f"nefos-{nefos_id}"


def state_of(state: int, reason: int) -> InstanceState:
    """A libvirt (state, reason) pair as an InstanceState."""
    if state == libvirt.VIR_DOMAIN_SHUTOFF and reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED:
        return InstanceState.ERROR
    return _STATES.get(state, InstanceState.ERROR)


def _dom_state(dom: libvirt.virDomain) -> InstanceState:
    # libvirt.py annotates state() as str; it is [state, reason].
    state, reason = cast("list[int]", dom.state())
    return state_of(state, reason)


def _silence(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr unless a handler takes them: errors
    reach us as exceptions, so the print is dropped."""


libvirt.registerErrorHandler(_silence, None)


@dataclass(frozen=True, slots=True)
class VmSpec(InstanceSpec):
    """An InstanceSpec with what only a VM takes.

    ``user_data`` and ``ssh_keys`` go to the guest in its NoCloud seed.

    ``disk_gb`` is the root disk's size in GiB. A disk image (a ``qcow2`` or ``raw``
    base) gets a copy-on-write overlay of ``max(base size, disk_gb)``; a kernel-boot
    image gets, when ``disk_gb > 0``, a blank qcow2 root disk of that size as its
    first virtio disk (``vda``), so that snapshots, backups and disk resizes work
    the same for both; 0 = a kernel-boot VM without a root disk.

    ``kernel_cmdline`` replaces a kernel-boot image's command line (the image
    directory's ``cmdline`` file, else ``console=ttyS0``); with a disk image it is
    :class:`InvalidSpec` (its boot loader decides).

    ``network`` is a libvirt network (``nefos-net-<id>`` from
    :meth:`LibvirtDriver.create_network`) for the VM's NIC, instead of the driver's
    own ``network``; a network the host lacks is :class:`InvalidSpec`.

    ``root_from`` names a volume of the driver's backup pool (a
    ``nefos-bak-<id>.vda.qcow2`` of :meth:`LibvirtDriver.backup`) whose full copy
    becomes the root disk, of ``max(its size, disk_gb)``: how a backup is restored
    into a new VM. The boot source (kernel, or the disk image's boot loader on the
    copy) still comes from ``image``. A missing volume is :class:`InvalidSpec`.
    """

    user_data: str | None = None
    ssh_keys: tuple[str, ...] = ()
    disk_gb: int = 0
    kernel_cmdline: str | None = None
    network: str | None = None
    root_from: str | None = None


@dataclass(frozen=True, slots=True)
class _VmOptions:
    """What a spec says beyond InstanceSpec, checked: a VmSpec's fields, or
    attributes of those names on any spec."""

    user_data: str | None
    ssh_keys: tuple[str, ...]
    disk_gb: int
    kernel_cmdline: str | None
    network: str | None
    root_from: str | None


@dataclass(frozen=True, slots=True)
class _Image:
    boot: BootSource
    #: Bytes of kernel + initrd when known, for the memory floor; None = unknown.
    min_memory_mb: int | None = None


def _explain(exc: libvirt.libvirtError) -> str:
    return str(exc.get_error_message() or exc)


def _is_unreachable(exc: libvirt.libvirtError) -> bool:
    return (
        exc.get_error_domain() == libvirt.VIR_FROM_RPC or exc.get_error_code() in _UNREACHABLE_CODES
    )


def _code(exc: libvirt.libvirtError) -> int | None:
    return exc.get_error_code()


def translate(
    exc: libvirt.libvirtError, instance_id: str | None = None, *, creating: bool = False
) -> DriverError:
    """One libvirt error as the driver error tree."""
    message = _explain(exc)
    code = _code(exc)
    if _is_unreachable(exc):
        return HostUnreachable(f"libvirt unreachable: {message}", instance_id=instance_id)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return InstanceNotFound(message, instance_id=instance_id)
    if code in (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL) and creating:
        return ImageNotFound(message, instance_id=instance_id)
    if any(s in message.lower() for s in _NO_MEMORY):
        return InsufficientCapacity(message, instance_id=instance_id)
    if creating and (code == libvirt.VIR_ERR_OPERATION_FAILED and "already exists" in message):
        return InvalidSpec(message, instance_id=instance_id)
    if code in _SPEC_CODES:
        return InvalidSpec(message, instance_id=instance_id)
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        return InvalidState(message, instance_id=instance_id)
    return DriverError(message, instance_id=instance_id)


class _Opening:
    """A console being opened in a worker thread for a caller that may give up (a
    timeout, a cancel) before it is: then the console is closed rather than left
    holding the domain's one console."""

    def __init__(self, loop: asyncio.AbstractEventLoop, run: Callable[..., Any]) -> None:
        self.loop = loop
        self.run = run
        self._lock = threading.Lock()
        self._given_up = False
        self._console: SerialConsole | None = None

    def opened(self, stream: libvirt.virStream, conn: libvirt.virConnect) -> SerialConsole:
        """The console on ``stream`` of ``conn``, started (the worker thread's part)."""
        console = SerialConsole(stream, self.loop, self.run, conn=conn)
        try:
            console.start()  # registered before it can be handed over or given up
        except libvirt.libvirtError as exc:
            console.close_now()
            raise translate(exc) from exc
        with self._lock:
            given_up = self._given_up
            if not given_up:
                self._console = console
        if given_up:
            console.close_now()
            raise DriverError("the console was opened after its caller gave up")
        return console

    def give_up(self) -> None:
        with self._lock:
            self._given_up = True
            console, self._console = self._console, None
        if console is not None:
            threading.Thread(target=console.close_now, name="libvirt-call", daemon=True).start()


class LibvirtDriver(ComputeDriver):
    """A :class:`ComputeDriver` for one libvirt URI (``qemu:///system``, ``qemu+ssh://...``)."""

    name = "libvirt"

    _CAPABILITIES = Capabilities(
        kind=InstanceKind.VM,
        supports_stats=True,
        supports_logs=True,
        supports_snapshots=True,  # of a stopped VM's disks
        supports_resize=True,  # cpu, memory and root disk, while stopped
        supports_reboot=True,
        supports_user_data=True,
        supports_backups=True,  # of a stopped VM's disks, restored by VmSpec.root_from
        supports_volumes=True,
        supports_networks=True,  # isolated, optionally with DHCP (dnsmasq on the host)
        supports_console=True,  # the serial console, interactive (.console)
    )

    def __init__(
        self,
        uri: str,
        *,
        domain_type: DomainTypeSetting = "auto",
        pool: str = "default",
        image_dir: str | Path | None = None,
        network: str | None = None,
        timeout: float = 10,
        probe_timeout: float = 10,
        backup_pool: str = "nefos-backups",
        backup_dir: str | Path | None = None,
        detach_timeout: float = 10,
    ) -> None:
        """``timeout`` bounds :meth:`ping` and :meth:`capacity` (a hung libvirtd fails
        fast); ``probe_timeout`` is how long the kvm probe guest may take.

        ``backup_pool`` is the directory pool :meth:`backup` writes to; the first
        call that needs it defines it when the host lacks it (at ``backup_dir``, a
        path on the host, by default ``nefos-backups`` beside ``pool``'s
        directory), builds, starts and autostarts it.

        ``detach_timeout`` is how long :meth:`detach_volume` waits for a running
        guest to let go of a disk."""
        parts = urlsplit(uri)
        if not parts.scheme or not re.fullmatch(r"(qemu|test)(\+[a-z0-9]+)?", parts.scheme):
            raise ValueError(f"not a libvirt QEMU URI: {uri!r} (e.g. qemu:///system)")
        if domain_type not in ("auto", "kvm", "qemu"):
            raise ValueError(f"domain_type must be auto, kvm or qemu, not {domain_type!r}")
        self.uri = uri
        #: What libvirt.open gets: an ssh transport never prompts (no tty, BatchMode),
        #: so an unknown host key or a password request fails instead of hanging.
        self._open_uri = _no_prompt(uri, parts.scheme)
        self.pool = pool
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self.network = network
        self.backup_pool = backup_pool
        self.backup_dir = str(backup_dir) if backup_dir is not None else None
        self.detach_timeout = detach_timeout
        self.timeout = timeout
        self.probe_timeout = probe_timeout
        self.domain_type_setting: DomainTypeSetting = domain_type
        #: Local = libvirtd runs on this machine, so host paths are our paths.
        self.local = not parts.hostname
        self._resolved_type: DomainType | None = None if domain_type == "auto" else domain_type
        self._conn: libvirt.virConnect | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._pool_path: str | None = None
        self._cpu_samples: dict[str, tuple[int, float]] = {}
        # Before any connection opens: consoles' streams need libvirt's event loop.
        ensure_event_loop()
        self._consoles: weakref.WeakSet[SerialConsole] = weakref.WeakSet()
        self._consoles_lock = threading.Lock()  # added here, walked by libvirt's thread

    @property
    def capabilities(self) -> Capabilities:
        return self._CAPABILITIES

    @property
    def domain_type(self) -> DomainType | None:
        """The domain type in use: the setting, or the probe's answer (None before it)."""
        return self._resolved_type

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking libvirt call in a daemon thread of its own.

        Not the loop's default executor: a call that never returns (``libvirt.open``
        of an ``ssh`` URI whose host swallows packets) would then hold up the loop's
        shutdown, and the process's exit, forever. Callers bound the wait
        (:meth:`_bounded`); the abandoned thread dies with the process."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if not future.done():
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

        def work() -> None:
            try:
                outcome: tuple[bool, Any] = (True, fn(*args))
            except BaseException as exc:  # delivered to the awaiting coroutine
                outcome = (False, exc)
            with suppress(RuntimeError):  # the loop closed while we waited
                loop.call_soon_threadsafe(settle, *outcome)

        threading.Thread(target=work, name="libvirt-call", daemon=True).start()
        return await future

    # --- the connection ----------------------------------------------------------------
    def _connect(self) -> libvirt.virConnect:
        with self._lock:
            if self._closed:
                raise DriverError("the libvirt driver is closed")
            conn = self._conn
            if conn is not None:
                try:
                    if conn.isAlive():
                        return conn
                except libvirt.libvirtError:
                    pass
                self._drop_locked()
            try:
                self._conn = libvirt.open(self._open_uri)
            except libvirt.libvirtError as exc:
                raise HostUnreachable(
                    f"libvirt unreachable at {self.uri}: {_explain(exc)}"
                ) from exc
            # The consoles on a connection end with it (libvirtd restarted, the
            # connection dropped): libvirt tells the streams nothing of it.
            with suppress(libvirt.libvirtError):
                self._conn.registerCloseCallback(self._connection_closed, None)
            return self._conn

    def _connection_closed(self, conn: libvirt.virConnect, _reason: int, _opaque: Any) -> None:
        """libvirt's event thread: ``conn`` closed; the consoles on it end."""
        with self._consoles_lock:
            on_it = [c for c in self._consoles if c.conn is conn]
        for console in on_it:
            console.hang_up()

    def _drop_locked(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(libvirt.libvirtError):
                conn.close()

    def _drop(self) -> None:
        with self._lock:
            self._drop_locked()

    @contextmanager
    def _translated(
        self, instance_id: str | None = None, *, creating: bool = False
    ) -> Iterator[None]:
        """Re-raise libvirt's errors as the driver error tree; forget a dead connection."""
        try:
            yield
        except libvirt.libvirtError as exc:
            err = translate(exc, instance_id, creating=creating)
            if isinstance(err, HostUnreachable):
                self._drop()
            raise err from exc

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """A read-only call, retried once on a fresh connection if the one it had
        died (libvirtd restarted): only a daemon that stays away is HostUnreachable."""
        had_connection = self._conn is not None
        try:
            return fn(*args)
        except HostUnreachable:
            if self._closed or not had_connection:
                raise  # the connect itself failed: trying again at once proves nothing
        return fn(*args)

    # --- the host -------------------------------------------------------------------------
    async def ping(self) -> None:
        await self._bounded(self._read, self._ping)

    async def _bounded(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.wait_for(self._run(fn, *args), self.timeout)
        except TimeoutError as exc:
            # Forget the connection (the next call opens a new one) without closing it
            # under the worker thread that is still waiting on it.
            with self._lock:
                self._conn = None
            raise HostUnreachable(
                f"libvirt at {self.uri} did not answer in {self.timeout}s", slow=True
            ) from exc

    def _ping(self) -> None:
        conn = self._connect()
        with self._translated():
            conn.getLibVersion()

    async def capacity(self) -> HostCapacity:
        return await self._bounded(self._read, self._capacity)

    def _capacity(self) -> HostCapacity:
        conn = self._connect()
        with self._translated():
            info = conn.getInfo()
            memory_mb = int(info[1])
            # getInfo counts NUMA cells' memory, which some hosts under-report.
            with suppress(libvirt.libvirtError):
                stats = cast(
                    "dict[str, int]", conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
                )
                memory_mb = max(memory_mb, int(stats.get("total", 0)) // 1024)
            disk_gb: int | None = None
            try:
                pool = conn.storagePoolLookupByName(self.pool)
                if pool.isActive():
                    disk_gb = int(pool.info()[1]) // 1024**3
            except libvirt.libvirtError as exc:
                if _is_unreachable(exc):
                    raise
        return HostCapacity(cpus=int(info[2]), memory_mb=memory_mb, disk_gb=disk_gb)

    # --- lookups --------------------------------------------------------------------------
    def _lookup(self, conn: libvirt.virConnect, instance_id: str) -> libvirt.virDomain:
        with self._translated(instance_id):
            if _UUID.fullmatch(instance_id):
                return conn.lookupByUUIDString(instance_id)
            return conn.lookupByName(instance_id)

    def _exists(self, conn: libvirt.virConnect, instance_id: str) -> bool:
        try:
            self._lookup(conn, instance_id)
        except InstanceNotFound:
            return False
        return True

    def _metadata(self, dom: libvirt.virDomain) -> NefosMetadata | None:
        try:
            raw = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, 0)
        except libvirt.libvirtError as exc:
            if _code(exc) in (libvirt.VIR_ERR_NO_DOMAIN_METADATA, libvirt.VIR_ERR_NO_DOMAIN):
                return None
            raise
        return parse_metadata(raw)

    def _ours(
        self, conn: libvirt.virConnect, instance_id: str
    ) -> tuple[libvirt.virDomain, NefosMetadata]:
        """The Nefos domain ``instance_id`` names; InstanceNotFound for any other."""
        dom = self._lookup(conn, instance_id)
        with self._translated(instance_id):
            md = self._metadata(dom)
        if md is None:
            raise InstanceNotFound(
                f"domain {instance_id!r} is not a Nefos instance", instance_id=instance_id
            )
        return dom, md

    def _info(
        self, dom: libvirt.virDomain, md: NefosMetadata, state: InstanceState
    ) -> InstanceInfo:
        return InstanceInfo(
            driver_id=dom.UUIDString(),
            nefos_id=md.nefos_id,
            project_id=md.project_id,
            name=md.name,
            image=md.image,
            state=state,
            labels=dict(md.labels),
        )

    def _get(self, instance_id: str) -> InstanceInfo:
        conn = self._connect()
        dom, md = self._ours(conn, instance_id)
        with self._translated(instance_id):
            state = _dom_state(dom)
        return self._info(dom, md, state)

    # --- the pool -------------------------------------------------------------------------
    def _storage_pool(self, conn: libvirt.virConnect) -> libvirt.virStoragePool:
        try:
            pool = conn.storagePoolLookupByName(self.pool)
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise DriverError(
                    f"storage pool {self.pool!r} does not exist on {self.uri} "
                    "(scripts/ensure-libvirt.sh makes `default`)"
                ) from exc
            raise
        if not pool.isActive():
            raise DriverError(f"storage pool {self.pool!r} is not active on {self.uri}")
        return pool

    def _pool_dir(self, pool: libvirt.virStoragePool) -> str:
        if self._pool_path is None:
            # libvirtd's own XML: not untrusted input.
            root = ET.fromstring(pool.XMLDesc(0))  # noqa: S314
            if root.get("type") not in ("dir", "fs", "netfs"):
                raise DriverError(
                    f"storage pool {self.pool!r} is a {root.get('type')} pool; "
                    "the libvirt driver needs a directory pool"
                )
            path = root.findtext("target/path")
            if not path:
                raise DriverError(f"storage pool {self.pool!r} has no target path")
            self._pool_path = path.rstrip("/")
        return self._pool_path

    def _volume(self, pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
        try:
            return pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise

    def _download(
        self, conn: libvirt.virConnect, vol: libvirt.virStorageVol, offset: int, length: int
    ) -> bytes:
        if length <= 0:
            return b""
        stream = conn.newStream(0)
        buf = bytearray()

        def sink(_stream: libvirt.virStream, data: bytes, out: bytearray) -> int:
            out.extend(data)
            return len(data)

        try:
            vol.download(stream, offset, length, 0)
            stream.recvAll(sink, buf)
            stream.finish()
        except BaseException:
            with suppress(libvirt.libvirtError):
                stream.abort()
            raise
        return bytes(buf)

    def _upload(self, conn: libvirt.virConnect, vol: libvirt.virStorageVol, data: bytes) -> None:
        stream = conn.newStream(0)
        view = memoryview(data)
        sent = 0

        def source(_stream: libvirt.virStream, nbytes: int, _opaque: None) -> bytes:
            nonlocal sent
            chunk = bytes(view[sent : sent + nbytes])
            sent += len(chunk)
            return chunk

        try:
            vol.upload(stream, 0, len(data), 0)
            stream.sendAll(source, None)
            stream.finish()
        except BaseException:
            with suppress(libvirt.libvirtError):
                stream.abort()
            raise

    def _new_volume(
        self,
        pool: libvirt.virStoragePool,
        name: str,
        *,
        capacity: int,
        fmt: str = "raw",
        backing: tuple[str, str] | None = None,
    ) -> libvirt.virStorageVol:
        """Make volume ``name``, replacing a stale one a crashed create left behind."""
        old = self._volume(pool, name)
        if old is not None:
            old.delete(0)
        return pool.createXML(_volume_xml(name, capacity, fmt, backing), 0)

    def _copy_volume(
        self,
        pool: libvirt.virStoragePool,
        name: str,
        source: libvirt.virStorageVol,
        *,
        capacity: int,
    ) -> libvirt.virStorageVol:
        """A full qcow2 copy of ``source`` (its backing chain read through, so the copy
        stands alone; internal snapshots are not copied) as volume ``name`` of
        ``pool``, of at least ``capacity`` bytes; a stale ``name`` is replaced."""
        old = self._volume(pool, name)
        if old is not None:
            old.delete(0)
        vol = pool.createXMLFrom(_volume_xml(name, capacity, "qcow2"), source, 0)
        try:
            if int(vol.info()[1]) < capacity:
                vol.resize(capacity, 0)
        except BaseException:
            with suppress(libvirt.libvirtError):
                vol.delete(0)
            raise
        return vol

    def _delete_owned_volumes(self, conn: libvirt.virConnect, name: str) -> None:
        """Delete every pool volume instance ``name`` owns; gone already is fine."""
        try:
            pool = self._storage_pool(conn)
        except DriverError:
            return  # no pool: nothing of ours can be in it
        with self._translated():
            # virtlogd may have rotated the console log into files libvirt has not seen.
            with suppress(libvirt.libvirtError):
                pool.refresh(0)
            for vol_name in pool.listVolumes():
                if vol_name.startswith(name) and _OWNED_SUFFIX.fullmatch(vol_name[len(name) :]):
                    try:
                        pool.storageVolLookupByName(vol_name).delete(0)
                    except libvirt.libvirtError as exc:
                        if _code(exc) != libvirt.VIR_ERR_NO_STORAGE_VOL:
                            raise

    # --- images ---------------------------------------------------------------------------
    def _resolve_image(self, conn: libvirt.virConnect, image: str) -> _Image:
        if image.startswith("/"):
            if not self.local:
                raise InvalidSpec(
                    f"image {image!r}: a path names a file on this machine, and {self.uri} is "
                    "another host; register the image in its pool instead"
                )
            return self._image_from_dir(Path(image), image)
        if not _is_image_name(image):
            raise ImageNotFound(f"{image!r} is not an image name")
        if self.image_dir is not None and self.local:
            candidate = self.image_dir / image
            if (candidate / "vmlinuz").is_file():
                return self._image_from_dir(candidate, image)
        return self._image_from_pool(conn, image)

    def _image_from_dir(self, path: Path, image: str) -> _Image:
        kernel = path / "vmlinuz"
        if not kernel.is_file():
            raise ImageNotFound(f"image {image!r}: no kernel at {kernel}")
        initrd = path / "initrd.img"
        cmdline_file = path / "cmdline"
        cmdline = (
            cmdline_file.read_text().strip() if cmdline_file.is_file() else ""
        ) or DEFAULT_CMDLINE
        with kernel.open("rb") as f:
            floor = kernel_min_memory_mb(f.read(KERNEL_HEADER_BYTES))
        if floor is not None and initrd.is_file():
            floor += math.ceil(initrd.stat().st_size / _MIB)
        return _Image(
            BootSource(
                kernel=str(kernel),
                initrd=str(initrd) if initrd.is_file() else None,
                cmdline=cmdline,
            ),
            floor,
        )

    def _image_from_pool(self, conn: libvirt.virConnect, image: str) -> _Image:
        with self._translated(creating=True):
            pool = self._storage_pool(conn)
            kernel = self._volume(pool, f"{image}.vmlinuz")
            if kernel is not None:
                initrd = self._volume(pool, f"{image}.initrd")
                floor = kernel_min_memory_mb(self._download(conn, kernel, 0, KERNEL_HEADER_BYTES))
                if floor is not None and initrd is not None:
                    floor += math.ceil(int(initrd.info()[1]) / _MIB)
                return _Image(
                    BootSource(
                        kernel=kernel.path(),
                        initrd=initrd.path() if initrd is not None else None,
                    ),
                    floor,
                )
            for fmt in _DISK_FORMATS:
                disk = self._volume(pool, f"{image}.{fmt}")
                if disk is not None:
                    return _Image(BootSource(base_disk=disk.path(), base_format=fmt))
        raise ImageNotFound(
            f"image {image!r} not found: no {image}.vmlinuz, {image}.qcow2 or {image}.raw "
            f"in pool "
            f"{self.pool!r}" + (f", nor {self.image_dir / image}/vmlinuz" if self.image_dir else "")
        )

    # --- image management -----------------------------------------------------------------
    async def import_image(
        self,
        name: str,
        *,
        kernel: Path | None = None,
        initrd: Path | None = None,
        disk: Path | None = None,
        disk_format: Literal["qcow2", "raw"] = "qcow2",
    ) -> None:
        """Upload local files into the instance pool as image ``name``.

        A kernel-boot image is ``kernel`` (and optionally ``initrd``), stored as
        ``<name>.vmlinuz`` and ``<name>.initrd``; a disk image is ``disk``, stored as
        ``<name>.qcow2`` or ``<name>.raw`` after ``disk_format``. The bytes travel
        through libvirt streams, so the files are on this machine and the pool may
        be on a remote host. Afterwards ``spec.image = name`` boots it.

        Idempotent: a volume that exists already with the same byte size is kept
        (not uploaded again); one of another size is replaced. On failure the
        volumes this call made (or replaced) are removed, the ones it kept stay.

        :class:`InvalidSpec` for: both or neither of ``kernel`` and ``disk``; an
        ``initrd`` without a kernel; a file that cannot be read; a qcow2 disk that
        is not qcow2 or refers to other files (a backing file or an external data
        file: it would let a guest read the host); a name that is not an image name;
        or a name the pool holds other volumes of (another kind of image, or an
        initrd for a kernel-only import): delete that first. ``delete_image`` then
        ``import_image`` replaces an image.
        """
        await self._run(self._import_image, name, kernel, initrd, disk, disk_format)

    def _import_image(
        self,
        name: str,
        kernel: Path | None,
        initrd: Path | None,
        disk: Path | None,
        disk_format: str,
    ) -> None:
        if not _is_image_name(name):
            raise InvalidSpec(f"{name!r} is not an image name")
        if (kernel is None) == (disk is None):
            raise InvalidSpec("an image is a kernel (with an optional initrd) or a disk")
        if initrd is not None and kernel is None:
            raise InvalidSpec("an initrd needs a kernel")
        if disk_format not in _DISK_FORMATS:
            raise InvalidSpec(f"disk_format must be qcow2 or raw, not {disk_format!r}")
        files: builtins.list[tuple[str, Path]] = []
        if kernel is not None:
            files.append((f"{name}.vmlinuz", Path(kernel)))
            if initrd is not None:
                files.append((f"{name}.initrd", Path(initrd)))
        elif disk is not None:
            files.append((f"{name}.{disk_format}", Path(disk)))
        sizes = {}
        for vol_name, path in files:
            try:
                sizes[vol_name] = path.stat().st_size
                with path.open("rb") as f:
                    head = f.read(QCOW2_HEADER_BYTES)
            except OSError as exc:
                raise InvalidSpec(f"cannot read {path}: {exc}") from exc
            if vol_name.endswith(".qcow2"):
                problem = qcow2_problem(head)
                if problem is not None:
                    raise InvalidSpec(f"{path}: {problem}")
        wanted = {vol_name for vol_name, _ in files}
        # Anything else of that name: the other kind, or an initrd a kernel-only image
        # would pick up.
        others = {f"{name}.{suffix}" for suffix in ("vmlinuz", "initrd", *_DISK_FORMATS)} - wanted
        conn = self._connect()
        made: builtins.list[libvirt.virStorageVol] = []
        with self._translated():
            pool = self._storage_pool(conn)
            clash = sorted(v for v in others if self._volume(pool, v) is not None)
            if clash:
                raise InvalidSpec(
                    f"image {name!r} exists with other volumes ({', '.join(clash)}): "
                    "delete it first"
                )
            try:
                for vol_name, path in files:
                    old = self._volume(pool, vol_name)
                    if old is not None:
                        if _physical_size(old) == sizes[vol_name]:
                            continue
                        old.delete(0)
                    # Capacity 0, grown by the upload: a volume cut short by a crash
                    # has the wrong size, so a later import replaces it.
                    vol = pool.createXML(_volume_xml(vol_name, 0, "raw"), 0)
                    made.append(vol)
                    self._upload_file(conn, vol, path)
                    if _physical_size(vol) != sizes[vol_name]:
                        raise DriverError(f"{path} changed while it was uploaded")
            except BaseException:
                for vol in made:
                    with suppress(libvirt.libvirtError):
                        vol.delete(0)
                raise

    def _upload_file(
        self, conn: libvirt.virConnect, vol: libvirt.virStorageVol, path: Path
    ) -> None:
        stream = conn.newStream(0)
        with path.open("rb") as f:

            def source(_stream: libvirt.virStream, nbytes: int, _opaque: None) -> bytes:
                return f.read(nbytes)

            try:
                vol.upload(stream, 0, path.stat().st_size, 0)
                stream.sendAll(source, None)
                stream.finish()
            except BaseException:
                with suppress(libvirt.libvirtError):
                    stream.abort()
                raise

    async def has_image(self, name: str) -> bool:
        """Whether the instance pool holds image ``name`` (a ``<name>.vmlinuz``,
        ``<name>.qcow2`` or ``<name>.raw``). Image directories are not looked at."""
        return await self._run(self._read, self._has_image, name)

    def _has_image(self, name: str) -> bool:
        if not _is_image_name(name):
            return False
        conn = self._connect()
        with self._translated():
            pool = self._storage_pool(conn)
            return any(
                self._volume(pool, f"{name}.{suffix}") is not None
                for suffix in ("vmlinuz", *_DISK_FORMATS)
            )

    async def delete_image(self, name: str) -> None:
        """Delete image ``name``'s volumes from the instance pool.

        On return the pool has no ``<name>.vmlinuz``, ``.initrd``, ``.qcow2`` nor
        ``.raw``; an image that is gone already succeeds. :class:`InvalidState` while
        a Nefos VM was made from it (its metadata names the image) or any domain
        refers to one of its volumes: a VM's kernel or its disk's base would vanish.
        """
        await self._run(self._delete_image, name)

    def _delete_image(self, name: str) -> None:
        if not _is_image_name(name):
            return  # no such image can exist
        conn = self._connect()
        with self._translated():
            pool = self._storage_pool(conn)
            vols = [
                vol
                for suffix in ("vmlinuz", "initrd", *_DISK_FORMATS)
                if (vol := self._volume(pool, f"{name}.{suffix}")) is not None
            ]
            if not vols:
                return
            paths = {vol.path() for vol in vols}
            for dom in conn.listAllDomains(0):
                try:
                    md = self._metadata(dom) if dom.name().startswith("nefos-") else None
                    used = paths & _referenced_paths(dom)
                except libvirt.libvirtError as exc:
                    if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                        continue  # destroyed meanwhile: not a user any more
                    raise
                if (md is not None and md.image == name) or used:
                    raise InvalidState(
                        f"image {name!r} is in use by domain {dom.name()!r}",
                        instance_id=dom.UUIDString(),
                    )
            for vol in vols:
                try:
                    vol.delete(0)
                except libvirt.libvirtError as exc:
                    if _code(exc) != libvirt.VIR_ERR_NO_STORAGE_VOL:
                        raise

    # --- the backup pool ------------------------------------------------------------------
    def _backup_storage(
        self, conn: libvirt.virConnect, *, create: bool
    ) -> libvirt.virStoragePool | None:
        """The backup pool, started; defined first if missing and ``create`` (else None)."""
        try:
            pool = conn.storagePoolLookupByName(self.backup_pool)
        except libvirt.libvirtError as exc:
            if _code(exc) != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            if not create:
                return None
            pool = self._define_backup_pool(conn)
        if not pool.isActive():
            try:
                pool.create(0)
            except libvirt.libvirtError:
                if not pool.isActive():  # else started meanwhile by another caller
                    raise
        return pool

    def _define_backup_pool(self, conn: libvirt.virConnect) -> libvirt.virStoragePool:
        path = self.backup_dir
        if path is None:
            instance_dir = self._pool_dir(self._storage_pool(conn))
            path = f"{instance_dir.rsplit('/', 1)[0] or ''}/nefos-backups"
        root = ET.Element("pool", type="dir")
        ET.SubElement(root, "name").text = self.backup_pool
        target = ET.SubElement(root, "target")
        ET.SubElement(target, "path").text = path
        ET.SubElement(ET.SubElement(target, "permissions"), "mode").text = "0711"
        try:
            pool = conn.storagePoolDefineXML(ET.tostring(root, encoding="unicode"), 0)
        except libvirt.libvirtError as exc:
            if "already exists" not in _explain(exc):
                raise
            return conn.storagePoolLookupByName(self.backup_pool)  # defined meanwhile
        with suppress(libvirt.libvirtError):
            pool.build(0)  # makes the directory; fails harmlessly if it is there
        pool.setAutostart(1)
        return pool

    def _backup_volume(self, conn: libvirt.virConnect, name: str) -> libvirt.virStorageVol:
        with self._translated():
            pool = self._backup_storage(conn, create=False)
            vol = self._volume(pool, name) if pool is not None else None
        if vol is None:
            raise InvalidSpec(f"no volume {name!r} in the backup pool {self.backup_pool!r}")
        return vol

    # --- the domain type ------------------------------------------------------------------
    def _domain_type_for(self, conn: libvirt.virConnect, boot: BootSource) -> DomainType:
        if self._resolved_type is not None:
            return self._resolved_type
        with self._probe_lock:
            if self._resolved_type is not None:
                return self._resolved_type
            with self._translated():
                caps = conn.getCapabilities()
            if "<domain type='kvm'" not in caps and '<domain type="kvm"' not in caps:
                self._resolved_type = "qemu"
            elif boot.kernel is None:
                return "qemu"  # nothing to probe with yet: this VM emulates, the next may probe
            else:
                self._resolved_type = "kvm" if self._probe_kvm(conn, boot.kernel) else "qemu"
            return self._resolved_type

    def _probe_kvm(self, conn: libvirt.virConnect, kernel: str) -> bool:
        """Does a kvm guest run here? Boot ``kernel`` with no init under kvm: it
        panics once up and its reboot ends the domain. Not ended in time = hung."""
        name = f"nefos-kvm-probe-{secrets.token_hex(4)}"
        try:
            dom = conn.createXML(probe_xml(name, "kvm", kernel), 0)
        except libvirt.libvirtError as exc:
            if _is_unreachable(exc):
                raise translate(exc) from exc
            return False
        deadline = time.monotonic() + self.probe_timeout
        try:
            while time.monotonic() < deadline:
                try:
                    if cast("list[int]", dom.state())[0] == libvirt.VIR_DOMAIN_SHUTOFF:
                        return True
                except libvirt.libvirtError as exc:
                    if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                        return True  # a transient domain vanishes when it ends
                    raise translate(exc) from exc
                time.sleep(0.1)
            return False
        finally:
            with suppress(libvirt.libvirtError):
                dom.destroy()

    # --- lifecycle ------------------------------------------------------------------------
    async def create(self, spec: InstanceSpec) -> InstanceInfo:
        return await self._run(self._create, spec)

    def _create(self, spec: InstanceSpec) -> InstanceInfo:
        if not _NEFOS_ID.fullmatch(spec.nefos_id):
            raise InvalidSpec(f"invalid instance id {spec.nefos_id!r}")
        if spec.memory_mb < 1 or not spec.cpu > 0:
            raise InvalidSpec("a VM needs cpu > 0 and memory_mb >= 1")
        opts = _vm_options(spec)
        conn = self._connect()
        image = self._resolve_image(conn, spec.image)
        if image.min_memory_mb is not None and spec.memory_mb < image.min_memory_mb:
            raise InvalidSpec(
                # Not the image's name: for Nefos it is an internal pool volume name.
                f"the image needs at least {image.min_memory_mb} MiB of memory to boot; "
                f"the spec gives {spec.memory_mb} MiB"
            )
        boot = image.boot
        if opts.kernel_cmdline is not None:
            if boot.kernel is None:
                raise InvalidSpec(
                    f"image {spec.image!r} is a disk image: its boot loader, not "
                    "kernel_cmdline, gives the kernel its command line"
                )
            boot = replace(boot, cmdline=opts.kernel_cmdline)
        network = opts.network or self.network
        if opts.network is not None:
            with self._translated():
                try:
                    conn.networkLookupByName(opts.network)
                except libvirt.libvirtError as exc:
                    if _code(exc) != libvirt.VIR_ERR_NO_NETWORK:
                        raise
                    raise InvalidSpec(f"no network {opts.network!r} on this host") from exc
        restore_from: libvirt.virStorageVol | None = None
        if opts.root_from is not None:
            restore_from = self._backup_volume(conn, opts.root_from)
        has_root = boot.base_disk is not None or opts.disk_gb > 0 or restore_from is not None
        name = domain_name(spec.nefos_id)
        with self._translated(creating=True):
            try:
                conn.lookupByName(name)
            except libvirt.libvirtError as exc:
                if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
            else:
                raise InvalidSpec(f"a domain named {name!r} exists already")
            pool = self._storage_pool(conn)
            pool_dir = self._pool_dir(pool)
        domain_type = self._domain_type_for(conn, boot)
        hostname = seeds.hostname_for(spec.name, name)
        seed_iso = self._seed(spec, opts.user_data, opts.ssh_keys, hostname)
        plan = DomainPlan(
            name=name,
            domain_type=domain_type,
            cpu=spec.cpu,
            memory_mb=spec.memory_mb,
            boot=boot,
            console_log=f"{pool_dir}/{name}.console.log",
            seed=f"{pool_dir}/{name}.seed.iso",
            root_disk=f"{pool_dir}/{name}.root.qcow2" if has_root else None,
            network=network,
            metadata=NefosMetadata(
                nefos_id=spec.nefos_id,
                project_id=spec.project_id,
                name=spec.name,
                image=spec.image,
                labels=spec.all_labels(),
            ),
        )
        # Defining the name first makes this call the owner of the volumes below:
        # a clash fails here, before anything of the other instance is touched.
        with self._translated(creating=True):
            dom = conn.defineXML(domain_xml(plan))
        try:
            with self._translated(creating=True):
                self._new_volume(pool, f"{name}.console.log", capacity=0)
                vol = self._new_volume(pool, f"{name}.seed.iso", capacity=len(seed_iso))
                self._upload(conn, vol, seed_iso)
                root_name = f"{name}.root.qcow2"
                wanted = opts.disk_gb * _GIB
                if restore_from is not None:
                    capacity = max(int(restore_from.info()[1]), wanted)
                    self._copy_volume(pool, root_name, restore_from, capacity=capacity)
                elif boot.base_disk is not None:
                    base = conn.storageVolLookupByPath(boot.base_disk)
                    self._new_volume(
                        pool,
                        root_name,
                        capacity=max(int(base.info()[1]), wanted),
                        fmt="qcow2",
                        backing=(boot.base_disk, boot.base_format),
                    )
                elif wanted > 0:
                    self._new_volume(pool, root_name, capacity=wanted, fmt="qcow2")
                state = _dom_state(dom)
                return self._info(dom, plan.metadata, state)
        except BaseException:
            self._remove_quietly(name)
            raise

    def _seed(
        self, spec: InstanceSpec, user_data: str | None, ssh_keys: tuple[str, ...], hostname: str
    ) -> bytes:
        if spec.command is not None:
            if user_data is not None:
                raise InvalidSpec("a VM takes user data or a command, not both")
            try:
                user_data = seeds.command_script(spec.command, spec.env)
            except ValueError as exc:
                raise InvalidSpec(str(exc)) from exc
        if any("\n" in k or "\r" in k or not k.strip() for k in ssh_keys):
            raise InvalidSpec("each SSH key is one non-empty line")
        files = {
            "meta-data": seeds.meta_data(
                instance_id=spec.nefos_id, hostname=hostname, ssh_keys=ssh_keys
            ),
            "user-data": user_data or "",
        }
        try:
            return seeds.build_iso(files)
        except seeds.SeedError as exc:
            raise DriverError(f"cannot make the NoCloud seed: {exc}") from exc

    def _remove_quietly(self, name: str) -> None:
        try:
            self._destroy(name)
        except DriverError:
            pass  # the original error matters more; the reconciler finds leftovers

    async def start(self, instance_id: str) -> InstanceInfo:
        return await self._run(self._start, instance_id)

    def _start(self, instance_id: str) -> InstanceInfo:
        conn = self._connect()
        dom, md = self._ours(conn, instance_id)
        with self._translated(instance_id):
            if not dom.isActive():
                try:
                    dom.create()
                except libvirt.libvirtError as exc:
                    # Started meanwhile by someone else: that is what was asked.
                    if not (_code(exc) == libvirt.VIR_ERR_OPERATION_INVALID and dom.isActive()):
                        raise
            state = _dom_state(dom)
        return self._info(dom, md, state)

    async def stop(self, instance_id: str, *, grace_seconds: float = 10) -> InstanceInfo:
        return await self._run(self._stop, instance_id, grace_seconds)

    def _stop(self, instance_id: str, grace_seconds: float) -> InstanceInfo:
        conn = self._connect()
        dom, md = self._ours(conn, instance_id)
        with self._translated(instance_id):
            if dom.isActive() and grace_seconds > 0:
                with suppress(libvirt.libvirtError):  # it may stop on its own meanwhile
                    dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                deadline = time.monotonic() + grace_seconds
                while dom.isActive() and time.monotonic() < deadline:
                    time.sleep(0.1)
            if dom.isActive():
                try:
                    dom.destroy()
                except libvirt.libvirtError:
                    if dom.isActive():
                        raise  # else it went down by itself in between
            state = _dom_state(dom)
        self._cpu_samples.pop(dom.UUIDString(), None)
        return self._info(dom, md, state)

    async def destroy(self, instance_id: str) -> None:
        await self._run(self._destroy, instance_id)

    def _destroy(self, instance_id: str) -> None:
        conn = self._connect()
        try:
            dom, md = self._ours(conn, instance_id)
        except InstanceNotFound:
            # Gone, or not ours. A domain name still names the volumes a half-made
            # instance may have left: those go too, unless the name is taken by a
            # domain that is not Nefos's.
            if instance_id.startswith("nefos-") and not self._exists(conn, instance_id):
                self._delete_owned_volumes(conn, instance_id)
            return
        name = domain_name(md.nefos_id)
        with self._translated(instance_id):
            try:
                if dom.isActive():
                    dom.destroy()
                # Snapshots live inside the disks: deleting them (not just libvirt's
                # record) leaves none in the data volumes, which outlive the VM.
                for snap in dom.listAllSnapshots(0):
                    with suppress(libvirt.libvirtError):
                        snap.delete(0)
                dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                )
            except libvirt.libvirtError as exc:
                if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        self._cpu_samples.pop(dom.UUIDString(), None)
        self._delete_owned_volumes(conn, name)

    # --- VM-only operations (not in the contract yet) -----------------------------------
    async def reboot(self, instance_id: str, *, hard: bool = False) -> InstanceInfo:
        """Reboot a running VM: an ACPI request the guest carries out (``hard``: a
        reset, like the button). :class:`InvalidState` if it is not running."""
        return await self._run(self._reboot, instance_id, hard)

    def _reboot(self, instance_id: str, hard: bool) -> InstanceInfo:
        conn = self._connect()
        dom, md = self._ours(conn, instance_id)
        with self._translated(instance_id):
            if not dom.isActive():
                raise InvalidState("the VM is not running", instance_id=instance_id)
            if hard:
                dom.reset(0)
            else:
                dom.reboot(libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
            state = _dom_state(dom)
        return self._info(dom, md, state)

    async def resize(
        self,
        instance_id: str,
        *,
        cpu: float | None = None,
        memory_mb: int | None = None,
        disk_gb: int | None = None,
    ) -> InstanceInfo:
        """Change a stopped VM's cpu, memory (as :class:`InstanceSpec` means them)
        and/or root disk size (GiB, as :attr:`VmSpec.disk_gb`); None leaves one as it
        is. :class:`InvalidState` while the VM runs (``supports_resize`` means: while
        stopped).

        A root disk only grows: ``disk_gb`` below its size now is :class:`InvalidSpec`,
        equal changes nothing, and so is any ``disk_gb`` for a VM without a root disk.
        The guest sees the new size at its next boot; growing its partitions and
        file systems is the guest's business. The disk grows first: if changing cpu or
        memory then fails, the disk stays grown. Raises :class:`InstanceNotFound` if
        the VM is gone. (Reverting to a snapshot taken before the disk grew brings
        back the size of then: see :meth:`revert_snapshot`.)
        """
        return await self._run(self._resize, instance_id, cpu, memory_mb, disk_gb)

    def _resize(
        self,
        instance_id: str,
        cpu: float | None,
        memory_mb: int | None,
        disk_gb: int | None,
    ) -> InstanceInfo:
        if cpu is not None and not cpu > 0:
            raise InvalidSpec("cpu must be > 0")
        if memory_mb is not None and memory_mb < 1:
            raise InvalidSpec("memory_mb must be >= 1")
        if disk_gb is not None and (
            isinstance(disk_gb, bool) or not isinstance(disk_gb, int) or disk_gb < 1
        ):
            raise InvalidSpec("disk_gb must be a whole number of GiB >= 1")
        conn = self._connect()
        dom, md = self._ours(conn, instance_id)
        with self._translated(instance_id):
            if dom.isActive():
                raise InvalidState("stop the VM before resizing it", instance_id=instance_id)
            if disk_gb is not None:
                self._grow_root_disk(conn, md, disk_gb * _GIB, instance_id)
            if cpu is None and memory_mb is None:
                return self._info(dom, md, _dom_state(dom))
            # libvirtd's own XML: not untrusted input.
            root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))  # noqa: S314
            if memory_mb is not None:
                for tag in ("memory", "currentMemory"):
                    el = root.find(tag)
                    if el is None:
                        el = ET.SubElement(root, tag)
                    el.set("unit", "MiB")
                    el.text = str(memory_mb)
            if cpu is not None:
                vcpu = root.find("vcpu")
                if vcpu is None:
                    vcpu = ET.SubElement(root, "vcpu")
                vcpu.attrib.pop("current", None)
                vcpu.text = str(vcpus_for(cpu))
                _set_cpu_quota(root, cpu)
            dom = conn.defineXML(ET.tostring(root, encoding="unicode"))
            state = _dom_state(dom)
        return self._info(dom, md, state)

    def _grow_root_disk(
        self, conn: libvirt.virConnect, md: NefosMetadata, size: int, instance_id: str
    ) -> None:
        pool = self._storage_pool(conn)
        vol = self._volume(pool, f"{domain_name(md.nefos_id)}.root.qcow2")
        if vol is None:
            raise InvalidSpec("the VM has no root disk to grow", instance_id=instance_id)
        current = int(vol.info()[1])
        if size < current:
            raise InvalidSpec(
                f"the root disk is {current / _GIB:g} GiB; disks grow, they do not shrink",
                instance_id=instance_id,
            )
        if size > current:
            vol.resize(size, 0)

    # --- snapshots ------------------------------------------------------------------------
    async def snapshot(self, instance_id: str, snapshot_id: str) -> SnapshotInfo:
        """Take snapshot ``nefos-snap-<snapshot_id>`` of a stopped VM's writable disks.

        The snapshot is internal to each writable qcow2 disk (the root disk and any
        attached data volumes; the read-only seed is left out), with libvirt's record
        of it kept with the domain. On return :meth:`list_snapshots` shows it.

        Idempotent: a snapshot of that id that exists already is returned as it is
        (even while the VM runs). :class:`InvalidSpec` for a VM without a writable
        qcow2 disk (a kernel-boot VM made without ``disk_gb``); :class:`InvalidState`
        while the VM runs (a running VM's internal snapshot would need its memory
        too: stop it first). On failure libvirt has made nothing. Raises
        :class:`InstanceNotFound` if the VM is gone.
        """
        return await self._run(self._snapshot, instance_id, snapshot_id)

    def _snapshot(self, instance_id: str, snapshot_id: str) -> SnapshotInfo:
        _check_id("snapshot", snapshot_id)
        name = f"{_SNAPSHOT_PREFIX}{snapshot_id}"
        conn = self._connect()
        dom, _ = self._ours(conn, instance_id)
        with self._translated(instance_id):
            existing = _find_snapshot(dom, name)
            if existing is not None:
                return _snapshot_info(existing)
            disks = disks_of(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            writable = [d for d in disks if d.writable_file]
            if not writable:
                raise InvalidSpec(
                    "the VM has no disk to snapshot (create it with disk_gb or a disk image)",
                    instance_id=instance_id,
                )
            if odd := [d.target for d in writable if d.format != "qcow2"]:
                raise InvalidSpec(
                    f"only qcow2 disks take snapshots; {', '.join(odd)} are not",
                    instance_id=instance_id,
                )
            if dom.isActive():
                raise InvalidState("stop the VM before taking a snapshot", instance_id=instance_id)
            try:
                snap = dom.snapshotCreateXML(snapshot_xml(name, snapshot_id, disks), 0)
            except libvirt.libvirtError:
                existing = _find_snapshot(dom, name)  # taken meanwhile by another call
                if existing is None:
                    raise
                snap = existing
            return _snapshot_info(snap)

    async def revert_snapshot(self, instance_id: str, snapshot_id: str) -> None:
        """Bring a stopped VM's disks back to snapshot ``snapshot_id``.

        Every disk the snapshot holds (the root disk, and the data volumes attached
        when it was taken) returns to its content and size of then; the snapshot
        stays, so it can be reverted to again. The VM's configuration is today's,
        not the snapshot's: cpu, memory, labels and the volumes attached now are
        kept (a volume attached since is not reverted).

        :class:`InvalidState` while the VM runs, or while a data volume of the
        snapshot is attached to another VM; :class:`InvalidSpec` if there is no such
        snapshot; :class:`InstanceNotFound` if the VM is gone. If a disk of the
        snapshot has been deleted since (a data volume), the revert fails and the
        disks it reached may be reverted already.
        """
        await self._run(self._revert_snapshot, instance_id, snapshot_id)

    def _revert_snapshot(self, instance_id: str, snapshot_id: str) -> None:
        _check_id("snapshot", snapshot_id)
        conn = self._connect()
        dom, _ = self._ours(conn, instance_id)
        with self._translated(instance_id):
            snap = _find_snapshot(dom, f"{_SNAPSHOT_PREFIX}{snapshot_id}")
            if snap is None:
                raise InvalidSpec(
                    f"no snapshot {snapshot_id!r} of this VM", instance_id=instance_id
                )
            if dom.isActive():
                raise InvalidState("stop the VM before reverting it", instance_id=instance_id)
            # A data volume of the snapshot that another VM holds now is not ours to revert.
            uuid = dom.UUIDString()
            users = self._disk_users(conn)
            for path in _snapshot_disk_paths(snap):
                if users.get(path, uuid) != uuid:
                    raise InvalidState(
                        f"a disk of snapshot {snapshot_id!r} ({path}) is attached to "
                        f"another VM ({users[path]})",
                        instance_id=instance_id,
                    )
            # libvirt also puts back the configuration saved with the snapshot: keep today's.
            config = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
            try:
                dom.revertToSnapshot(snap, 0)
            finally:
                conn.defineXML(config)

    async def delete_snapshot(self, instance_id: str, snapshot_id: str) -> None:
        """Delete snapshot ``snapshot_id`` of a VM, running or not: on return it is
        gone from the VM's disks and from :meth:`list_snapshots`. A snapshot (or VM)
        that is gone already succeeds. Other snapshots are untouched."""
        await self._run(self._delete_snapshot, instance_id, snapshot_id)

    def _delete_snapshot(self, instance_id: str, snapshot_id: str) -> None:
        _check_id("snapshot", snapshot_id)
        conn = self._connect()
        try:
            dom, _ = self._ours(conn, instance_id)
        except InstanceNotFound:
            return  # its snapshots went with it
        with self._translated(instance_id):
            snap = _find_snapshot(dom, f"{_SNAPSHOT_PREFIX}{snapshot_id}")
            if snap is None:
                return
            try:
                snap.delete(0)
            except libvirt.libvirtError as exc:
                if _code(exc) not in (
                    libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT,
                    libvirt.VIR_ERR_NO_DOMAIN,
                ):
                    raise

    async def list_snapshots(self, instance_id: str) -> builtins.list[SnapshotInfo]:
        """The VM's Nefos snapshots (``nefos-snap-*``), oldest first. Raises
        :class:`InstanceNotFound` if the VM is gone."""
        return await self._run(self._read, self._list_snapshots, instance_id)

    def _list_snapshots(self, instance_id: str) -> builtins.list[SnapshotInfo]:
        conn = self._connect()
        dom, _ = self._ours(conn, instance_id)
        with self._translated(instance_id):
            found = [
                _snapshot_info(snap)
                for snap in dom.listAllSnapshots(0)
                if snap.getName().startswith(_SNAPSHOT_PREFIX)
            ]
        return sorted(found, key=lambda s: (s.created_at, s.name))

    # --- backups --------------------------------------------------------------------------
    async def backup(self, instance_id: str, backup_id: str) -> BackupInfo:
        """Copy a stopped VM's writable disks, whole, into the backup pool.

        Each writable disk (the root disk ``vda`` and any attached data volumes)
        becomes ``nefos-bak-<backup_id>.<target>.qcow2``: a full, standalone qcow2
        (its backing chain read through, no backing file; snapshots are not copied)
        that outlives the VM. ``VmSpec(root_from="nefos-bak-<id>.vda.qcow2")``
        restores the root disk into a new VM.

        Idempotent: when the backup pool holds exactly the volumes this backup would
        make, they are returned as they are (even while the VM runs). Leftovers of an
        interrupted backup of that id are replaced. On failure the volumes this call
        made are deleted. The backup pool is defined when missing (see the
        constructor). :class:`InvalidState` while the VM runs (its disks are being
        written); :class:`InvalidSpec` for a VM without a writable disk;
        :class:`InstanceNotFound` if the VM is gone.
        """
        return await self._run(self._backup, instance_id, backup_id)

    def _backup(self, instance_id: str, backup_id: str) -> BackupInfo:
        _check_id("backup", backup_id)
        prefix = f"{_BACKUP_PREFIX}{backup_id}."
        conn = self._connect()
        dom, _ = self._ours(conn, instance_id)
        with self._translated(instance_id):
            disks = disks_of(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            wanted = {f"{prefix}{d.target}.qcow2": d for d in disks if d.writable_file}
            if not wanted:
                raise InvalidSpec(
                    "the VM has no disk to back up (create it with disk_gb or a disk image)",
                    instance_id=instance_id,
                )
            pool = self._backup_storage(conn, create=True)
            if pool is None:  # create=True defines it
                raise DriverError(f"no backup pool {self.backup_pool!r}")
            with suppress(libvirt.libvirtError):
                pool.refresh(0)
            present = {v for v in pool.listVolumes() if v.startswith(prefix)}
            if present == set(wanted):
                return self._backup_info(pool, backup_id, present)
            if dom.isActive():
                raise InvalidState("stop the VM before backing it up", instance_id=instance_id)
            for name in present:  # an interrupted backup's leftovers
                self._volume_gone(pool, name)
            made: builtins.list[libvirt.virStorageVol] = []
            try:
                for name, disk in sorted(wanted.items()):
                    source = conn.storageVolLookupByPath(str(disk.source))
                    made.append(
                        self._copy_volume(pool, name, source, capacity=int(source.info()[1]))
                    )
            except BaseException:
                for vol in made:
                    with suppress(libvirt.libvirtError):
                        vol.delete(0)
                raise
            return self._backup_info(pool, backup_id, set(wanted))

    def _backup_info(
        self, pool: libvirt.virStoragePool, backup_id: str, names: set[str]
    ) -> BackupInfo:
        size = 0
        for name in names:
            vol = self._volume(pool, name)
            if vol is not None:
                size += _physical_size(vol)
        return BackupInfo(backup_id=backup_id, volumes=tuple(sorted(names)), size_bytes=size)

    def _volume_gone(self, pool: libvirt.virStoragePool, name: str) -> None:
        """Delete volume ``name`` of ``pool``; gone already is fine."""
        try:
            pool.storageVolLookupByName(name).delete(0)
        except libvirt.libvirtError as exc:
            if _code(exc) != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise

    async def delete_backup(self, backup_id: str) -> None:
        """Delete every volume of backup ``backup_id``; on return the backup pool has
        none. A backup that is gone already succeeds (as does a host without a backup
        pool). VMs restored from it are unaffected: their disks are copies."""
        await self._run(self._delete_backup, backup_id)

    def _delete_backup(self, backup_id: str) -> None:
        _check_id("backup", backup_id)
        prefix = f"{_BACKUP_PREFIX}{backup_id}."
        conn = self._connect()
        with self._translated():
            pool = self._backup_storage(conn, create=False)
            if pool is None:
                return
            with suppress(libvirt.libvirtError):
                pool.refresh(0)
            for name in pool.listVolumes():
                if name.startswith(prefix):
                    self._volume_gone(pool, name)

    async def list_backups(self) -> builtins.list[BackupInfo]:
        """Every backup in the backup pool (volumes named ``nefos-bak-<id>.<disk>.qcow2``),
        by id; empty when the host has no backup pool."""
        return await self._run(self._read, self._list_backups)

    def _list_backups(self) -> builtins.list[BackupInfo]:
        conn = self._connect()
        with self._translated():
            pool = self._backup_storage(conn, create=False)
            if pool is None:
                return []
            with suppress(libvirt.libvirtError):
                pool.refresh(0)
            by_id: dict[str, set[str]] = {}
            for name in pool.listVolumes():
                if m := _BACKUP_VOLUME.fullmatch(name):
                    by_id.setdefault(m.group(1), set()).add(name)
            return [self._backup_info(pool, bid, names) for bid, names in sorted(by_id.items())]

    # --- data volumes ---------------------------------------------------------------------
    async def create_volume(self, volume_id: str, *, size_gb: int) -> VolumeInfo:
        """Make data volume ``nefos-vol-<volume_id>.qcow2`` of ``size_gb`` GiB (blank,
        thin) in the instance pool; on return :meth:`list_volumes` shows it.

        Idempotent: a volume of that id and size is returned as it is; one of
        another size is :class:`InvalidSpec` (as is ``size_gb < 1``). On failure
        nothing is left.
        """
        return await self._run(self._create_volume, volume_id, size_gb)

    def _create_volume(self, volume_id: str, size_gb: int) -> VolumeInfo:
        _check_id("volume", volume_id)
        size = _gib(size_gb, "size_gb")
        name = _volume_name(volume_id)
        conn = self._connect()
        with self._translated():
            pool = self._storage_pool(conn)
            vol = self._volume(pool, name)
            if vol is None:
                try:
                    vol = pool.createXML(_volume_xml(name, size, "qcow2"), 0)
                except libvirt.libvirtError:
                    vol = self._volume(pool, name)  # made meanwhile by another call?
                    if vol is None:
                        raise
            if int(vol.info()[1]) != size:
                raise InvalidSpec(
                    f"volume {volume_id!r} exists with another size "
                    f"({int(vol.info()[1]) / _GIB:g} GiB)"
                )
            return self._volume_info(vol, self._disk_users(conn).get(vol.path()))

    async def resize_volume(self, volume_id: str, *, size_gb: int) -> VolumeInfo:
        """Grow data volume ``volume_id`` to ``size_gb`` GiB, attached or not.

        Attached to a running VM, QEMU grows it in place (``blockResize``) and the
        guest sees the new size at once; otherwise the file grows. Growing its
        partitions and file systems is the guest's business. Disks do not shrink:
        a smaller ``size_gb`` is :class:`InvalidSpec`, the same size changes nothing.
        :class:`InvalidSpec` too if there is no such volume.
        """
        return await self._run(self._resize_volume, volume_id, size_gb)

    def _resize_volume(self, volume_id: str, size_gb: int) -> VolumeInfo:
        _check_id("volume", volume_id)
        size = _gib(size_gb, "size_gb")
        conn = self._connect()
        with self._translated():
            vol = self._data_volume(conn, volume_id)
            path = vol.path()
            current = int(vol.info()[1])
            if size < current:
                raise InvalidSpec(
                    f"volume {volume_id!r} is {current / _GIB:g} GiB; "
                    "disks grow, they do not shrink"
                )
            if size > current:
                live = [
                    (dom, disk)
                    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                    for disk in disks_of(_live_xml(dom))
                    if disk.source == path
                ]
                if live:
                    dom, disk = live[0]
                    dom.blockResize(disk.target, size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
                else:
                    vol.resize(size, 0)
            pool = self._storage_pool(conn)
            with suppress(libvirt.libvirtError):
                pool.refresh(0)  # QEMU wrote the new size into the file: libvirt re-reads it
            vol = self._data_volume(conn, volume_id)
            return self._volume_info(vol, self._disk_users(conn).get(path))

    async def attach_volume(self, instance_id: str, volume_id: str) -> str:
        """Attach data volume ``volume_id`` to a VM; returns its disk (``vdb``, ``vdc``...).

        The disk is added to the VM's persistent configuration and, while it runs,
        hot-plugged into the guest as well (a virtio disk whose serial is the volume
        id, cut to 20 characters: ``/dev/disk/by-id/virtio-<id>``). The first free
        ``vd*`` name after ``vda`` (the root disk's) is taken.

        Idempotent: a volume attached to this VM already returns its disk (and is
        plugged into the running guest if it was only in the configuration).
        :class:`InvalidState` if another VM uses it (a volume has one VM at a time);
        :class:`InvalidSpec` if there is no such volume or no free disk name;
        :class:`InstanceNotFound` if the VM is gone. On failure nothing changed.
        """
        return await self._run(self._attach_volume, instance_id, volume_id)

    def _attach_volume(self, instance_id: str, volume_id: str) -> str:
        _check_id("volume", volume_id)
        conn = self._connect()
        dom, _ = self._ours(conn, instance_id)
        with self._translated(instance_id):
            path = self._data_volume(conn, volume_id).path()
            user = self._disk_users(conn).get(path)
            if user is not None and user != dom.UUIDString():
                raise InvalidState(
                    f"volume {volume_id!r} is attached to another VM ({user})",
                    instance_id=instance_id,
                )
            active = bool(dom.isActive())
            config = disks_of(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            live = disks_of(dom.XMLDesc(0)) if active else []
            in_config = next((d.target for d in config if d.source == path), None)
            in_live = next((d.target for d in live if d.source == path), None)
            if in_config is not None and (not active or in_live is not None):
                return in_config
            if in_live is not None:  # plugged in, but not in the configuration
                dom.attachDeviceFlags(
                    disk_xml(path, in_live, serial=volume_id[:20]),
                    libvirt.VIR_DOMAIN_AFFECT_CONFIG,
                )
                return in_live
            taken = {d.target for d in (*config, *live)}
            target = in_config or next(
                (f"vd{c}" for c in "bcdefghijklmnopqrstuvwxyz" if f"vd{c}" not in taken), None
            )
            if target is None:
                raise InvalidSpec("the VM has no free disk name left", instance_id=instance_id)
            flags = libvirt.VIR_DOMAIN_AFFECT_LIVE if active else 0
            if in_config is None:
                flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
            dom.attachDeviceFlags(disk_xml(path, target, serial=volume_id[:20]), flags)
            return target

    async def detach_volume(self, instance_id: str, volume_id: str) -> None:
        """Detach data volume ``volume_id`` from a VM.

        On return the VM's persistent configuration no longer has it. While the VM
        runs, the disk is also unplugged from the guest: an ACPI request that the
        guest's kernel carries out. A guest that does not within
        ``detach_timeout`` seconds (still booting, or ignoring it) keeps the disk
        until it stops (the request stays pending, and it may yet let go): the
        configuration-only detach stands, and the volume shows as attached to the
        VM (:attr:`VolumeInfo.attached_to`, and :meth:`delete_volume` refuses)
        until it is really free. Idempotent: a volume that is not attached, or a
        VM or volume that is gone, succeeds.
        """
        await self._run(self._detach_volume, instance_id, volume_id)

    def _detach_volume(self, instance_id: str, volume_id: str) -> None:
        _check_id("volume", volume_id)
        conn = self._connect()
        try:
            dom, _ = self._ours(conn, instance_id)
        except InstanceNotFound:
            return  # a VM that is gone holds nothing
        with self._translated(instance_id):
            pool = self._storage_pool(conn)
            vol = self._volume(pool, _volume_name(volume_id))
            path = (
                vol.path()
                if vol is not None
                else f"{self._pool_dir(pool)}/{_volume_name(volume_id)}"
            )
            config = disks_of(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            for disk in config:
                if disk.source == path:
                    dom.detachDeviceFlags(
                        disk_xml(path, disk.target), libvirt.VIR_DOMAIN_AFFECT_CONFIG
                    )
            if not dom.isActive():
                return
            live = [d for d in disks_of(dom.XMLDesc(0)) if d.source == path]
            for disk in live:
                try:
                    dom.detachDeviceFlags(
                        disk_xml(path, disk.target), libvirt.VIR_DOMAIN_AFFECT_LIVE
                    )
                except libvirt.libvirtError as exc:
                    if _is_unreachable(exc):
                        raise
                    return  # refused (an unplug pending, the VM stopping): config-only
            deadline = time.monotonic() + self.detach_timeout
            while live and time.monotonic() < deadline:
                try:
                    if not dom.isActive() or all(
                        d.source != path for d in disks_of(dom.XMLDesc(0))
                    ):
                        return
                except libvirt.libvirtError as exc:
                    if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                        return
                    raise
                time.sleep(0.2)

    async def delete_volume(self, volume_id: str) -> None:
        """Delete data volume ``volume_id`` and its data. On return the pool has no
        such volume; one that is gone already succeeds. :class:`InvalidState` while
        any domain (running or not) still refers to it: detach it first."""
        await self._run(self._delete_volume, volume_id)

    def _delete_volume(self, volume_id: str) -> None:
        _check_id("volume", volume_id)
        conn = self._connect()
        with self._translated():
            pool = self._storage_pool(conn)
            vol = self._volume(pool, _volume_name(volume_id))
            if vol is None:
                return
            user = self._disk_users(conn).get(vol.path())
            if user is not None:
                raise InvalidState(f"volume {volume_id!r} is attached to {user}: detach it first")
            self._volume_gone(pool, _volume_name(volume_id))

    async def list_volumes(self) -> builtins.list[VolumeInfo]:
        """Every data volume (``nefos-vol-*.qcow2``) of the instance pool, by name,
        with the VM each is attached to."""
        return await self._run(self._read, self._list_volumes)

    def _list_volumes(self) -> builtins.list[VolumeInfo]:
        conn = self._connect()
        with self._translated():
            pool = self._storage_pool(conn)
            users = self._disk_users(conn)
            found = [
                self._volume_info(vol, users.get(vol.path()))
                for vol in pool.listAllVolumes(0)
                if _DATA_VOLUME.fullmatch(vol.name())
            ]
        return sorted(found, key=lambda v: v.name)

    def _data_volume(self, conn: libvirt.virConnect, volume_id: str) -> libvirt.virStorageVol:
        vol = self._volume(self._storage_pool(conn), _volume_name(volume_id))
        if vol is None:
            raise InvalidSpec(f"no volume {volume_id!r}")
        return vol

    def _volume_info(self, vol: libvirt.virStorageVol, attached_to: str | None) -> VolumeInfo:
        _, capacity, allocation = cast("list[int]", vol.info())
        name = vol.name()
        return VolumeInfo(
            volume_id=name.removeprefix(_VOLUME_PREFIX).removesuffix(".qcow2"),
            name=name,
            size_gb=int(capacity) // _GIB,
            allocation_bytes=int(allocation),
            path=vol.path(),
            attached_to=attached_to,
        )

    def _disk_users(self, conn: libvirt.virConnect) -> dict[str, str]:
        """Host file -> UUID of a domain whose configuration or live XML has it as a
        disk (every domain: one not Nefos's holds a volume as much as ours)."""
        users: dict[str, str] = {}
        for dom in conn.listAllDomains(0):
            try:
                xmls = [dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)]
                if dom.isActive():
                    xmls.append(dom.XMLDesc(0))
            except libvirt.libvirtError as exc:
                if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # gone meanwhile
                raise
            for xml in xmls:
                for disk in disks_of(xml):
                    if disk.source is not None:
                        users.setdefault(disk.source, dom.UUIDString())
        return users

    # --- networks -------------------------------------------------------------------------
    async def create_network(
        self,
        network_id: str,
        *,
        project_id: str,
        cidr: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> NetworkInfo:
        """Make private network ``nefos-net-<network_id>``: persistent, started,
        autostarted with libvirtd.

        Isolated (no forwarding: its VMs reach each other and the host's bridge, not
        beyond), on bridge ``nfs<11 hex>``. With ``cidr`` (IPv4, at most a /30) the
        host takes its first address and hands out the rest by DHCP (libvirt runs
        dnsmasq: a host without it fails here, with libvirt's message); without, it
        is a bare layer-2 segment. It carries ``labels`` plus ``nefos.id``,
        ``nefos.project`` and ``nefos.managed=true`` in its metadata.
        ``VmSpec(network=info.name)`` puts a VM's NIC on it.

        Idempotent: a network of that id and project (and cidr) is returned as it
        is, started if it was not; its labels are not changed. One of another
        project or cidr, or a network of that name that is not Nefos's, is
        :class:`InvalidSpec`, as is a bad ``cidr`` or one that overlaps a network
        the host has already. On failure nothing is left.
        """
        return await self._run(
            self._create_network, network_id, project_id, cidr, dict(labels or {})
        )

    def _create_network(
        self, network_id: str, project_id: str, cidr: str | None, labels: dict[str, str]
    ) -> NetworkInfo:
        _check_id("network", network_id)
        if cidr is not None:
            try:
                cidr = normal_cidr(cidr)
            except ValueError as exc:
                raise InvalidSpec(f"cidr: {exc}") from exc
        plan = NetworkPlan(
            network_id=network_id,
            project_id=project_id,
            cidr=cidr,
            labels={
                **labels,
                LABEL_ID: network_id,
                LABEL_PROJECT: project_id,
                LABEL_MANAGED: "true",
            },
        )
        conn = self._connect()
        with self._translated():
            net = self._network(conn, plan.name)
            if net is None:
                try:
                    net = conn.networkDefineXML(network_xml(plan))
                except libvirt.libvirtError:
                    net = self._network(conn, plan.name)  # defined meanwhile by another call?
                    if net is None:
                        raise
                else:
                    try:
                        net.create()
                        net.setAutostart(1)
                    except BaseException as exc:
                        with suppress(libvirt.libvirtError):
                            if net.isActive():
                                net.destroy()
                        with suppress(libvirt.libvirtError):
                            net.undefine()
                        if isinstance(exc, libvirt.libvirtError) and "in use" in _explain(exc):
                            raise InvalidSpec(f"network {network_id!r}: {_explain(exc)}") from exc
                        raise
            found = parse_network(net.XMLDesc(0))
            if found is None:
                raise InvalidSpec(f"a network named {plan.name!r} exists and is not Nefos's")
            if (found.project_id, found.cidr) != (project_id, cidr):
                raise InvalidSpec(
                    f"network {network_id!r} exists with another project or cidr "
                    f"({found.project_id}, {found.cidr})"
                )
            if not net.isActive():
                try:
                    net.create()
                except libvirt.libvirtError:
                    if not net.isActive():  # else started meanwhile
                        raise
                net.setAutostart(1)
            return _network_info(net, found)

    async def delete_network(self, network_id: str) -> None:
        """Stop and undefine network ``network_id``. On return the host has no such
        network; one that is gone already (or that is not Nefos's) succeeds and is
        left alone. :class:`InvalidState` while any domain's NIC, running or in its
        configuration, is on it: destroy those VMs first."""
        await self._run(self._delete_network, network_id)

    def _delete_network(self, network_id: str) -> None:
        _check_id("network", network_id)
        name = network_name(network_id)
        conn = self._connect()
        with self._translated():
            net = self._network(conn, name)
            if net is None or parse_network(net.XMLDesc(0)) is None:
                return
            for dom in conn.listAllDomains(0):
                try:
                    xmls = [dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)]
                    if dom.isActive():
                        xmls.append(dom.XMLDesc(0))
                except libvirt.libvirtError as exc:
                    if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                        continue
                    raise
                if any(name in networks_of(xml) for xml in xmls):
                    raise InvalidState(
                        f"network {network_id!r} is in use by domain {dom.name()!r}",
                        instance_id=dom.UUIDString(),
                    )
            try:
                if net.isActive():
                    net.destroy()
                net.undefine()
            except libvirt.libvirtError as exc:
                if _code(exc) != libvirt.VIR_ERR_NO_NETWORK:
                    raise

    async def list_networks(
        self, labels: Mapping[str, str] | None = None
    ) -> builtins.list[NetworkInfo]:
        """Every Nefos-made network (``nefos.managed=true``) on the host that also
        carries all of ``labels``, by name."""
        return await self._run(self._read, self._list_networks, dict(labels or {}))

    def _list_networks(self, labels: dict[str, str]) -> builtins.list[NetworkInfo]:
        wanted = {**labels, LABEL_MANAGED: "true"}
        conn = self._connect()
        found = []
        with self._translated():
            for net in conn.listAllNetworks(0):
                if not net.name().startswith(NETWORK_PREFIX):
                    continue
                try:
                    parsed = parse_network(net.XMLDesc(0))
                    if parsed is None or any(parsed.labels.get(k) != v for k, v in wanted.items()):
                        continue
                    found.append(_network_info(net, parsed))
                except libvirt.libvirtError as exc:
                    if _code(exc) != libvirt.VIR_ERR_NO_NETWORK:  # gone meanwhile
                        raise
        return sorted(found, key=lambda n: n.name)

    def _network(self, conn: libvirt.virConnect, name: str) -> libvirt.virNetwork | None:
        try:
            return conn.networkLookupByName(name)
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_NETWORK:
                return None
            raise

    # --- inspection -----------------------------------------------------------------------
    async def get(self, instance_id: str) -> InstanceInfo:
        return await self._run(self._read, self._get, instance_id)

    async def list(self, labels: Mapping[str, str] | None = None) -> list[InstanceInfo]:
        return await self._run(self._read, self._list, dict(labels or {}))

    def _list(self, labels: dict[str, str]) -> builtins.list[InstanceInfo]:
        """One listing (domains with their state), then each ``nefos-*`` domain's
        metadata: libvirt has no bulk metadata call."""
        wanted = {**labels, LABEL_MANAGED: "true"}
        conn = self._connect()
        found = []
        with self._translated():
            listing = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0)
            for dom, stats in listing:
                if not dom.name().startswith("nefos-"):
                    continue
                md = self._metadata(dom)
                if md is None or any(md.labels.get(k) != v for k, v in wanted.items()):
                    continue
                state = state_of(
                    int(stats.get("state.state", 0)), int(stats.get("state.reason", 0))
                )
                found.append(self._info(dom, md, state))
        return found

    async def counters(self, instance_ids: Sequence[str]) -> dict[str, InstanceCounters]:
        return await self._bounded(self._read, self._counters, list(instance_ids))

    def _counters(self, instance_ids: builtins.list[str]) -> dict[str, InstanceCounters]:
        conn = self._connect()
        doms: dict[str, libvirt.virDomain] = {}
        for instance_id in instance_ids:
            try:
                doms[instance_id], _ = self._ours(conn, instance_id)
            except InstanceNotFound:
                continue
        if not doms:
            return {}
        kinds = (
            libvirt.VIR_DOMAIN_STATS_STATE
            | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
            | libvirt.VIR_DOMAIN_STATS_BALLOON
            | libvirt.VIR_DOMAIN_STATS_VCPU
            | libvirt.VIR_DOMAIN_STATS_INTERFACE
            | libvirt.VIR_DOMAIN_STATS_BLOCK
        )
        with self._translated():
            limits = {i: int(d.maxMemory()) * _KIB for i, d in doms.items()}
            # One call for every domain: the host answers for all of them at once.
            records = conn.domainListGetStats(builtins.list(doms.values()), kinds, 0)
        read_at = time.monotonic()
        by_uuid = {dom.UUIDString(): raw for dom, raw in records}
        out: dict[str, InstanceCounters] = {}
        for instance_id, dom in doms.items():
            raw = by_uuid.get(dom.UUIDString())
            if raw is not None:
                out[instance_id] = counters_from(raw, limits[instance_id], read_at)
        return out

    async def host_usage(self) -> HostUsage | None:
        return await self._bounded(self._read, self._host_usage)

    def _host_usage(self) -> HostUsage:
        conn = self._connect()
        with self._translated():
            cpu = cast("dict[str, int]", conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS))
            memory = cast(
                "dict[str, int]", conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
            )
        busy = int(cpu.get("kernel", 0)) + int(cpu.get("user", 0))
        idle = int(cpu.get("idle", 0)) + int(cpu.get("iowait", 0))
        total = int(memory.get("total", 0))
        free = sum(int(memory.get(k, 0)) for k in ("free", "buffers", "cached"))
        return HostUsage(
            cpu_busy_ns=busy,
            cpu_total_ns=busy + idle,
            memory_used_bytes=max(total - free, 0) * _KIB,
            memory_total_bytes=total * _KIB,
            read_at=time.monotonic(),
        )

    async def stats(self, instance_id: str) -> InstanceStats:
        return await self._run(self._read, self._stats, instance_id)

    def _stats(self, instance_id: str) -> InstanceStats:
        conn = self._connect()
        dom, _ = self._ours(conn, instance_id)
        kinds = (
            libvirt.VIR_DOMAIN_STATS_STATE
            | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
            | libvirt.VIR_DOMAIN_STATS_BALLOON
            | libvirt.VIR_DOMAIN_STATS_INTERFACE
        )
        with self._translated(instance_id):
            limit = int(dom.maxMemory()) * _KIB
            uuid = dom.UUIDString()
            [(_, raw)] = conn.domainListGetStats([dom], kinds, 0)
            if int(raw.get("state.state", 0)) not in (
                libvirt.VIR_DOMAIN_RUNNING,
                libvirt.VIR_DOMAIN_BLOCKED,
                libvirt.VIR_DOMAIN_SHUTDOWN,
            ):
                self._cpu_samples.pop(uuid, None)
                return InstanceStats(0.0, 0, limit, 0.0, 0, 0)
            now = time.monotonic()
            previous = self._cpu_samples.get(uuid)
            if previous is None or now - previous[1] > 60:
                # No recent sample to compare with: take a second one shortly.
                previous = (int(raw.get("cpu.time", 0)), now)
                time.sleep(0.25)
                [(_, raw)] = conn.domainListGetStats([dom], kinds, 0)
                now = time.monotonic()
        self._cpu_samples[uuid] = (int(raw.get("cpu.time", 0)), now)
        return stats_from(raw, limit, previous, (int(raw.get("cpu.time", 0)), now))

    async def guest_addresses(self, instance_id: str) -> builtins.list[str]:
        """The IPv4 addresses a running guest holds on libvirt networks, as their
        DHCP server leased them (libvirt's lease source: the network's dnsmasq, not the
        guest's word), in NIC order; ``[]`` when it has none yet (still booting, or
        its NIC is on no network). :class:`NotFound` if the domain is not ours."""
        return await self._run(self._read, self._guest_addresses, instance_id)

    def _guest_addresses(self, instance_id: str) -> builtins.list[str]:
        conn = self._connect()
        dom, _ = self._ours(conn, instance_id)
        with self._translated(instance_id):
            if not dom.isActive():
                return []
            try:
                source = libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE
                found: dict[str, Any] = dom.interfaceAddresses(source) or {}  # type: ignore[assignment]
            except libvirt.libvirtError:
                return []  # a NIC on no network has no lease source
        out = []
        for _name, nic in sorted(found.items()):
            for a in nic.get("addrs") or []:
                if a.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4 and a.get("addr"):
                    out.append(str(a["addr"]))
        return out

    async def logs(
        self,
        instance_id: str,
        *,
        tail: int = 100,
        since: datetime | None = None,
        until: datetime | None = None,
        timestamps: bool = False,
    ) -> str:
        if since is not None or until is not None or timestamps:
            raise Unsupported("A VM's console log keeps no times (supports_log_times)")
        return await self._run(self._read, self._logs, instance_id, tail)

    async def open_console(self, instance_id: str, *, force: bool = False) -> Shell:
        opening = _Opening(asyncio.get_running_loop(), self._run)
        try:
            console = await self._bounded(self._open_console, instance_id, force, opening)
        except BaseException:
            opening.give_up()  # timed out or cancelled: a console opened late is closed
            raise
        with self._consoles_lock:
            self._consoles.add(console)
        return console

    def _open_console(self, instance_id: str, force: bool, opening: _Opening) -> SerialConsole:
        conn = self._connect()
        dom, _ = self._ours(conn, instance_id)
        with self._translated(instance_id):
            if not dom.isActive():
                raise InvalidState("the VM is not running", instance_id=instance_id)
            stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        flags = libvirt.VIR_DOMAIN_CONSOLE_SAFE
        if force:
            flags |= libvirt.VIR_DOMAIN_CONSOLE_FORCE
        try:
            # None: the first console device (the serial port's).
            dom.openConsole(None, stream, flags)  # type: ignore[arg-type]
        except libvirt.libvirtError as exc:
            with suppress(libvirt.libvirtError):
                stream.abort()
            if "active console session" in _explain(exc).lower():
                raise InvalidState(
                    "another console is open on this VM", instance_id=instance_id
                ) from exc
            with self._translated(instance_id):
                raise
        return opening.opened(stream, conn)

    def _logs(self, instance_id: str, tail: int) -> str:
        conn = self._connect()
        _, md = self._ours(conn, instance_id)
        if tail <= 0:
            return ""
        with self._translated(instance_id):
            pool = self._storage_pool(conn)
            vol = self._volume(pool, f"{domain_name(md.nefos_id)}.console.log")
            if vol is None:
                return ""
            size = int(vol.info()[1])
            chunk = 64 * 1024
            while True:
                offset = max(0, size - chunk)
                data = self._download(conn, vol, offset, size - offset)
                # A serial console ends lines with CRLF (and strays CRs): drop them all.
                text = data.decode("utf-8", errors="replace").replace("\r", "")
                lines = text.splitlines()
                if offset > 0 and lines:
                    lines = lines[1:]  # the first line may have started before the chunk
                if offset == 0 or len(lines) >= tail:
                    break
                chunk *= 4
        kept = lines[-tail:]
        return "\n".join(kept) + "\n" if kept else ""

    async def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            await self._run(_close_quietly, conn)


def _check_id(kind: str, value: object) -> None:
    if not isinstance(value, str) or not _OBJECT_ID.fullmatch(value):
        raise InvalidSpec(f"invalid {kind} id {value!r}: 1-63 letters, digits, _ and -")


def _find_snapshot(dom: libvirt.virDomain, name: str) -> libvirt.virDomainSnapshot | None:
    try:
        return dom.snapshotLookupByName(name, 0)
    except libvirt.libvirtError as exc:
        if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            return None
        raise


def _snapshot_info(snap: libvirt.virDomainSnapshot) -> SnapshotInfo:
    # libvirtd's own XML: not untrusted input.
    root = ET.fromstring(snap.getXMLDesc(0))  # noqa: S314
    name = snap.getName()
    return SnapshotInfo(
        snapshot_id=name.removeprefix(_SNAPSHOT_PREFIX),
        name=name,
        created_at=datetime.fromtimestamp(int(root.findtext("creationTime") or 0), UTC),
        state=root.findtext("state") or "",
    )


def _network_info(net: libvirt.virNetwork, parsed: ParsedNetwork) -> NetworkInfo:
    return NetworkInfo(
        network_id=parsed.network_id,
        name=net.name(),
        cidr=parsed.cidr,
        bridge=parsed.bridge,
        active=bool(net.isActive()),
        labels=dict(parsed.labels),
    )


def _volume_name(volume_id: str) -> str:
    return f"{_VOLUME_PREFIX}{volume_id}.qcow2"


def _gib(value: object, what: str) -> int:
    """``value`` GiB in bytes, checked: a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidSpec(f"{what} must be a whole number of GiB >= 1")
    return value * _GIB


def _snapshot_disk_paths(snap: libvirt.virDomainSnapshot) -> set[str]:
    """Host files of the disks an internal snapshot is in (from the domain
    definition libvirt saved with it)."""
    # libvirtd's own XML: not untrusted input.
    root = ET.fromstring(snap.getXMLDesc(0))  # noqa: S314
    internal = {
        d.get("name") for d in root.findall("disks/disk") if d.get("snapshot") == "internal"
    }
    saved = root.find("domain")
    if saved is None:
        return set()
    return {
        d.source
        for d in disks_of(ET.tostring(saved, encoding="unicode"))
        if d.target in internal and d.source is not None
    }


def _physical_size(vol: libvirt.virStorageVol) -> int:
    """A volume's size on the host (a file's byte size), not its virtual capacity."""
    return int(vol.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2])


def _live_xml(dom: libvirt.virDomain) -> str:
    """A running domain's XML; an empty domain's if it was destroyed meanwhile."""
    try:
        return str(dom.XMLDesc(0))
    except libvirt.libvirtError as exc:
        if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return "<domain/>"
        raise


def _referenced_paths(dom: libvirt.virDomain) -> set[str]:
    """Every host file a domain's persistent and live XML name: kernel, initrd, disks."""
    paths: set[str] = set()
    flags = [libvirt.VIR_DOMAIN_XML_INACTIVE]
    if dom.isActive():
        flags.append(0)
    for flag in flags:
        # libvirtd's own XML: not untrusted input.
        root = ET.fromstring(dom.XMLDesc(flag))  # noqa: S314
        for tag in ("os/kernel", "os/initrd"):
            if text := root.findtext(tag):
                paths.add(text)
        for src in root.iter("source"):
            if file := src.get("file"):
                paths.add(file)
    return paths


def _volume_xml(name: str, capacity: int, fmt: str, backing: tuple[str, str] | None = None) -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type=fmt)
    ET.SubElement(ET.SubElement(target, "permissions"), "mode").text = "0600"
    if fmt == "qcow2":
        # qcow2 v3 (libvirt's default is v2, which cannot grow once it has snapshots).
        ET.SubElement(target, "compat").text = "1.1"
    if backing is not None:
        store = ET.SubElement(vol, "backingStore")
        ET.SubElement(store, "path").text = backing[0]
        ET.SubElement(store, "format", type=backing[1])
    return ET.tostring(vol, encoding="unicode")


def _is_image_name(name: str) -> bool:
    return (
        bool(_IMAGE_NAME.fullmatch(name)) and ".." not in name and not _NOT_AN_IMAGE.fullmatch(name)
    )


def _no_prompt(uri: str, scheme: str) -> str:
    """``uri`` with ``no_tty=1`` when its transport is ssh and it does not say."""
    if not scheme.endswith(("+ssh", "+libssh", "+libssh2")) or "no_tty=" in uri:
        return uri
    return uri + ("&" if "?" in uri else "?") + "no_tty=1"


def _close_quietly(conn: libvirt.virConnect) -> None:
    with suppress(libvirt.libvirtError):
        conn.close()


def _vm_fields(spec: InstanceSpec) -> tuple[str | None, tuple[str, ...]]:
    """A spec's user data and SSH keys (checked, as :func:`_vm_options` has them)."""
    opts = _vm_options(spec)
    return opts.user_data, opts.ssh_keys


def _vm_options(spec: InstanceSpec) -> _VmOptions:
    """A spec's VM-only fields (a VmSpec's, or attributes of those names), checked."""
    user_data = getattr(spec, "user_data", None)
    keys = getattr(spec, "ssh_keys", ()) or ()
    if user_data is not None and not isinstance(user_data, str):
        raise InvalidSpec("user_data must be text")
    if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
        raise InvalidSpec("ssh_keys must be a sequence of strings")
    disk_gb = getattr(spec, "disk_gb", 0) or 0
    if isinstance(disk_gb, bool) or not isinstance(disk_gb, int) or disk_gb < 0:
        raise InvalidSpec("disk_gb must be a whole number of GiB >= 0")
    cmdline = getattr(spec, "kernel_cmdline", None)
    if cmdline is not None and (
        not isinstance(cmdline, str)
        or not cmdline.strip()
        or any(c in cmdline for c in "\n\r\0")
        or len(cmdline) > _MAX_CMDLINE
    ):
        raise InvalidSpec(f"kernel_cmdline must be one line of 1-{_MAX_CMDLINE} characters")
    network = getattr(spec, "network", None)
    if network is not None and (
        not isinstance(network, str) or not _OBJECT_NAME.fullmatch(network)
    ):
        raise InvalidSpec(f"{network!r} is not a libvirt network name")
    root_from = getattr(spec, "root_from", None)
    if root_from is not None and (
        not isinstance(root_from, str) or not _VOLUME_NAME.fullmatch(root_from)
    ):
        raise InvalidSpec(f"{root_from!r} is not a volume name")
    return _VmOptions(
        user_data=user_data,
        ssh_keys=tuple(keys),
        disk_gb=disk_gb,
        kernel_cmdline=cmdline,
        network=network,
        root_from=root_from,
    )


def _set_cpu_quota(root: ET.Element, cpu: float) -> None:
    tune = root.find("cputune")
    if tune is not None:
        for tag in ("global_period", "global_quota"):
            for el in tune.findall(tag):
                tune.remove(el)
    quota = cpu_quota_us(cpu)
    if quota is None:
        return
    if tune is None:
        tune = ET.SubElement(root, "cputune")
    ET.SubElement(tune, "global_period").text = str(CPU_PERIOD_US)
    ET.SubElement(tune, "global_quota").text = str(quota)


def counters_from(raw: Mapping[str, Any], limit: int, read_at: float) -> InstanceCounters:
    """One domain's stats record (``virConnectGetAllDomainStats``) as counters;
    memory as :func:`stats_from` reads it."""
    running = int(raw.get("state.state", 0)) in (
        libvirt.VIR_DOMAIN_RUNNING,
        libvirt.VIR_DOMAIN_BLOCKED,
        libvirt.VIR_DOMAIN_SHUTDOWN,
    )
    cpus = float(raw.get("vcpu.current", 0) or raw.get("vcpu.maximum", 0) or 1)
    if not running:
        limit = int(raw.get("balloon.maximum", 0)) * _KIB or limit
        return InstanceCounters(False, 0, cpus, 0, limit, 0, 0, 0, 0, read_at)
    now = stats_from(raw, limit, (0, 0.0), (0, 0.0))  # memory and network only
    read = write = 0
    for i in range(int(raw.get("block.count", 0))):
        read += int(raw.get(f"block.{i}.rd.bytes", 0))
        write += int(raw.get(f"block.{i}.wr.bytes", 0))
    return InstanceCounters(
        running=True,
        cpu_time_ns=int(raw.get("cpu.time", 0)),
        cpus=cpus,
        memory_bytes=now.memory_bytes,
        memory_limit_bytes=now.memory_limit_bytes,
        net_rx_bytes=now.net_rx_bytes,
        net_tx_bytes=now.net_tx_bytes,
        disk_read_bytes=read,
        disk_write_bytes=write,
        read_at=read_at,
    )


def stats_from(
    raw: Mapping[str, Any],
    limit: int,
    previous: tuple[int, float],
    current: tuple[int, float],
) -> InstanceStats:
    """One running domain's stats record (``virConnectGetAllDomainStats``) as
    InstanceStats; cpu from two (cpu.time ns, monotonic s) samples.

    Memory is what the guest itself uses, as its balloon driver reports it
    (available - unused - disk caches: page cache is reclaimable, as docker's
    figure leaves it out). A guest without a balloon driver reports nothing; then
    QEMU's resident memory stands in, capped at the VM's size (it also counts
    QEMU's own memory, so it is an upper bound).
    """
    limit = int(raw.get("balloon.maximum", 0)) * _KIB or limit
    if "balloon.available" in raw and "balloon.unused" in raw:
        used = (
            int(raw["balloon.available"])
            - int(raw["balloon.unused"])
            - int(raw.get("balloon.disk_caches", 0))
        ) * _KIB
    else:
        used = int(raw.get("balloon.rss", 0)) * _KIB
    used = min(max(used, 0), limit) if limit else max(used, 0)
    cpu_ns = current[0] - previous[0]
    wall_s = current[1] - previous[1]
    cpu_percent = max(cpu_ns / (wall_s * 1e9) * 100.0, 0.0) if wall_s > 0 else 0.0
    rx = tx = 0
    for i in range(int(raw.get("net.count", 0))):
        rx += int(raw.get(f"net.{i}.rx.bytes", 0))
        tx += int(raw.get(f"net.{i}.tx.bytes", 0))
    return InstanceStats(
        cpu_percent=cpu_percent,
        memory_bytes=used,
        memory_limit_bytes=limit,
        memory_percent=(used / limit * 100.0) if limit else 0.0,
        net_rx_bytes=rx,
        net_tx_bytes=tx,
    )
