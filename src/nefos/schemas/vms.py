"""Wire schemas of virtual machines (seeds 000, 001, 003) and what they use: images,
volumes, networks, snapshots and backups (seed 001)."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator

from nefos.schemas.common import Id, Request
from nefos.schemas.compute import OperationRef
from nefos.schemas.monitoring import UsageNow

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_OS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_SSH_KEY = re.compile(
    r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)"
    r" [A-Za-z0-9+/=]+( [^\r\n]{0,512})?$"
)
#: The most user data a NoCloud seed carries (cloud-init's own limit on EC2 is 16 KiB).
MAX_USER_DATA = 64 * 1024


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("1-63 characters: letters, digits, '_', '.', '-'; first a letter or digit")
    return value


def _os(value: str) -> str:
    if value and not _OS.match(value):
        raise ValueError("letters, digits, '.', '_', '+', '-' (up to 64)")
    return value


Name = Annotated[str, AfterValidator(_name)]
OsField = Annotated[str, Field(max_length=64), AfterValidator(_os)]


# --- images ----------------------------------------------------------------------------
ImageFormat = Literal["kernel", "qcow2", "raw", "docker"]


class ImageCreate(Request):
    """Register an image.

    A VM image from files on the Nefos server (platform admins only): ``path`` is a
    qcow2 or raw disk file, or a directory holding ``vmlinuz`` and ``initrd.img``
    (and optionally ``cmdline``); or ``kernel_path`` + ``initrd_path``. A container
    image is a ``reference`` (``nginx:alpine``), which hosts pull when they need it.
    ``checksum`` (``sha256:<hex>`` or the hex alone) is verified against the disk
    file, or against the kernel then the initrd concatenated.
    """

    name: Name
    os_type: OsField = ""
    os_version: OsField = ""
    description: Annotated[str, Field(max_length=2000)] = ""
    kind: Literal["vm", "container"] = "vm"
    path: Annotated[str | None, Field(min_length=1, max_length=1000)] = None
    kernel_path: Annotated[str | None, Field(min_length=1, max_length=1000)] = None
    initrd_path: Annotated[str | None, Field(min_length=1, max_length=1000)] = None
    kernel_cmdline: Annotated[str | None, Field(max_length=1000)] = None
    format: Literal["qcow2", "raw"] | None = None
    reference: Annotated[str | None, Field(min_length=1, max_length=500)] = None
    checksum: Annotated[str | None, Field(max_length=80)] = None
    min_disk_gb: Annotated[int, Field(ge=0, le=100_000)] = 0
    public: bool | None = Field(
        None,
        description="Visible to every project (platform admins only; default for "
        "images registered from server paths).",
    )
    project_id: Id | None = None

    @field_validator("checksum")
    @classmethod
    def _checksum(cls, v: str | None) -> str | None:
        if v is None:
            return v
        hexpart = v.removeprefix("sha256:").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", hexpart):
            raise ValueError("a SHA-256: 64 hex digits, optionally prefixed 'sha256:'")
        return hexpart

    @model_validator(mode="after")
    def _source(self) -> ImageCreate:
        if self.kind == "container":
            if not self.reference or self.path or self.kernel_path or self.initrd_path:
                raise ValueError("a container image takes `reference` alone")
        else:
            if self.reference:
                raise ValueError("`reference` is for container images (kind: container)")
            if bool(self.path) == bool(self.kernel_path):
                raise ValueError("give `path`, or `kernel_path` (with `initrd_path`)")
            if self.initrd_path and not self.kernel_path:
                raise ValueError("`initrd_path` goes with `kernel_path`")
        return self


class ImagePublic(BaseModel):
    id: str
    name: str
    kind: str = Field(description="vm or container")
    format: str = Field(description="kernel, qcow2, raw or docker")
    os_type: str
    os_version: str
    description: str
    project_id: str | None = Field(description="null: a public image")
    public: bool
    source: str
    kernel_cmdline: str | None
    checksum: str | None = Field(description="sha256 of the image's content")
    size_bytes: int
    min_disk_gb: int
    min_memory_mb: int | None = Field(
        None, description="The least memory (MiB) the image boots in, when known"
    )
    status: str = Field(description="pending, active, error, deleting")
    status_reason: str | None
    created_at: datetime
    updated_at: datetime


class ImageAccepted(BaseModel):
    message: str
    image_id: str
    image: ImagePublic
    operation: OperationRef | None = None


class ImageDeleted(BaseModel):
    """A 200: a container image reference, deleted at once."""

    message: str
    image_id: str


# --- virtual machines ------------------------------------------------------------------
class VmCreate(Request):
    """Seed 003's body, plus what seed 001 and cloud-init add.

    ``image_id`` names the image; without it, the newest active image visible to
    the project whose ``os_type`` (and ``os_version``, if given) match is used.
    ``memory_gb`` may be fractional (0.25 = 256 MiB); ``memory_mb`` is an exact
    alternative. ``flavor`` is recorded as given.
    """

    name: Name
    os_type: OsField = ""
    os_version: OsField = ""
    cpu_cores: Annotated[int, Field(ge=1, le=256)] = 1
    memory_gb: Annotated[float | None, Field(gt=0, le=4096)] = None
    memory_mb: Annotated[int | None, Field(ge=64, le=4 * 1024 * 1024)] = None
    storage_gb: Annotated[int, Field(ge=0, le=65_536)] = 10
    image_id: Id | None = None
    flavor: Annotated[str | None, Field(max_length=64)] = None
    user_data: Annotated[str | None, Field(max_length=MAX_USER_DATA)] = None
    ssh_keys: Annotated[list[Annotated[str, Field(max_length=16_384)]], Field(max_length=32)] = []
    network_id: Id | None = None
    project_id: Id | None = None
    service_port: Annotated[int | None, Field(ge=1, le=65_535)] = Field(
        None,
        description="The TCP port the guest serves on: the VM is then a service "
        "(`GET /services`), checked and reached at its address on its network "
        "(`network_id`, a network with a subnet).",
    )

    @field_validator("ssh_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        out = []
        for key in v:
            key = key.strip()
            if not _SSH_KEY.match(key):
                raise ValueError(
                    "each key is one OpenSSH public key line ('ssh-ed25519 AAAA... comment')"
                )
            out.append(key)
        return out

    @model_validator(mode="after")
    def _sizes(self) -> VmCreate:
        if self.memory_gb is not None and self.memory_mb is not None:
            raise ValueError("give memory_gb or memory_mb, not both")
        if not self.image_id and not self.os_type:
            raise ValueError("give image_id, or os_type (and os_version) to match an image")
        return self

    @property
    def resolved_memory_mb(self) -> int:
        if self.memory_mb is not None:
            return self.memory_mb
        # Never raised to a floor here: the service refuses a size below the image's
        # (or the platform's) least, naming it.
        return round((self.memory_gb if self.memory_gb is not None else 1) * 1024)


class VmUpdate(Request):
    """Seed 003's ``PUT /vms/{id}``: new sizes. CPU and memory change while the VM is
    stopped; the disk only grows. Omitted fields stay as they are; ``name`` renames."""

    name: Name | None = None
    cpu_cores: Annotated[int | None, Field(ge=1, le=256)] = None
    memory_gb: Annotated[float | None, Field(gt=0, le=4096)] = None
    memory_mb: Annotated[int | None, Field(ge=64, le=4 * 1024 * 1024)] = None
    storage_gb: Annotated[int | None, Field(ge=0, le=65_536)] = None
    service_port: Annotated[int | None, Field(ge=1, le=65_535)] = Field(
        None,
        description="Declare (or change) the port the guest serves on; `null` makes the "
        "VM no longer a service.",
    )

    @model_validator(mode="after")
    def _one_memory(self) -> VmUpdate:
        if self.memory_gb is not None and self.memory_mb is not None:
            raise ValueError("give memory_gb or memory_mb, not both")
        return self

    @property
    def resolved_memory_mb(self) -> int | None:
        if self.memory_mb is not None:
            return self.memory_mb
        if self.memory_gb is not None:
            return round(self.memory_gb * 1024)
        return None


class VmStop(Request):
    """Optional body of ``POST /vms/{id}/stop``."""

    force: bool = Field(False, description="Power off at once, without the ACPI button.")
    timeout: Annotated[float | None, Field(ge=0, le=3600)] = Field(
        None, description="Seconds the guest has to shut down (default: the setting)."
    )


class VmReboot(Request):
    hard: bool = Field(False, description="Reset at once instead of asking the guest.")


class VmPublic(BaseModel):
    id: str
    name: str
    project_id: str
    user_id: str | None
    host_id: str | None
    image_id: str
    os_type: str
    os_version: str
    flavor: str | None
    cpu_cores: int
    memory_gb: float
    memory_mb: int
    storage_gb: int
    ip_address: str | None
    network_id: str | None
    service_port: int | None
    ssh_keys: list[str]
    has_user_data: bool
    status: str = Field(
        description="creating, starting, running, stopping, stopped, rebooting, resizing, "
        "deleting, error"
    )
    status_reason: str | None
    created_at: datetime
    updated_at: datetime
    usage: UsageNow | None = Field(
        None,
        description="In lists: the collector's last figures (CPU and memory use, network), "
        "null when none of its last few passes sampled the VM (a VM stopped a moment "
        "ago keeps its last figures until then).",
    )


class VmAccepted(BaseModel):
    """A 202: the VM in its transitional state and the operation to follow."""

    message: str
    vm_id: str
    vm: VmPublic
    operation: OperationRef


class VmUpdated(BaseModel):
    """A 200: a change that needed no operation (a rename, or no change at all)."""

    message: str
    vm_id: str
    vm: VmPublic


class VmConsole(BaseModel):
    vm_id: str
    console: str = Field(description="The last `tail` lines of the serial console.")
    lines: int


# --- volumes ---------------------------------------------------------------------------
class VolumeCreate(Request):
    name: Name
    size_gb: Annotated[int, Field(ge=1, le=65_536)]
    vm_id: Id | None = Field(None, description="Attach to this VM once made.")
    project_id: Id | None = None


class VolumeAttach(Request):
    vm_id: Id


class VolumeResize(Request):
    size_gb: Annotated[int, Field(ge=1, le=65_536)]


class VolumePublic(BaseModel):
    id: str
    name: str
    project_id: str
    size_gb: int
    vm_id: str | None
    host_id: str | None
    device: str | None
    status: str = Field(
        description="creating, available, attaching, in-use, detaching, resizing, deleting, error"
    )
    status_reason: str | None
    created_at: datetime
    updated_at: datetime


class VolumeAccepted(BaseModel):
    message: str
    volume_id: str
    volume: VolumePublic
    operation: OperationRef


# --- networks --------------------------------------------------------------------------
class NetworkCreate(Request):
    name: Name
    cidr: Annotated[str | None, Field(max_length=43, examples=["10.20.0.0/24"])] = None
    project_id: Id | None = None

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            net = ipaddress.IPv4Network(v, strict=True)
        except ValueError as exc:
            raise ValueError(f"an IPv4 network such as 10.20.0.0/24 ({exc})") from None
        if net.prefixlen > 29 or net.prefixlen < 8:
            raise ValueError("the prefix length must be between /8 and /29")
        return str(net)


class NetworkPublic(BaseModel):
    id: str
    name: str
    project_id: str
    cidr: str | None
    status: str
    created_at: datetime
    updated_at: datetime


# --- snapshots and backups -------------------------------------------------------------
class SnapshotCreate(Request):
    vm_id: Id | None = Field(None, description="The VM (implied by /vms/{id}/snapshots).")
    name: Name | None = None
    description: Annotated[str, Field(max_length=2000)] = ""


class SnapshotPublic(BaseModel):
    id: str
    name: str
    vm_id: str
    project_id: str
    description: str
    status: str = Field(description="creating, available, reverting, deleting, error")
    status_reason: str | None
    created_at: datetime
    updated_at: datetime


class SnapshotAccepted(BaseModel):
    message: str
    snapshot_id: str
    snapshot: SnapshotPublic
    operation: OperationRef


class BackupCreate(Request):
    vm_id: Id
    name: Name | None = None


class BackupRestore(Request):
    """Restore a backup into a new VM (the backup's sizes unless given)."""

    name: Name
    cpu_cores: Annotated[int | None, Field(ge=1, le=256)] = None
    memory_mb: Annotated[int | None, Field(ge=64, le=4 * 1024 * 1024)] = None
    user_data: Annotated[str | None, Field(max_length=MAX_USER_DATA)] = None
    network_id: Id | None = None


class BackupPublic(BaseModel):
    id: str
    name: str
    vm_id: str | None
    project_id: str
    host_id: str
    image_id: str
    cpu_cores: int
    memory_mb: int
    storage_gb: int
    size_bytes: int
    status: str = Field(description="creating, available, deleting, error")
    status_reason: str | None
    created_at: datetime
    updated_at: datetime


class BackupAccepted(BaseModel):
    message: str
    backup_id: str
    backup: BackupPublic
    operation: OperationRef


def list_body(items: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Helper for the seed-named alias of ``items`` in list bodies."""
    return {"items": items, key: items}
