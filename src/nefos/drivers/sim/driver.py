"""Simulated hosts in memory: for scheduler scale benchmarks and demos, never a default.

NOTHING HERE IS REAL. A ``sim`` host is a record in this process's memory: its
instances are rows in a dict, "running" is a field, no process runs, nothing
listens on any port, and no isolation or limit is enforced. Nefos drives a sim
host only when an operator registers one with driver ``sim``; no setting,
default or fallback ever picks this driver.

URI. ``sim://<hostname>?cpus=16&memory_mb=65536&disk_gb=1000``; each parameter
is optional (those are the defaults) and must be a positive integer. Anything
else (another scheme, no hostname, a port, a path, an unknown or repeated
parameter) is :class:`InvalidSpec`. The capacity is the URI's: two URIs for one
hostname may report different capacities.

State. The instances of a sim host live in a registry of this module, keyed by
the hostname (case-insensitive), so every :class:`SimDriver` for one hostname in
one process sees the same instances (the services layer and a test each make
their own driver). Another process sees an empty host.

Images. A sim host has every image except those whose reference starts with
``missing`` or contains ``does-not-exist``: creating from one of those raises
:class:`ImageNotFound`, so tests and demos can ask for a missing image.

Instances. As with the docker driver, an instance's host name is
``nefos-<nefos_id>`` (so one Nefos instance has at most one per host) and its
``driver_id`` is a generated 64-digit hex id; every method that takes an
instance id accepts either. ``spec.ports`` are recorded but never published
(``supports_ports`` is false): ``InstanceInfo.ports`` is always empty.

Stats are deterministic: cpu and memory are a fixed share of the instance's
limits derived from its ``nefos_id``, and the network counters grow by a fixed
step per sample taken while it runs (they restart from zero at each start, as a
container's new network namespace does). Anything not running reports zero.

Logs are lifecycle lines (``sim: created ...``, ``sim: started: <command>``,
``sim: stopped ...``, ``sim: crashed ...``); the start line quotes the command
the instance would run, since no command runs.

Faults, for tests: :func:`set_reachable` (an unreachable host raises
:class:`HostUnreachable` from every call, ``ping`` included; ``close`` still
succeeds), :func:`crash` (the instance stops or breaks behind Nefos's back),
:func:`remove` (it vanishes), :func:`reset` (forget hosts). :func:`recorded_spec`
reads what the host recorded for an instance without going through a driver.

Concurrency. The methods are ``async`` but never await: each call runs to the
end under one module lock, so concurrent tasks (or threads, or event loops) see
every call as atomic.
"""

from __future__ import annotations

import builtins
import hashlib
import math
import re
import secrets
import shlex
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

from nefos.drivers.base import (
    LABEL_ID,
    LABEL_MANAGED,
    LABEL_PROJECT,
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
    InvalidSpec,
    InvalidState,
)

SCHEME = "sim"
DEFAULT_CPUS = 16
DEFAULT_MEMORY_MB = 65536
DEFAULT_DISK_GB = 1000
#: Lines of log an instance keeps (the oldest go first).
LOG_LINES = 1000

_MIB = 1024**2
_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")
# The Engine API's rule for container names, so sim and docker refuse the same ids.
_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_POSITIVE_INT = re.compile(r"[0-9]+")
#: The smallest memory limit the Engine API accepts (6 MB); the sim refuses the same.
_MIN_MEMORY_MB = 6


def container_name(nefos_id: str) -> str:
    return f"nefos-{nefos_id}"


def image_is_missing(image: str) -> bool:
    """The sim's one rule for images: those starting ``missing`` or holding
    ``does-not-exist`` are absent; every other image is present."""
    ref = image.lower()
    return ref.startswith("missing") or "does-not-exist" in ref


# --- the URI ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SimHostConfig:
    """A parsed ``sim://`` URI."""

    host: str  # lower-cased: the registry key
    cpus: int = DEFAULT_CPUS
    memory_mb: int = DEFAULT_MEMORY_MB
    disk_gb: int = DEFAULT_DISK_GB


def parse_uri(uri: str) -> SimHostConfig:
    """``sim://<hostname>?cpus=&memory_mb=&disk_gb=`` -> config; :class:`InvalidSpec` if bad."""

    def bad(why: str) -> InvalidSpec:
        return InvalidSpec(f"invalid sim URI {uri!r}: {why}")

    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise bad(str(exc)) from exc
    if parts.scheme.lower() != SCHEME:
        raise bad("the scheme must be sim://")
    host = (parts.hostname or "").lower()
    if not _HOSTNAME.fullmatch(host) or "@" in parts.netloc:
        raise bad("it needs a hostname (letters, digits, '.', '-', '_'), nothing more")
    if port is not None or parts.netloc.endswith(":"):
        raise bad("a sim host has no port")
    if parts.path not in ("", "/") or parts.fragment:
        raise bad("a sim host has no path or fragment")
    values: dict[str, int] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise bad(str(exc)) from exc
    for key, raw in pairs:
        if key not in ("cpus", "memory_mb", "disk_gb"):
            raise bad(f"unknown parameter {key!r} (cpus, memory_mb, disk_gb)")
        if key in values:
            raise bad(f"{key} is given twice")
        if not _POSITIVE_INT.fullmatch(raw) or len(raw) > 18 or int(raw) < 1:
            raise bad(f"{key} must be a positive integer, not {raw!r}")
        values[key] = int(raw)
    return SimHostConfig(host=host, **values)


def _host_key(host: str) -> str:
    """A hook's ``host``: a hostname, or a whole sim:// URI."""
    return parse_uri(host).host if "://" in host else host.lower()


# --- the simulated hosts ------------------------------------------------------------------
@dataclass(eq=False)
class _Instance:
    driver_id: str
    container_name: str
    spec: InstanceSpec
    labels: dict[str, str]
    state: InstanceState = InstanceState.CREATED
    #: (when, line) of each line, oldest first.
    log: deque[tuple[datetime, str]] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    samples: int = 0  # stats samples taken since the last start
    started_at: float = 0.0  # time.monotonic() of the last start

    def say(self, line: str) -> None:
        self.log.append((datetime.now(UTC), line))


@dataclass(eq=False)
class _Host:
    reachable: bool = True
    instances: dict[str, _Instance] = field(default_factory=dict)  # by driver id
    names: dict[str, str] = field(default_factory=dict)  # container name -> driver id

    def find(self, instance_id: str) -> _Instance:
        inst = self.instances.get(instance_id)
        if inst is None and instance_id in self.names:
            inst = self.instances[self.names[instance_id]]
        if inst is None:
            raise InstanceNotFound(
                f"no such instance on the sim host: {instance_id}", instance_id=instance_id
            )
        return inst

    def drop(self, inst: _Instance) -> None:
        del self.instances[inst.driver_id]
        del self.names[inst.container_name]


_LOCK = threading.Lock()
_HOSTS: dict[str, _Host] = {}


def _host(key: str) -> _Host:
    """The host record, made on first use. The caller holds ``_LOCK``."""
    host = _HOSTS.get(key)
    if host is None:
        host = _HOSTS[key] = _Host()
    return host


# --- fault hooks (tests and demos) ---------------------------------------------------------
def set_reachable(host: str, reachable: bool) -> None:
    """Make the sim host answer (``True``) or not: while it does not, every driver
    call for it raises :class:`HostUnreachable`, ``ping`` included (``close`` never
    does). Its instances are kept, and are there again when it answers."""
    with _LOCK:
        _host(_host_key(host)).reachable = reachable


def crash(host: str, instance_id: str, *, state: InstanceState = InstanceState.STOPPED) -> None:
    """The instance stops behind Nefos's back: ``STOPPED`` (it exited; ``start``
    runs it again) or ``ERROR`` (it is dead: ``start`` raises :class:`InvalidState`,
    ``stop`` leaves it ``STOPPED``, ``destroy`` removes it). Raises
    :class:`InstanceNotFound` if the host has no such instance."""
    if state not in (InstanceState.STOPPED, InstanceState.ERROR):
        raise ValueError(f"a crash leaves an instance stopped or in error, not {state}")
    with _LOCK:
        inst = _host(_host_key(host)).find(instance_id)
        inst.state = state
        inst.samples = 0
        how = "exited" if state is InstanceState.STOPPED else "dead"
        inst.say(f"sim: crashed: {how} behind Nefos's back (simulated fault)")


def remove(host: str, instance_id: str) -> None:
    """The instance vanishes from the host, as if someone removed it by hand.
    Raises :class:`InstanceNotFound` if the host has no such instance."""
    with _LOCK:
        sim = _host(_host_key(host))
        sim.drop(sim.find(instance_id))


def reset(host: str | None = None) -> None:
    """Forget one sim host (its instances and reachability), or every one."""
    with _LOCK:
        if host is None:
            _HOSTS.clear()
        else:
            _HOSTS.pop(_host_key(host), None)


def recorded_spec(host: str, instance_id: str) -> InstanceSpec:
    """The spec the sim host recorded for an instance (its limits included): the
    host's own view, read without a driver. Raises :class:`InstanceNotFound`."""
    with _LOCK:
        return _host(_host_key(host)).find(instance_id).spec


# --- the driver ----------------------------------------------------------------------------
class SimDriver(ComputeDriver):
    """A SIMULATED host held in memory, for benchmarks and demos; never a default.

    Nothing runs and nothing is isolated: see the module's docstring for the rules
    it simulates (URI, shared state, images, stats, logs, fault hooks).
    """

    name = "sim"

    _CAPABILITIES = Capabilities(
        kind=InstanceKind.CONTAINER,
        supports_ports=False,  # nothing listens: ports are recorded, never published
        supports_stats=True,
        supports_logs=True,
        supports_log_times=True,
    )

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.config = parse_uri(uri)
        self._closed = False
        self._first_read: float | None = None

    @property
    def capabilities(self) -> Capabilities:
        return self._CAPABILITIES

    @contextmanager
    def _reach(self) -> Iterator[_Host]:
        """The host record, under the lock, if the driver is open and the host answers."""
        with _LOCK:
            if self._closed:
                raise DriverError(f"the sim driver for {self.config.host!r} is closed")
            host = _host(self.config.host)
            if not host.reachable:
                raise HostUnreachable(f"sim host {self.config.host!r} does not answer (simulated)")
            yield host

    # --- host -------------------------------------------------------------------------
    async def ping(self) -> None:
        with self._reach():
            pass

    async def capacity(self) -> HostCapacity:
        with self._reach():
            return HostCapacity(
                cpus=self.config.cpus,
                memory_mb=self.config.memory_mb,
                disk_gb=self.config.disk_gb,
            )

    # --- lifecycle --------------------------------------------------------------------
    async def create(self, spec: InstanceSpec) -> InstanceInfo:
        with self._reach() as host:
            # Every check comes before anything is made, so a failure leaves nothing.
            name = container_name(spec.nefos_id)
            self._check(spec, name)
            if image_is_missing(spec.image):
                raise ImageNotFound(
                    f"no such image on the sim host: {spec.image} (the sim lacks images "
                    "starting 'missing' or containing 'does-not-exist')"
                )
            if name in host.names:
                raise InvalidSpec(
                    f"the name {name!r} is already in use on the sim host",
                    instance_id=host.names[name],
                )
            inst = _Instance(
                driver_id=secrets.token_hex(32),
                container_name=name,
                spec=spec,
                labels=spec.all_labels(),
            )
            inst.say(
                f"sim: created {name} from {spec.image} (cpu {spec.cpu:g}, "
                f"memory {spec.memory_mb} MiB, pids {spec.pids_limit})"
            )
            host.instances[inst.driver_id] = inst
            host.names[name] = inst.driver_id
            return _info(inst)

    def _check(self, spec: InstanceSpec, name: str) -> None:
        """Refuse what the Engine API would refuse, with the same rules."""
        problems = []
        if not _CONTAINER_NAME.fullmatch(name):
            problems.append(f"the name {name!r} is not a valid instance name")
        if not spec.image.strip():
            problems.append("the image is empty")
        if not (math.isfinite(spec.cpu) and 0 < spec.cpu <= self.config.cpus):
            problems.append(f"cpu must be above 0 and at most the host's {self.config.cpus}")
        if spec.memory_mb < _MIN_MEMORY_MB:
            problems.append(f"memory_mb must be at least {_MIN_MEMORY_MB}")
        for p in spec.ports:
            if not 0 < p.container_port < 65536 or not (
                p.host_port is None or 0 < p.host_port < 65536
            ):
                problems.append(f"port {p.container_port}->{p.host_port} is out of range")
        if problems:
            raise InvalidSpec("; ".join(problems))

    async def start(self, instance_id: str) -> InstanceInfo:
        with self._reach() as host:
            inst = host.find(instance_id)
            if inst.state is InstanceState.ERROR:
                raise InvalidState(
                    "the instance is dead (a simulated crash): destroy it",
                    instance_id=instance_id,
                )
            if inst.state is not InstanceState.RUNNING:
                inst.state = InstanceState.RUNNING
                inst.samples = 0
                inst.started_at = time.monotonic()
                command = inst.spec.command
                what = shlex.join(command) if command is not None else "the image's command"
                inst.say(f"sim: started: {what}")
            return _info(inst)

    async def stop(self, instance_id: str, *, grace_seconds: float = 10) -> InstanceInfo:
        with self._reach() as host:
            inst = host.find(instance_id)
            if inst.state is not InstanceState.STOPPED:
                inst.state = InstanceState.STOPPED
                inst.samples = 0
                inst.say(f"sim: stopped (grace {max(grace_seconds, 0):g}s)")
            return _info(inst)

    async def destroy(self, instance_id: str) -> None:
        with self._reach() as host:
            try:
                inst = host.find(instance_id)
            except InstanceNotFound:
                return
            host.drop(inst)

    # --- inspection -------------------------------------------------------------------
    async def get(self, instance_id: str) -> InstanceInfo:
        with self._reach() as host:
            return _info(host.find(instance_id))

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[InstanceInfo]:
        wanted = {**(labels or {}), LABEL_MANAGED: "true"}
        with self._reach() as host:
            return [
                _info(inst)
                for inst in host.instances.values()
                if all(inst.labels.get(k) == v for k, v in wanted.items())
            ]

    async def stats(self, instance_id: str) -> InstanceStats:
        with self._reach() as host:
            return _stats(host.find(instance_id))

    async def counters(self, instance_ids: Sequence[str]) -> dict[str, InstanceCounters]:
        out: dict[str, InstanceCounters] = {}
        with self._reach() as host:
            for instance_id in instance_ids:
                try:
                    out[instance_id] = _counters(host.find(instance_id))
                except InstanceNotFound:
                    continue
        return out

    async def host_usage(self) -> HostUsage | None:
        """The instances' simulated use; CPU time as if the host was up since the
        driver's first read, busy with its running instances' shares."""
        with self._reach() as host:
            now = time.monotonic()
            busy = sum(_counters(i, now).cpu_time_ns for i in host.instances.values())
            memory = sum(_counters(i, now).memory_bytes for i in host.instances.values())
        if self._first_read is None:
            self._first_read = now
        total = int((now - self._first_read) * self.config.cpus * 1e9) + 1
        return HostUsage(
            cpu_busy_ns=min(busy, total),
            cpu_total_ns=total,
            memory_used_bytes=memory,
            memory_total_bytes=self.config.memory_mb * _MIB,
            read_at=now,
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
        with self._reach() as host:
            entries = builtins.list(host.find(instance_id).log)
        lines = [
            f"{when.isoformat().replace('+00:00', 'Z')} {line}" if timestamps else line
            for when, line in entries
            if (since is None or when > since) and (until is None or when <= until)
        ]
        if tail <= 0 or not lines:
            return ""
        return "\n".join(lines[-tail:]) + "\n"

    async def close(self) -> None:
        """Mark the driver closed; the host and its instances live on (other drivers
        for it keep working). Closing twice is fine."""
        self._closed = True


def _info(inst: _Instance) -> InstanceInfo:
    return InstanceInfo(
        driver_id=inst.driver_id,
        nefos_id=inst.labels.get(LABEL_ID),
        project_id=inst.labels.get(LABEL_PROJECT),
        name=inst.spec.name,
        image=inst.spec.image,
        state=inst.state,
        ports=(),
        labels=dict(inst.labels),
    )


def _counters(inst: _Instance, now: float | None = None) -> InstanceCounters:
    """Counters that grow at the instance's fixed shares (see :func:`_stats`) since
    its last start: cpu time with its cpu share, network bytes per second."""
    now = time.monotonic() if now is None else now
    limit = inst.spec.memory_mb * _MIB
    if inst.state is not InstanceState.RUNNING:
        return InstanceCounters(False, 0, inst.spec.cpu, 0, limit, 0, 0, 0, 0, now)
    seed = int.from_bytes(hashlib.sha256(inst.spec.nefos_id.encode()).digest()[:8], "big")
    cpu_share = 0.05 + (seed % 451) / 1000
    memory_share = 0.10 + ((seed >> 16) % 401) / 1000
    up = max(now - inst.started_at, 0.0)
    return InstanceCounters(
        running=True,
        cpu_time_ns=int(up * inst.spec.cpu * cpu_share * 1e9),
        cpus=inst.spec.cpu,
        memory_bytes=max(1, int(limit * memory_share)),
        memory_limit_bytes=limit,
        net_rx_bytes=int(up * (4096 + (seed >> 32) % 61440)),
        net_tx_bytes=int(up * (2048 + (seed >> 48) % 30720)),
        disk_read_bytes=int(up * 1024),
        disk_write_bytes=int(up * 512),
        read_at=now,
    )


def _stats(inst: _Instance) -> InstanceStats:
    """A deterministic sample: shares of the limits fixed by the nefos id, network
    counters one fixed step further per sample while running."""
    limit = inst.spec.memory_mb * _MIB
    if inst.state is not InstanceState.RUNNING:
        return InstanceStats(0.0, 0, limit, 0.0, 0, 0)
    inst.samples += 1
    seed = int.from_bytes(hashlib.sha256(inst.spec.nefos_id.encode()).digest()[:8], "big")
    cpu_share = 0.05 + (seed % 451) / 1000  # 5-50 % of its cores
    memory_share = 0.10 + ((seed >> 16) % 401) / 1000  # 10-50 % of its memory
    used = max(1, int(limit * memory_share))
    rx_step = 4096 + (seed >> 32) % 61440  # bytes per sample
    tx_step = 2048 + (seed >> 48) % 30720
    return InstanceStats(
        cpu_percent=round(inst.spec.cpu * 100.0 * cpu_share, 3),
        memory_bytes=used,
        memory_limit_bytes=limit,
        memory_percent=used / limit * 100.0,
        net_rx_bytes=rx_step * inst.samples,
        net_tx_bytes=tx_step * inst.samples,
    )
