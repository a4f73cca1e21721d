"""Wire schemas of hosts (seed 003 "resources"), containers (seed 004) and operations."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator

from nefos.domain.units import parse_cpu_milli, parse_memory_mb, parse_port, parse_storage_gb
from nefos.schemas.common import Id, Pagination, Request
from nefos.schemas.monitoring import UsageNow

# --- hosts -----------------------------------------------------------------------------
HostDriver = Literal["docker", "libvirt", "sim"]
_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def _hostname(value: str) -> str:
    if not _HOSTNAME.match(value):
        raise ValueError("letters, digits, '.' and '-', 1-253 characters")
    return value


def _ip(value: str | None) -> str | None:
    if value is not None:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("an IPv4 or IPv6 address, such as 192.168.1.10") from None
    return value


class HostCreate(Request):
    """Seed 003's body, plus where Nefos reaches the host.

    With no ``driver``/``uri`` they follow from ``hypervisor_type`` and
    ``ip_address``: ``kvm``/``qemu`` -> libvirt at ``qemu+ssh://root@IP/system``,
    ``docker``/``podman`` -> docker at ``tcp://IP:2376``. The capacity fields are used
    only while the host cannot be reached; once it answers its own figures win.
    """

    hostname: Annotated[str, AfterValidator(_hostname)]
    ip_address: Annotated[str | None, Field(max_length=64), AfterValidator(_ip)] = None
    cpu_cores: Annotated[int | None, Field(ge=1, le=100_000)] = None
    memory_gb: Annotated[float | None, Field(gt=0, le=1_000_000)] = None
    storage_gb: Annotated[int | None, Field(ge=0, le=100_000_000)] = None
    hypervisor_type: Annotated[str | None, Field(max_length=32)] = None
    driver: HostDriver | None = None
    uri: Annotated[str | None, Field(min_length=3, max_length=1000)] = None
    max_instances: Annotated[int | None, Field(ge=1, le=1_000_000)] = None
    enabled: bool = True


class HostUsage(BaseModel):
    cpu_cores: float
    memory_gb: float
    storage_gb: int
    instances: int


class HostPublic(BaseModel):
    id: str
    hostname: str
    ip_address: str | None
    driver: str
    uri: str
    hypervisor_type: str
    status: str = Field(examples=["active"], description="active, offline, draining")
    enabled: bool
    cpu_cores: int
    memory_gb: float
    memory_mb: int
    storage_gb: int
    max_instances: int | None
    used: HostUsage
    last_error: str | None
    last_seen_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ClassStats(BaseModel):
    count: int
    running: int
    cpu_cores: float
    memory_gb: float
    storage_gb: int


class ResourceStats(BaseModel):
    """Seed 003's ``/resources/stats``, plus a breakdown per resource class and driver."""

    total_hosts: int
    active_hosts: int
    total_cpu_cores: int
    total_memory_gb: float
    total_storage_gb: int
    used_cpu_cores: float
    used_memory_gb: float
    used_storage_gb: int
    utilization_percentage: float
    by_class: dict[str, ClassStats]
    by_driver: dict[str, int]


# --- operations ------------------------------------------------------------------------
class OperationRef(BaseModel):
    id: str
    status: str
    url: str


class HostRemoved(BaseModel):
    message: str
    host_id: str


class HostDraining(HostRemoved):
    """A 202: the host carries instances and is being drained; follow ``operation``."""

    operation: OperationRef


class OperationPublic(BaseModel):
    id: str
    kind: str = Field(examples=["container.create"])
    resource_type: str
    resource_id: str
    project_id: str | None
    status: str = Field(description="pending, running, succeeded, failed, cancelled")
    progress: int
    attempts: int
    result: dict[str, Any] | None
    error: dict[str, Any] | None = None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


# --- containers ------------------------------------------------------------------------
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_IMAGE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._/:@+-]{0,499}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("1-63 characters: letters, digits, '_', '.', '-'; first a letter or digit")
    return value


def _image(value: str) -> str:
    if not _IMAGE.match(value):
        raise ValueError("an image reference such as 'nginx:alpine' or 'localhost/app:1'")
    return value


class ContainerResources(Request):
    cpu: Annotated[str, Field(max_length=16, examples=["1.0"])] = "0.5"
    memory: Annotated[str, Field(max_length=16, examples=["512m"])] = "256m"
    storage: Annotated[str | None, Field(max_length=16, examples=["10Gi"])] = None

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = str(v)
        if isinstance(v, str):
            parse_cpu_milli(v)
        return v

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = str(v)
        if isinstance(v, str):
            parse_memory_mb(v)
        return v

    @field_validator("storage", mode="before")
    @classmethod
    def _storage(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = str(v)
        if isinstance(v, str):
            parse_storage_gb(v)
        return v

    @property
    def cpu_milli(self) -> int:
        return parse_cpu_milli(self.cpu)

    @property
    def memory_mb(self) -> int:
        return parse_memory_mb(self.memory)

    @property
    def storage_gb(self) -> int:
        return parse_storage_gb(self.storage) if self.storage else 0


class ContainerCreate(Request):
    """Seed 004's body. ``project_id`` may also come as a query or ``X-Project-ID``."""

    name: Annotated[str, AfterValidator(_name)]
    image: Annotated[str, AfterValidator(_image)]
    ports: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=32)] = []
    environment: Annotated[
        dict[str, Annotated[str, Field(max_length=32_768)]], Field(max_length=256)
    ] = {}
    resources: ContainerResources = ContainerResources()
    command: (
        Annotated[list[Annotated[str, Field(max_length=4096)]], Field(min_length=1, max_length=256)]
        | Annotated[str, Field(min_length=1, max_length=8192)]
        | None
    ) = None
    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    project_id: Id | None = None

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[str]) -> list[str]:
        seen: set[tuple[int, str]] = set()
        for text in v:
            p = parse_port(text)
            key = (p.container_port, p.protocol)
            if key in seen:
                raise ValueError(f"container port {p.container_port}/{p.protocol} twice")
            seen.add(key)
        return v

    @field_validator("environment")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not _ENV_KEY.match(key):
                raise ValueError(f"invalid variable name {key[:40]!r}")
        return v


class ContainerUpdate(Request):
    """A rolling update: what is given replaces what was (``resources`` field by
    field; ``command: null`` goes back to the image's own). Nothing changed: 200."""

    image: Annotated[str, AfterValidator(_image)] | None = None
    environment: (
        Annotated[dict[str, Annotated[str, Field(max_length=32_768)]], Field(max_length=256)] | None
    ) = None
    command: (
        Annotated[list[Annotated[str, Field(max_length=4096)]], Field(min_length=1, max_length=256)]
        | Annotated[str, Field(min_length=1, max_length=8192)]
        | None
    ) = None
    resources: ContainerResources | None = None

    @field_validator("environment")
    @classmethod
    def _env(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for key in v or {}:
            if not _ENV_KEY.match(key):
                raise ValueError(f"invalid variable name {key[:40]!r}")
        return v


class ContainerScale(Request):
    replicas: Annotated[int, Field(ge=1, le=64)]
    strategy: Literal["rolling", "recreate"] = "rolling"


class PublishedEndpoint(BaseModel):
    replica: int
    container_port: int
    protocol: str
    host_ip: str
    host_port: int
    host: str | None = None
    mesh: bool = Field(
        False,
        description="Published by Nefos's port mesh: Nefos listens on `host_port` and "
        "balances connections over the replicas (which then share the host).",
    )
    instance_port: int | None = Field(
        None, description="With `mesh`: the replica's own host port the mesh forwards to."
    )


class ReplicaPublic(BaseModel):
    slot: int
    state: str
    host_id: str
    generation: int = Field(1, description="The container's generation this replica runs.")


class ContainerMetrics(BaseModel):
    cpu_usage: float = Field(description="Percent of the container's CPU limit in use.")
    memory_usage: float = Field(description="Percent of the memory limit in use.")
    network_io: str = Field(examples=["1.2MB/s"])
    memory_bytes: int = 0
    net_rx_bytes: int = 0
    net_tx_bytes: int = 0
    replicas_reporting: int = 0


class ContainerPublic(BaseModel):
    id: str
    user_id: str | None
    project_id: str
    name: str
    image: str
    status: str = Field(
        description="creating, starting, running, stopping, stopped, scaling, updating, "
        "deleting, error"
    )
    status_reason: str | None = None
    ports: list[str]
    endpoint: str | None = Field(
        None,
        description="The service's stable HTTP endpoint on Nefos's ingress (its first "
        "TCP port, balanced over the running replicas); null without a TCP port.",
        examples=["http://web-app-1a2b3c4d.apps.localhost:8000/"],
    )
    endpoints: list[PublishedEndpoint] = []
    environment: dict[str, str]
    command: list[str] | None
    resources: dict[str, str]
    replicas: int
    generation: int = Field(
        1,
        description="The spec's generation: each rolling update (`PUT`) moves it on, a "
        "rollback moves it back.",
    )
    replica_states: list[ReplicaPublic] = []
    metrics: ContainerMetrics | None = None
    usage: UsageNow | None = Field(
        None,
        description="In lists: the collector's last figures (CPU and memory in % of the "
        "limits, network), null when it has none from its last few passes.",
    )
    created_at: datetime
    updated_at: datetime


class ContainerAccepted(BaseModel):
    """A 202: the container in its transitional state and the operation to follow."""

    message: str
    container_id: str
    container: ContainerPublic
    operation: OperationRef
    replicas: int | None = None


class ContainerUpdated(BaseModel):
    """A ``PUT`` that changed nothing (200): the container as it is."""

    message: str
    container_id: str
    container: ContainerPublic


class ContainerList(BaseModel):
    items: list[ContainerPublic]
    containers: list[ContainerPublic] = Field(description="Seed 004's name for `items`.")
    pagination: Pagination


class ContainerLogs(BaseModel):
    container_id: str
    logs: str
    replicas: list[dict[str, Any]]
