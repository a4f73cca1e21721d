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
    ``<name>.vmlinuz`` + ``<name>.initrd`` (kernel boot), or ``<name>.qcow2`` (a
    disk the VM boots from; each VM gets a copy-on-write overlay of it).
Anything else is :class:`ImageNotFound`. A bzImage's setup header says how much
memory it needs to unpack itself; a spec with less is :class:`InvalidSpec` rather
than a guest that reboots forever.

Per-instance files are volumes of the (directory) pool, named after the domain,
so they are reachable over remote URIs too and ``destroy`` removes them all:
``nefos-<id>.console.log`` (the serial console, written by virtlogd, read by
:meth:`logs`), ``nefos-<id>.seed.iso`` (the NoCloud seed: instance id, hostname,
SSH keys, user data) and ``nefos-<id>.root.qcow2`` (disk images only).

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
"""

from __future__ import annotations

import asyncio
import builtins
import math
import re
import secrets
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import libvirt

from nefos.drivers.base import (
    LABEL_MANAGED,
    Capabilities,
    ComputeDriver,
    DriverError,
    HostCapacity,
    HostUnreachable,
    ImageNotFound,
    InstanceInfo,
    InstanceKind,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
    InstanceStats,
    InsufficientCapacity,
    InvalidSpec,
    InvalidState,
)
from nefos.drivers.libvirt import seed as seeds
from nefos.drivers.libvirt.domain import (
    CPU_PERIOD_US,
    DEFAULT_CMDLINE,
    KERNEL_HEADER_BYTES,
    NAMESPACE,
    BootSource,
    DomainPlan,
    DomainType,
    NefosMetadata,
    cpu_quota_us,
    domain_xml,
    kernel_min_memory_mb,
    parse_metadata,
    probe_xml,
    vcpus_for,
)

T = TypeVar("T")

DomainTypeSetting = Literal["auto", "kvm", "qemu"]

_MIB = 1024**2
_KIB = 1024
# The Engine API's rule for container names: one rule for every driver's ids.
_NEFOS_ID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
#: Suffixes of the volumes an instance owns (virtlogd rotates the log to .log.N).
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
    """An InstanceSpec with what only a VM takes: cloud-init user data and SSH keys."""

    user_data: str | None = None
    ssh_keys: tuple[str, ...] = ()


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


class LibvirtDriver(ComputeDriver):
    """A :class:`ComputeDriver` for one libvirt URI (``qemu:///system``, ``qemu+ssh://...``)."""

    name = "libvirt"

    _CAPABILITIES = Capabilities(
        kind=InstanceKind.VM,
        supports_stats=True,
        supports_logs=True,
        supports_resize=True,  # cpu and memory while stopped; disks not yet
        supports_reboot=True,
        supports_user_data=True,
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
    ) -> None:
        """``timeout`` bounds :meth:`ping` and :meth:`capacity` (a hung libvirtd fails
        fast); ``probe_timeout`` is how long the kvm probe guest may take."""
        parts = urlsplit(uri)
        if not parts.scheme or not re.fullmatch(r"(qemu|test)(\+[a-z0-9]+)?", parts.scheme):
            raise ValueError(f"not a libvirt QEMU URI: {uri!r} (e.g. qemu:///system)")
        if domain_type not in ("auto", "kvm", "qemu"):
            raise ValueError(f"domain_type must be auto, kvm or qemu, not {domain_type!r}")
        self.uri = uri
        self.pool = pool
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self.network = network
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

    @property
    def capabilities(self) -> Capabilities:
        return self._CAPABILITIES

    @property
    def domain_type(self) -> DomainType | None:
        """The domain type in use: the setting, or the probe's answer (None before it)."""
        return self._resolved_type

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

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
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise HostUnreachable(
                    f"libvirt unreachable at {self.uri}: {_explain(exc)}"
                ) from exc
            return self._conn

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
                f"libvirt at {self.uri} did not answer in {self.timeout}s"
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
        vol = ET.Element("volume")
        ET.SubElement(vol, "name").text = name
        ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
        target = ET.SubElement(vol, "target")
        ET.SubElement(target, "format", type=fmt)
        ET.SubElement(ET.SubElement(target, "permissions"), "mode").text = "0600"
        if backing is not None:
            store = ET.SubElement(vol, "backingStore")
            ET.SubElement(store, "path").text = backing[0]
            ET.SubElement(store, "format", type=backing[1])
        return pool.createXML(ET.tostring(vol, encoding="unicode"), 0)

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
        if not _IMAGE_NAME.fullmatch(image) or ".." in image:
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
            disk = self._volume(pool, f"{image}.qcow2")
            if disk is not None:
                return _Image(BootSource(base_disk=disk.path()))
        raise ImageNotFound(
            f"image {image!r} not found: no {image}.vmlinuz or {image}.qcow2 in pool "
            f"{self.pool!r}" + (f", nor {self.image_dir / image}/vmlinuz" if self.image_dir else "")
        )

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
        user_data, ssh_keys = _vm_fields(spec)
        conn = self._connect()
        image = self._resolve_image(conn, spec.image)
        if image.min_memory_mb is not None and spec.memory_mb < image.min_memory_mb:
            raise InvalidSpec(
                f"image {spec.image!r} needs at least {image.min_memory_mb} MiB of memory "
                f"to boot; the spec gives {spec.memory_mb} MiB"
            )
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
        domain_type = self._domain_type_for(conn, image.boot)
        hostname = seeds.hostname_for(spec.name, name)
        seed_iso = self._seed(spec, user_data, ssh_keys, hostname)
        plan = DomainPlan(
            name=name,
            domain_type=domain_type,
            cpu=spec.cpu,
            memory_mb=spec.memory_mb,
            boot=image.boot,
            console_log=f"{pool_dir}/{name}.console.log",
            seed=f"{pool_dir}/{name}.seed.iso",
            root_disk=f"{pool_dir}/{name}.root.qcow2" if image.boot.base_disk else None,
            network=self.network,
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
                if image.boot.base_disk is not None:
                    base = conn.storageVolLookupByPath(image.boot.base_disk)
                    self._new_volume(
                        pool,
                        f"{name}.root.qcow2",
                        capacity=int(base.info()[1]),
                        fmt="qcow2",
                        backing=(image.boot.base_disk, "qcow2"),
                    )
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
        self, instance_id: str, *, cpu: float | None = None, memory_mb: int | None = None
    ) -> InstanceInfo:
        """Change a stopped VM's cpu and/or memory (as :class:`InstanceSpec` means
        them); :class:`InvalidState` while it runs. Disks do not grow yet."""
        return await self._run(self._resize, instance_id, cpu, memory_mb)

    def _resize(self, instance_id: str, cpu: float | None, memory_mb: int | None) -> InstanceInfo:
        if cpu is not None and not cpu > 0:
            raise InvalidSpec("cpu must be > 0")
        if memory_mb is not None and memory_mb < 1:
            raise InvalidSpec("memory_mb must be >= 1")
        conn = self._connect()
        dom, md = self._ours(conn, instance_id)
        with self._translated(instance_id):
            if dom.isActive():
                raise InvalidState("stop the VM before resizing it", instance_id=instance_id)
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

    async def logs(self, instance_id: str, *, tail: int = 100) -> str:
        return await self._run(self._read, self._logs, instance_id, tail)

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


def _close_quietly(conn: libvirt.virConnect) -> None:
    with suppress(libvirt.libvirtError):
        conn.close()


def _vm_fields(spec: InstanceSpec) -> tuple[str | None, tuple[str, ...]]:
    """A spec's user data and SSH keys: a VmSpec's, or attributes of that name."""
    user_data = getattr(spec, "user_data", None)
    keys = getattr(spec, "ssh_keys", ()) or ()
    if user_data is not None and not isinstance(user_data, str):
        raise InvalidSpec("user_data must be text")
    if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
        raise InvalidSpec("ssh_keys must be a sequence of strings")
    return user_data, tuple(keys)


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
