"""SQLAlchemy models of identity and tenancy.

Ids are UUID4 strings. Every timestamp is an aware UTC datetime (``UTCDateTime``).
Schema changes go through an Alembic migration in ``db/migrations/versions``; a
test fails when the models and the migrations drift apart.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from nefos.db.types import Amount, Status, UTCDateTime, new_id, utcnow
from nefos.domain.lifecycle import ContainerStatus, Desired, VmStatus

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime()}


def _id() -> Mapped[str]:
    return mapped_column(String(36), primary_key=True, default=new_id)


def _created() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), default=utcnow, nullable=False)


def _updated() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = _id()
    email: Mapped[str] = mapped_column(String(320), unique=True, nullable=False)
    username: Mapped[str | None] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    # No foreign key: users and projects would reference each other. The project
    # service clears this column when it deletes the project.
    default_project_id: Mapped[str | None] = mapped_column(String(36))
    password_changed_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, nullable=False
    )
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class AuthSession(Base):
    """One login. Access tokens name it (``sid``); revoking it ends them all.

    Refresh tokens of one session form a rotation family: replaying a spent one
    revokes the session (RFC 9700 section 4.14).
    """

    __tablename__ = "auth_sessions"

    id: Mapped[str] = _id()
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_reason: Mapped[str | None] = mapped_column(String(64))
    ip_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"

    id: Mapped[str] = _id()  # the token's jti
    session_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("auth_sessions.id", ondelete="CASCADE"), nullable=False, index=True
    )
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LoginFailure(Base):
    """A failed login, counted per account and per client IP for brute-force limits."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # "account" | "ip"
    key: Mapped[str] = mapped_column(String(320), nullable=False)
    created_at: Mapped[datetime] = _created()

    __table_args__ = (Index("ix_login_failures_kind_key_created", "kind", "key", "created_at"),)


class KnownLoginAddress(Base):
    """An address (keyed hash) a user signed in from successfully: the per-account
    back-off does not apply to it (the per-IP limit does), so an attack from other
    addresses cannot lock the owner out."""

    __tablename__ = "known_login_addresses"

    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    ip_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, index=True)


class Organisation(Base):
    __tablename__ = "organisations"

    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    slug: Mapped[str] = mapped_column(String(100), unique=True, nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False, default="standard")
    parent_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("organisations.id", ondelete="RESTRICT"), index=True
    )
    is_personal: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class Membership(Base):
    __tablename__ = "memberships"

    organisation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class Invitation(Base):
    __tablename__ = "invitations"

    id: Mapped[str] = _id()
    organisation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    email: Mapped[str] = mapped_column(String(320), nullable=False, index=True)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    invited_by: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = _id()
    organisation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    is_default: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        UniqueConstraint("organisation_id", "name", name="uq_projects_organisation_id_name"),
        # Lists page in (created_at, id) order within an organisation: the index
        # covers the whole ORDER BY, so a deep page does not sort the organisation.
        Index("ix_projects_org_created_id", "organisation_id", "created_at", "id"),
    )


class ProjectQuota(Base):
    """Limits of one project; ``None`` means unlimited."""

    __tablename__ = "project_quotas"

    project_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    instances: Mapped[int | None] = mapped_column(Integer)
    vcpus: Mapped[int | None] = mapped_column(Integer)
    memory_gb: Mapped[int | None] = mapped_column(Integer)
    storage_gb: Mapped[int | None] = mapped_column(Integer)
    containers: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = _updated()


class ApiKey(Base):
    """A scoped API key. Only the SHA-256 of the secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = _id()
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    organisation_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("organisations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    scopes: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # The key list pages in (created_at, id) within a user (see services.paging).
    __table_args__ = (Index("ix_api_keys_user_created_id", "user_id", "created_at", "id"),)


class WsTicket(Base):
    """A one-time ticket for ``GET /ws?ticket=``: the SHA-256 of the secret, and the
    session or API key it stands for (the socket checks and re-checks that
    credential, never a copy of its rights). Taken by deleting the row."""

    __tablename__ = "ws_tickets"

    ticket_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    session_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("auth_sessions.id", ondelete="CASCADE"), index=True
    )
    api_key_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    #: When the credential the ticket stands for expires (a JWT's ``exp``), if it does.
    credential_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, index=True)


# --- compute ---------------------------------------------------------------------------
class Host(Base):
    """A compute endpoint (an Engine API socket, a libvirt URI, a simulated host).

    ``used_*`` and ``instance_count`` are the sums of the allocations placed on the
    host (``ContainerReplica`` rows). They change only through guarded ``UPDATE``s
    (``services.placement``) in the transaction that adds or removes an allocation,
    so two concurrent placements can never overbook the host. CPU is counted in
    millicores, so sums of fractions such as 0.1 never drift.
    """

    __tablename__ = "hosts"

    id: Mapped[str] = _id()
    hostname: Mapped[str] = mapped_column(String(253), unique=True, nullable=False)
    ip_address: Mapped[str | None] = mapped_column(String(64))
    driver: Mapped[str] = mapped_column(String(16), nullable=False)
    uri: Mapped[str] = mapped_column(String(1000), nullable=False)
    hypervisor_type: Mapped[str] = mapped_column(String(32), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="offline")
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    cpu_cores: Mapped[int] = mapped_column(Integer, nullable=False)
    memory_mb: Mapped[int] = mapped_column(Integer, nullable=False)
    storage_gb: Mapped[int] = mapped_column(Integer, nullable=False)
    max_instances: Mapped[int | None] = mapped_column(Integer)
    used_cpu_milli: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    used_memory_mb: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    used_storage_gb: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    instance_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (Index("ix_hosts_driver_status", "driver", "status"),)


class Container(Base):
    """A container service: one Nefos resource run as ``replicas`` engine containers.

    ``status`` is what clients see (``creating``, ``running``, ``stopping``, ...);
    ``desired`` is what the reconciler steers the replicas towards.
    """

    __tablename__ = "containers"

    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False
    )
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    image: Mapped[str] = mapped_column(String(500), nullable=False)
    command: Mapped[list[str] | None] = mapped_column(JSON)
    ports: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    environment: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False, default=dict)
    # As the client wrote them ("1.0", "512m", "10Gi"), and in the units Nefos counts.
    resources: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False, default=dict)
    cpu_milli: Mapped[int] = mapped_column(Integer, nullable=False)
    memory_mb: Mapped[int] = mapped_column(Integer, nullable=False)
    storage_gb: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    replicas: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    # Which spec (image, environment, command, resources) the row holds: a rolling
    # update (PUT /containers/{id}) moves it on, its rollback moves it back, and each
    # replica records the one it was made with.
    generation: Mapped[int] = mapped_column(Integer, nullable=False, default=1, server_default="1")
    status: Mapped[ContainerStatus] = mapped_column(Status(ContainerStatus), nullable=False)
    desired: Mapped[Desired] = mapped_column(
        Status(Desired), nullable=False, default=Desired.RUNNING
    )
    status_reason: Mapped[str | None] = mapped_column(Text)
    # Metered up to here (nefos.billing.metering): the next usage record starts here.
    billed_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_containers_project_id_name"),
        Index("ix_containers_project_created_id", "project_id", "created_at", "id"),
    )


class ContainerReplica(Base):
    """One engine container of a ``Container``, and its allocation on ``host_id``.

    The row is written (with the host's guarded ``UPDATE``) before the engine is
    asked for anything, so every engine container Nefos makes has a row: an engine
    container labelled ``nefos.managed`` whose ``nefos.id`` matches no row is an
    orphan the reconciler removes.
    """

    __tablename__ = "container_replicas"

    id: Mapped[str] = _id()
    container_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("containers.id", ondelete="CASCADE"), nullable=False
    )
    slot: Mapped[int] = mapped_column(Integer, nullable=False)
    host_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("hosts.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    cpu_milli: Mapped[int] = mapped_column(Integer, nullable=False)
    memory_mb: Mapped[int] = mapped_column(Integer, nullable=False)
    storage_gb: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    driver_id: Mapped[str | None] = mapped_column(String(128))
    # pending (not made yet), created, running, stopped, missing, error
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    published: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)
    # The container's generation (its spec) this replica runs.
    generation: Mapped[int] = mapped_column(Integer, nullable=False, default=1, server_default="1")
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        UniqueConstraint("container_id", "slot", name="uq_container_replicas_container_slot"),
    )


class Operation(Base):
    """A long action on one resource, claimed and run by a worker.

    ``lock`` holds the resource id while the operation is pending or running and is
    NULL afterwards; its unique constraint is what allows one active operation per
    resource, on every backend.
    """

    __tablename__ = "operations"

    id: Mapped[str] = _id()
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    resource_type: Mapped[str] = mapped_column(String(16), nullable=False)
    resource_id: Mapped[str] = mapped_column(String(36), nullable=False, index=True)
    project_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    lock: Mapped[str | None] = mapped_column(String(36), unique=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    worker: Mapped[str | None] = mapped_column(String(64))
    run_after: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        Index("ix_operations_status_created", "status", "created_at"),
        # The operations list pages newest first across a caller's projects: read in
        # (created_at, id) order and stopped after a page, not sorted in full.
        Index("ix_operations_created_id", "created_at", "id"),
    )


class IdempotencyRecord(Base):
    """The first response to a write sent with an ``Idempotency-Key``.

    ``owner`` is who sent it (a user or an API key), so two callers' keys never meet;
    ``fingerprint`` is a hash of method, path, query and body.
    """

    __tablename__ = "idempotency_records"

    id: Mapped[str] = _id()
    owner: Mapped[str] = mapped_column(String(80), nullable=False)
    key: Mapped[str] = mapped_column(String(255), nullable=False)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="running")
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_headers: Mapped[dict[str, str] | None] = mapped_column(JSON)
    response_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, index=True)

    __table_args__ = (UniqueConstraint("owner", "key", name="uq_idempotency_records_owner_key"),)


# --- compute II: images, virtual machines, volumes, networks, snapshots, backups -------
class Image(Base):
    """A bootable VM image, or a reference to a container image.

    A VM image's files (``kernel`` + ``initrd``, or a ``qcow2``/``raw`` disk) are copied
    into Nefos's image store (``<data_dir>/images/<id>/``) with their SHA-256 checked,
    then imported into each libvirt host's storage pool as ``nefos-img-<id>.*``
    volumes (on registration for the hosts that answer, and on first use for any
    other). ``project_id`` NULL is a public image (registered by a platform admin).
    """

    __tablename__ = "images"

    id: Mapped[str] = _id()
    project_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="RESTRICT"), index=True
    )
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # vm | container
    # kernel (kernel + initrd + cmdline), qcow2, raw; docker for a container reference
    format: Mapped[str] = mapped_column(String(16), nullable=False)
    os_type: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    os_version: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    source: Mapped[str] = mapped_column(String(1000), nullable=False)
    kernel_cmdline: Mapped[str | None] = mapped_column(String(1000))
    # {"kernel": {"sha256", "size"}, "initrd": {...}} or {"disk": {...}}
    files: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    checksum: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    min_disk_gb: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # The least memory (MiB) the image boots in, when known (a kernel image's header).
    min_memory_mb: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (Index("ix_images_os", "os_type", "os_version"),)


class Network(Base):
    """An isolated network instances join: a libvirt network on every libvirt host
    (``nefos-net-<id>``), made on each host when the first VM there needs it."""

    __tablename__ = "networks"

    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False
    )
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    cidr: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="active")
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_networks_project_id_name"),)


class Vm(Base):
    """A virtual machine: one libvirt domain on ``host_id``, and its allocation there.

    The row (with the host's guarded ``UPDATE``) is written before libvirt is asked
    for anything, so every domain Nefos makes has a row; a Nefos domain of this
    installation whose id matches no row is an orphan the reconciler removes.
    """

    __tablename__ = "vms"

    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False
    )
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    image_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("images.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    os_type: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    os_version: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    flavor: Mapped[str | None] = mapped_column(String(64))
    cpu_cores: Mapped[int] = mapped_column(Integer, nullable=False)
    memory_mb: Mapped[int] = mapped_column(Integer, nullable=False)
    storage_gb: Mapped[int] = mapped_column(Integer, nullable=False)
    user_data: Mapped[str | None] = mapped_column(Text)
    ssh_keys: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    network_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("networks.id", ondelete="RESTRICT"), index=True
    )
    host_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("hosts.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    # The backup volume the root disk is restored from (create only).
    restore_from: Mapped[str | None] = mapped_column(String(255))
    driver_id: Mapped[str | None] = mapped_column(String(64))
    # The guest's address on its network, as the network's DHCP server leased it
    # (read by the service health checker while the VM declares a service port).
    ip_address: Mapped[str | None] = mapped_column(String(64))
    # The TCP port the guest serves on: the VM is then a service (GET /services).
    service_port: Mapped[int | None] = mapped_column(Integer)
    # nefos.domain.lifecycle: the statuses and the moves between them
    status: Mapped[VmStatus] = mapped_column(Status(VmStatus), nullable=False)
    desired: Mapped[Desired] = mapped_column(
        Status(Desired), nullable=False, default=Desired.RUNNING
    )
    status_reason: Mapped[str | None] = mapped_column(Text)
    # Metered up to here (nefos.billing.metering): the next usage record starts here.
    billed_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_vms_project_id_name"),
        Index("ix_vms_project_created_id", "project_id", "created_at", "id"),
    )


class Volume(Base):
    """A data disk (``nefos-vol-<id>.qcow2`` in a host's pool), attached to at most one
    VM. It lives on the host of the first VM it is attached to (``host_id``)."""

    __tablename__ = "volumes"

    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False
    )
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    size_gb: Mapped[int] = mapped_column(Integer, nullable=False)
    host_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("hosts.id", ondelete="RESTRICT"), index=True
    )
    vm_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("vms.id", ondelete="SET NULL"), index=True
    )
    device: Mapped[str | None] = mapped_column(String(16))
    # creating, available, attaching, in-use, detaching, resizing, deleting, error
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    status_reason: Mapped[str | None] = mapped_column(Text)
    # Metered up to here (nefos.billing.metering): the next usage record starts here.
    billed_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_volumes_project_id_name"),)


class Snapshot(Base):
    """A point-in-time snapshot of a VM's disks (internal qcow2 snapshots)."""

    __tablename__ = "snapshots"

    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False
    )
    vm_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("vms.id", ondelete="CASCADE"), nullable=False, index=True
    )
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    # creating, available, reverting, deleting, error
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class Backup(Base):
    """A full, standalone copy of a VM's disks in a host's backup pool; restoring it
    makes a new VM. It outlives the VM it was taken from (``vm_id`` is then NULL)."""

    __tablename__ = "backups"

    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False
    )
    vm_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("vms.id", ondelete="SET NULL"), index=True
    )
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    host_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("hosts.id", ondelete="RESTRICT"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    # What is needed to restore: the source VM's image and sizes.
    image_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("images.id", ondelete="RESTRICT"), nullable=False
    )
    cpu_cores: Mapped[int] = mapped_column(Integer, nullable=False)
    memory_mb: Mapped[int] = mapped_column(Integer, nullable=False)
    storage_gb: Mapped[int] = mapped_column(Integer, nullable=False)
    volumes: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    # creating, available, deleting, error
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


# --- monitoring: alert rules, alerts, webhooks and their deliveries ---------------------
class AlertRule(Base):
    """A threshold on one metric of a project's resources (or of one of them): the
    alert engine opens an alert when ``metric <comparison> threshold`` has held for
    ``duration_seconds``."""

    __tablename__ = "alert_rules"

    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    metric: Mapped[str] = mapped_column(String(32), nullable=False)
    comparison: Mapped[str] = mapped_column(String(8), nullable=False)  # gt, gte, lt, lte
    threshold: Mapped[float] = mapped_column(Float, nullable=False)
    duration_seconds: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    severity: Mapped[str] = mapped_column(String(16), nullable=False, default="warning")
    # The scope: every resource of the project, of one kind, or one resource.
    resource_kind: Mapped[str | None] = mapped_column(String(16))
    resource_id: Mapped[str | None] = mapped_column(String(36))
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_alert_rules_project_id_name"),
        Index("ix_alert_rules_project_created_id", "project_id", "created_at", "id"),
    )


class Alert(Base):
    """One occurrence of a rule's condition (or of a built-in one: ``host_down``,
    ``instance_crashed``) on one resource: pending, firing, then resolved. Kept as
    history; at most one is open (pending or firing) per rule or kind and resource,
    which ``open_key`` (NULL once resolved) enforces on every backend."""

    __tablename__ = "alerts"

    id: Mapped[str] = _id()
    project_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="CASCADE")
    )
    rule_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("alert_rules.id", ondelete="SET NULL"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32), nullable=False)  # rule, host_down, ...
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    resource_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    resource_id: Mapped[str] = mapped_column(String(36), nullable=False, index=True)
    metric: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # pending, firing, resolved
    severity: Mapped[str] = mapped_column(String(16), nullable=False)
    value: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    open_key: Mapped[str | None] = mapped_column(String(80), unique=True)
    # Bumped by each change: two evaluations of one alert at once (two server
    # processes) cannot both move it on (and tell of it twice).
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    fired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        Index("ix_alerts_project_started_id", "project_id", "started_at", "id"),
        Index("ix_alerts_status", "status"),
    )
    __mapper_args__ = {"version_id_col": version}


class Webhook(Base):
    """An HTTP endpoint told of a project's alerts, signed with ``secret`` (HMAC-SHA256;
    kept so that each delivery can be signed, shown to its owner only at creation)."""

    __tablename__ = "webhooks"

    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    created_by: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    url: Mapped[str] = mapped_column(String(2000), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    events: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    secret: Mapped[str] = mapped_column(String(100), nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (Index("ix_webhooks_project_created_id", "project_id", "created_at", "id"),)


class WebhookDelivery(Base):
    """One event sent (or to send) to one webhook, and how its attempts went."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = _id()
    webhook_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False
    )
    event_id: Mapped[str] = mapped_column(String(64), nullable=False)
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Each attempt: {at, status_code, error, duration_ms}.
    log: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)
    created_at: Mapped[datetime] = _created()
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        Index("ix_webhook_deliveries_webhook_created_id", "webhook_id", "created_at", "id"),
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
    )


# --- monitoring: time series -------------------------------------------------------------
# Times are integers, not UTCDateTime: epoch milliseconds for raw samples, epoch
# seconds for buckets. Comparisons and bucketing (integer division) then cost the
# same on both backends, rows stay small, and the write path hands the driver plain
# ints. Each table's primary key starts with (resource_id, metric), so "one
# resource's metric over a time range" is one index range scan; the time index
# serves rollups and pruning, which sweep one time range across every resource.
class MetricSample(Base):
    """One raw sample (``nefos.monitoring.types.Sample``), kept for hours."""

    __tablename__ = "metric_samples"

    resource_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # epoch ms
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    project_id: Mapped[str | None] = mapped_column(String(36))
    value: Mapped[float] = mapped_column(Float, nullable=False)

    __table_args__ = (
        Index("ix_metric_samples_ts", "ts"),
        {"sqlite_with_rowid": False},
    )


class _MetricRollup:
    resource_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # epoch s, its start
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    project_id: Mapped[str | None] = mapped_column(String(36))
    avg: Mapped[float] = mapped_column(Float, nullable=False)
    min: Mapped[float] = mapped_column(Float, nullable=False)
    max: Mapped[float] = mapped_column(Float, nullable=False)
    count: Mapped[int] = mapped_column(Integer, nullable=False)


class MetricRollupMinute(_MetricRollup, Base):
    """Raw samples aggregated per minute, kept for days."""

    __tablename__ = "metric_rollups_1m"
    __table_args__ = (
        Index("ix_metric_rollups_1m_bucket", "bucket"),
        {"sqlite_with_rowid": False},
    )


class MetricRollupHour(_MetricRollup, Base):
    """Minute rollups aggregated per hour, kept for about a year."""

    __tablename__ = "metric_rollups_1h"
    __table_args__ = (
        Index("ix_metric_rollups_1h_bucket", "bucket"),
        {"sqlite_with_rowid": False},
    )


# --- billing -----------------------------------------------------------------------------
# Money is ``Amount`` (exact, nine places) everywhere; see nefos.billing.
class BillingAccount(Base):
    """An organisation's billing settings. Made on first use with the defaults."""

    __tablename__ = "billing_accounts"

    organisation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True
    )
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    # A reseller's margin on the prices of the organisations it created, in percent.
    margin_percent: Mapped[Decimal] = mapped_column(Amount(), nullable=False, default=Decimal(0))
    low_balance_threshold: Mapped[Decimal] = mapped_column(Amount(), nullable=False)
    # When the available balance went under the threshold (one warning per crossing).
    low_balance_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When it reached zero: the grace period before instances stop runs from here.
    depleted_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When Nefos stopped the organisation's instances for want of funds.
    suspended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class Product(Base):
    """One price of the catalogue. A price is never edited: a change closes the row
    (``effective_to``) and opens a new one, so usage is rated with the price in force
    when it happened."""

    __tablename__ = "products"

    id: Mapped[str] = _id()
    sku: Mapped[str] = mapped_column(String(80), nullable=False)
    meter: Mapped[str] = mapped_column(String(32), nullable=False)
    flavor: Mapped[str | None] = mapped_column(String(64))
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    unit_price: Mapped[Decimal] = mapped_column(Amount(), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    effective_from: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    effective_to: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = _created()

    __table_args__ = (
        Index("ix_products_currency_sku_from", "currency", "sku", "effective_from"),
        # One price in force per SKU and currency.
        Index(
            "uq_products_in_force",
            "currency",
            "sku",
            unique=True,
            sqlite_where=text("effective_to IS NULL"),
            postgresql_where=text("effective_to IS NULL"),
        ),
    )


class Wallet(Base):
    """A prepaid balance of one organisation in one currency.

    ``balance`` always equals the sum of the wallet's ledger entries: both change in
    one transaction, by a guarded ``UPDATE`` that never takes the balance below zero.
    """

    __tablename__ = "wallets"

    id: Mapped[str] = _id()
    organisation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False
    )
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    balance: Mapped[Decimal] = mapped_column(Amount(), nullable=False, default=Decimal(0))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        UniqueConstraint("organisation_id", "currency", name="uq_wallets_organisation_id_currency"),
    )


class LedgerEntry(Base):
    """One movement of a wallet: append-only (a trigger refuses UPDATE).

    ``key`` makes a movement idempotent: a top-up's Idempotency-Key, a charge's
    usage batch; a second entry with the same key in the wallet is refused.
    """

    __tablename__ = "ledger_entries"

    id: Mapped[str] = _id()
    wallet_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("wallets.id", ondelete="CASCADE"), nullable=False
    )
    # top_up, charge, refund, adjustment, payout, revenue
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    amount: Mapped[Decimal] = mapped_column(Amount(), nullable=False)
    balance_after: Mapped[Decimal] = mapped_column(Amount(), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    reference_kind: Mapped[str | None] = mapped_column(String(32))
    reference_id: Mapped[str | None] = mapped_column(String(64))
    key: Mapped[str | None] = mapped_column(String(255))
    created_by: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = _created()

    __table_args__ = (
        UniqueConstraint("wallet_id", "key", name="uq_ledger_entries_wallet_id_key"),
        Index("ix_ledger_entries_wallet_created_id", "wallet_id", "created_at", "id"),
    )


# The columns rating reads of a usage record (besides its organisation and start).
USAGE_RATED = (
    "resource_kind",
    "resource_id",
    "resource_name",
    "flavor",
    "state",
    "seconds",
    "cpu_milli",
    "memory_mb",
    "storage_gb",
    "instances",
    "network_bytes",
)


class UsageRecord(Base):
    """A resource's time in one billable state, or its network traffic in one hour.

    ``key`` (resource and start) is unique: recording the same usage twice is a
    no-op. ``charge_id`` is the ledger entry that charged it (NULL: not yet).
    Quantities stay in base units (seconds, milli-vCPUs, MiB, GB, bytes); rating
    multiplies them by the catalogue's prices.
    """

    __tablename__ = "usage_records"

    id: Mapped[str] = _id()
    key: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    organisation_id: Mapped[str] = mapped_column(String(36), nullable=False)
    project_id: Mapped[str] = mapped_column(String(36), nullable=False)
    resource_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    resource_id: Mapped[str] = mapped_column(String(36), nullable=False)
    resource_name: Mapped[str] = mapped_column(String(63), nullable=False, default="")
    # running (compute and storage), stopped (storage only), network
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    seconds: Mapped[int] = mapped_column(Integer, nullable=False)
    cpu_milli: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    memory_mb: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    storage_gb: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    instances: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    flavor: Mapped[str | None] = mapped_column(String(64))
    network_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    charge_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = _created()

    __table_args__ = (
        # On PostgreSQL it covers what rating sums (``rating.totals_columns``): an
        # organisation's month is an index-only scan of its own slice of the index,
        # not a visit to every heap page (records of all organisations are written
        # hour by hour, side by side).
        Index(
            "ix_usage_records_org_started",
            "organisation_id",
            "started_at",
            postgresql_include=list(USAGE_RATED),
        ),
        Index("ix_usage_records_resource_started", "resource_kind", "resource_id", "started_at"),
        Index(
            "ix_usage_records_uncharged",
            "organisation_id",
            sqlite_where=text("charge_id IS NULL"),
            postgresql_where=text("charge_id IS NULL"),
        ),
    )


class Invoice(Base):
    """A monthly (by default) statement of an organisation's usage, or a credit note
    correcting one (``kind``, ``corrects_id``). Lines are written while it is a
    draft; once finalized nothing in it changes."""

    __tablename__ = "invoices"

    id: Mapped[str] = _id()
    number: Mapped[str | None] = mapped_column(String(40), unique=True)
    organisation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False
    )
    kind: Mapped[str] = mapped_column(String(16), nullable=False, default="invoice")
    # NO ACTION: an invoice with credit notes cannot be deleted on its own, but goes
    # with them (its organisation's deletion cascades to both in one statement).
    corrects_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("invoices.id"), index=True
    )
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    period_end: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    # draft, open (finalized, unpaid), paid, void
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="draft")
    subtotal: Mapped[Decimal] = mapped_column(Amount(), nullable=False, default=Decimal(0))
    total: Mapped[Decimal] = mapped_column(Amount(), nullable=False, default=Decimal(0))
    notes: Mapped[str] = mapped_column(Text, nullable=False, default="")
    # One invoice per organisation, currency and period ("<org>:<cur>:<start>").
    period_key: Mapped[str | None] = mapped_column(String(120), unique=True)
    finalized_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (Index("ix_invoices_org_period", "organisation_id", "period_start", "id"),)


class InvoiceLine(Base):
    __tablename__ = "invoice_lines"

    id: Mapped[str] = _id()
    invoice_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("invoices.id", ondelete="CASCADE"), nullable=False, index=True
    )
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    resource_kind: Mapped[str | None] = mapped_column(String(16))
    resource_id: Mapped[str | None] = mapped_column(String(36))
    resource_name: Mapped[str] = mapped_column(String(63), nullable=False, default="")
    meter: Mapped[str] = mapped_column(String(32), nullable=False)
    sku: Mapped[str | None] = mapped_column(String(80))
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    quantity: Mapped[Decimal] = mapped_column(Amount(), nullable=False)
    unit: Mapped[str] = mapped_column(String(16), nullable=False)
    unit_price: Mapped[Decimal] = mapped_column(Amount(), nullable=False)
    # quantity times unit_price, rounded half-up to the currency's minor unit: once.
    amount: Mapped[Decimal] = mapped_column(Amount(), nullable=False)
    # On a credit note: the line of the corrected invoice this line credits.
    corrects_line_id: Mapped[str | None] = mapped_column(String(36))


class InvoiceSequence(Base):
    """The last number given in one series of invoice numbers (``NEF-2026``). It is
    taken with ``UPDATE ... RETURNING`` in the finalizing transaction: the row lock
    orders concurrent finalizations, and a rolled back one gives its number back, so
    numbers are unique and without gaps."""

    __tablename__ = "invoice_sequences"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    last: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class Payment(Base):
    """A top-up through a payment provider (``manual``: confirmed by a platform
    admin; ``stripe``: a PaymentIntent). Credits the wallet once, when it succeeds."""

    __tablename__ = "payments"

    id: Mapped[str] = _id()
    organisation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False
    )
    wallet_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("wallets.id", ondelete="CASCADE"), nullable=False, index=True
    )
    provider: Mapped[str] = mapped_column(String(16), nullable=False)
    amount: Mapped[Decimal] = mapped_column(Amount(), nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    # pending, succeeded, failed, cancelled
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    provider_ref: Mapped[str | None] = mapped_column(String(255), unique=True)
    client_secret: Mapped[str | None] = mapped_column(String(255))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    failure_reason: Mapped[str | None] = mapped_column(Text)
    ledger_entry_id: Mapped[str | None] = mapped_column(String(36))
    created_by: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    confirmed_by: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint(
            "organisation_id",
            "idempotency_key",
            name="uq_payments_organisation_id_idempotency_key",
        ),
        Index("ix_payments_org_created_id", "organisation_id", "created_at", "id"),
    )


class Quote(Base):
    """A priced configuration (VMs, containers, volumes), valid until ``valid_until``;
    accepting it provisions the configuration (``resources``: what was made)."""

    __tablename__ = "quotes"

    id: Mapped[str] = _id()
    organisation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False
    )
    project_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="SET NULL")
    )
    name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    hours_per_month: Mapped[int] = mapped_column(Integer, nullable=False)
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False)
    lines: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False)
    monthly_total: Mapped[Decimal] = mapped_column(Amount(), nullable=False)
    # open, accepting, accepted, failed (expired: open past valid_until)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="open")
    # Why provisioning failed (status failed): text for the client, no engine message.
    failure_reason: Mapped[str | None] = mapped_column(Text)
    valid_until: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    resources: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)
    created_by: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    accepted_by: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (Index("ix_quotes_org_created_id", "organisation_id", "created_at", "id"),)


class Payout(Base):
    """Earnings (a reseller's margin, a creator's marketplace revenue) paid out of
    the wallet: requested by the organisation, settled by a platform admin."""

    __tablename__ = "payouts"

    id: Mapped[str] = _id()
    organisation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False
    )
    wallet_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("wallets.id", ondelete="CASCADE"), nullable=False, index=True
    )
    amount: Mapped[Decimal] = mapped_column(Amount(), nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    # pending, paid, rejected
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    method: Mapped[str] = mapped_column(String(32), nullable=False, default="bank_transfer")
    destination: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    note: Mapped[str] = mapped_column(Text, nullable=False, default="")
    ledger_entry_id: Mapped[str | None] = mapped_column(String(36))
    requested_by: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        UniqueConstraint(
            "organisation_id", "idempotency_key", name="uq_payouts_organisation_id_idempotency_key"
        ),
        Index("ix_payouts_org_created_id", "organisation_id", "created_at", "id"),
    )


# --- gateway -----------------------------------------------------------------------------
class RateLimitOverride(Base):
    """An organisation's own limit for one rate-limit group, set by a platform admin.

    ``group`` is one of ``nefos.gateway.ratelimit.GROUPS`` (``auth``, ``containers``,
    ``monitoring``, ``billing``) or ``user`` (the overall limit per user or API key).
    The limit applies to the organisation's members and its API keys; a member of
    several organisations gets the most generous one.
    """

    __tablename__ = "rate_limit_overrides"

    organisation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True
    )
    group: Mapped[str] = mapped_column(String(32), primary_key=True)
    limit: Mapped[int] = mapped_column(Integer, nullable=False)  # requests per window
    window: Mapped[int] = mapped_column(Integer, nullable=False)  # seconds
    updated_by: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class RequestLogEntry(Base):
    """One API request, written in batches off the request path
    (``nefos.gateway.requestlog``) and read by ``/analytics``.

    ``ts`` is epoch milliseconds, like the metric samples: bucketing by integer
    division costs the same on both backends. No foreign keys: the log outlives
    what it names and is pruned by age alone.
    """

    __tablename__ = "request_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    ts: Mapped[int] = mapped_column(BigInteger, nullable=False)  # epoch ms, request start
    method: Mapped[str] = mapped_column(String(8), nullable=False)
    route: Mapped[str] = mapped_column(String(256), nullable=False)  # path template
    status: Mapped[int] = mapped_column(Integer, nullable=False)
    duration_ms: Mapped[float] = mapped_column(Float, nullable=False)
    user_id: Mapped[str | None] = mapped_column(String(36))
    organisation_id: Mapped[str | None] = mapped_column(String(36))
    api_key_id: Mapped[str | None] = mapped_column(String(36))
    ip: Mapped[str | None] = mapped_column(String(64))
    network: Mapped[str | None] = mapped_column(String(64))  # the IP's /24 or /48
    country: Mapped[str | None] = mapped_column(String(2))  # ISO 3166, from GeoIP
    user_agent: Mapped[str | None] = mapped_column(String(256))
    bytes_in: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    request_id: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        Index("ix_request_log_ts", "ts"),
        Index("ix_request_log_org_ts", "organisation_id", "ts"),
    )


class Lease(Base):
    """A singleton loop's lease (nefos.operations.leases): who runs it, until when.

    ``token`` (the fencing token) grows by one on every takeover, never on a renewal:
    a holder that finds another token than the one it took has lost the lease. A
    released lease keeps its row and token, with no holder and an expiry in the past.
    """

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))  # host:pid:random
    token: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class ServiceSettings(Base):
    """What a tenant says about one of its services; the service itself is what it
    runs -- a container (``container_id``) or a VM that declares a port (``vm_id``)
    -- and ``id`` is that container's or VM's id, so the row goes with it.

    A service without a row has the defaults (version ``1.0.0``, no tags, no
    metadata, the default health check); ``PUT /services/{id}`` writes the row.
    """

    __tablename__ = "services"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    container_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("containers.id", ondelete="CASCADE"), unique=True
    )
    vm_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("vms.id", ondelete="CASCADE"), unique=True
    )
    version: Mapped[str] = mapped_column(String(64), nullable=False, default="1.0.0")
    tags: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    meta: Mapped[dict[str, str]] = mapped_column("metadata", JSON, nullable=False, default=dict)
    check: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        CheckConstraint(
            "(container_id IS NOT NULL AND vm_id IS NULL AND id = container_id)"
            " OR (vm_id IS NOT NULL AND container_id IS NULL AND id = vm_id)",
            name="one_workload",
        ),
    )

    @classmethod
    def default(cls, service_id: str, *, vm: bool) -> ServiceSettings:
        """A service's first row, with the defaults."""
        return cls(
            id=service_id,
            container_id=None if vm else service_id,
            vm_id=service_id if vm else None,
            version="1.0.0",
            tags=[],
            meta={},
        )


class ServiceInstanceHealth(Base):
    """The health of one instance of a service, kept by the health checker: a
    container replica (``replica_id``, ``container_id``) or a VM (``vm_id``; a VM is
    its service's one instance). ``instance_id`` is the replica's or the VM's id,
    ``service_id`` the container's or the VM's.

    The row goes with its instance (ON DELETE CASCADE): a replica removed or lost
    leaves its service at once, and nothing registers itself, so nothing goes
    stale. ``status`` is passing, warning or critical; ``maintenance`` (set by the
    tenant) takes the instance out of traffic whatever its checks say. ``checks``
    and ``transitions`` are bounded histories, newest last.
    """

    __tablename__ = "service_health"

    instance_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(36), nullable=False, index=True)
    replica_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("container_replicas.id", ondelete="CASCADE"), unique=True
    )
    container_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("containers.id", ondelete="CASCADE"), index=True
    )
    vm_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("vms.id", ondelete="CASCADE"), unique=True
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="critical")
    output: Mapped[str] = mapped_column(Text, nullable=False, default="")
    successes: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    maintenance: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    maintenance_reason: Mapped[str | None] = mapped_column(String(500))
    checks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)
    transitions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    changed_at: Mapped[datetime] = _created()

    __table_args__ = (
        CheckConstraint(
            "(replica_id IS NOT NULL AND container_id IS NOT NULL AND vm_id IS NULL"
            " AND instance_id = replica_id AND service_id = container_id)"
            " OR (vm_id IS NOT NULL AND replica_id IS NULL AND container_id IS NULL"
            " AND instance_id = vm_id AND service_id = vm_id)",
            name="one_instance",
        ),
    )

    @classmethod
    def unchecked(
        cls, instance_id: str, service_id: str, at: datetime, *, vm: bool = False
    ) -> ServiceInstanceHealth:
        """A new instance's row: critical until its first checks pass."""
        return cls(
            instance_id=instance_id,
            service_id=service_id,
            replica_id=None if vm else instance_id,
            container_id=None if vm else service_id,
            vm_id=instance_id if vm else None,
            status="critical",
            output="not checked yet",
            successes=0,
            failures=0,
            maintenance=False,
            checks=[],
            transitions=[],
            changed_at=at,
        )


class Api(Base):
    """An API a creator deploys (seed 002): a container service (``container_id``,
    its replicas the API's instances) with the API's own word on it -- the port it
    serves, its health-check path, the base path of its routes, its OpenAPI
    document -- and a global ``slug`` (``/gw/{slug}/``).

    Deleting an API removes its container; the row stays (``deleted_at``) so that
    its deployments, logs and invoices keep what they refer to.
    """

    __tablename__ = "apis"

    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    slug: Mapped[str] = mapped_column(String(63), nullable=False, unique=True)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    container_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("containers.id", ondelete="SET NULL"), unique=True
    )
    port: Mapped[int] = mapped_column(Integer, nullable=False)
    health_check_path: Mapped[str] = mapped_column(String(256), nullable=False, default="/")
    base_path: Mapped[str] = mapped_column(String(256), nullable=False, default="/")
    openapi: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    openapi_path: Mapped[str | None] = mapped_column(String(256))
    # The units of its calls (``domain.metering``): rules [{method, path, units}],
    # first match wins (NULL: every call is 1 unit), and the answer's header that
    # overrides them.
    units: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    units_header: Mapped[str | None] = mapped_column(String(64))
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        # One live API of a name in a project (a deleted one frees its name).
        Index(
            "uq_apis_project_name_live",
            "project_id",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index("ix_apis_project_created_id", "project_id", "created_at", "id"),
    )


class ApiDeployment(Base):
    """One version of an API's spec (seed 002's ``deployments``): the image,
    environment, resources and replicas it runs, and the operation that rolled it
    out. Its status is its operation's (``services.apis.deployment_status``), so it
    has no second writer."""

    __tablename__ = "api_deployments"

    id: Mapped[str] = _id()
    api_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("apis.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    image: Mapped[str] = mapped_column(String(500), nullable=False)
    environment: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False, default=dict)
    resources: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False, default=dict)
    replicas: Mapped[int] = mapped_column(Integer, nullable=False)
    # The deployment this one rolled back to (POST /apis/{id}/rollback).
    rollback_of: Mapped[str | None] = mapped_column(String(36))
    operation_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("operations.id", ondelete="SET NULL")
    )
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = _created()

    __table_args__ = (
        UniqueConstraint("api_id", "number", name="uq_api_deployments_api_id_number"),
    )


#: Tables of the marketplace's full-text index, made by migration 0018 for each
#: database (an FTS5 table and its shadow tables on SQLite, a tsvector table on
#: PostgreSQL) and written by ``services.marketplace``: not in the models.
SEARCH_TABLE_PREFIX = "marketplace_search"


class Listing(Base):
    """An API's page on the marketplace (one per API): what browsers read, and the
    plans they may subscribe to. ``status`` is published or unpublished;
    ``visibility`` public (browsable without an account) or private (its creator's
    organisation and the organisations it invited: ``ListingInvitation``)."""

    __tablename__ = "marketplace_listings"

    id: Mapped[str] = _id()
    api_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("apis.id", ondelete="CASCADE"), nullable=False, unique=True
    )
    organisation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    title: Mapped[str] = mapped_column(String(120), nullable=False)
    summary: Mapped[str] = mapped_column(String(300), nullable=False, default="")
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    category: Mapped[str] = mapped_column(String(40), nullable=False)
    tags: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    visibility: Mapped[str] = mapped_column(String(16), nullable=False, default="public")
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="published")
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        Index("ix_marketplace_listings_browse", "status", "visibility", "published_at"),
    )


class ListingPlan(Base):
    """One version of a plan of a listing. A plan is never edited: a change retires
    the row (``retired_at``) and adds the next ``version`` of the same ``key``, so a
    subscriber keeps the terms it subscribed to until it changes plan.

    ``model``: ``free`` (``included_calls`` a month, or unlimited), ``pay_per_use``
    (``price_per_call``), ``freemium`` (``included_calls`` free a month, then
    ``price_per_call``), ``monthly`` (``monthly_price`` for ``included_calls``, then
    ``overage_price`` a call). ``rate_limit_per_minute`` bounds every plan."""

    __tablename__ = "marketplace_plans"

    id: Mapped[str] = _id()
    listing_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("marketplace_listings.id", ondelete="CASCADE"), nullable=False
    )
    key: Mapped[str] = mapped_column(String(40), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    name: Mapped[str] = mapped_column(String(80), nullable=False)
    model: Mapped[str] = mapped_column(String(16), nullable=False)
    price_per_call: Mapped[Decimal | None] = mapped_column(Amount())
    monthly_price: Mapped[Decimal | None] = mapped_column(Amount())
    included_calls: Mapped[int | None] = mapped_column(BigInteger)
    overage_price: Mapped[Decimal | None] = mapped_column(Amount())
    rate_limit_per_minute: Mapped[int] = mapped_column(Integer, nullable=False)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()

    __table_args__ = (
        UniqueConstraint(
            "listing_id", "key", "version", name="uq_marketplace_plans_listing_key_version"
        ),
    )


class Subscription(Base):
    """A consumer organisation's subscription to one listing's plan (the plan
    version it agreed to: ``plan_id``). One active subscription per organisation and
    listing; a change of plan moves it to another plan row, and the calls counted
    in the period stay counted. ``period_start``/``period_end`` bound the current
    month of quota."""

    __tablename__ = "marketplace_subscriptions"

    id: Mapped[str] = _id()
    listing_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("marketplace_listings.id", ondelete="CASCADE"), nullable=False
    )
    plan_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("marketplace_plans.id", ondelete="RESTRICT"), nullable=False
    )
    organisation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    # active, past_due (a renewal's fee unpaid), cancelled (at once: free plans, a
    # past-due one, or the API deleted), ended (at the period's end: a paid plan
    # cancelled, or a renewal never paid); see ``domain.plans``
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="active")
    period_start: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    period_end: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # cancelled, unpaid, api_deleted (NULL: not ended, or ended at a period's end
    # before the row was settled)
    ended_reason: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        # One live subscription per organisation and listing.
        Index(
            "uq_marketplace_subscriptions_live",
            "listing_id",
            "organisation_id",
            unique=True,
            sqlite_where=text("status IN ('active', 'past_due')"),
            postgresql_where=text("status IN ('active', 'past_due')"),
        ),
        Index("ix_marketplace_subscriptions_renewal", "status", "period_end"),
    )


class SubscriptionCharge(Base):
    """A plan fee charged for one period of a subscription (``kind`` fee), or the
    unused part of one given back (``credit``): the ledger entry that moved it, and
    what the consumer's invoice shows. One of each kind per subscription and period
    start (unique): a renewal, however many passes run it, charges its period once,
    and a period is credited once."""

    __tablename__ = "marketplace_subscription_charges"

    id: Mapped[str] = _id()
    subscription_id: Mapped[str] = mapped_column(
        String(36),
        ForeignKey("marketplace_subscriptions.id", ondelete="CASCADE"),
        nullable=False,
    )
    # The consumer's organisation (the subscription's), for its invoices.
    organisation_id: Mapped[str] = mapped_column(String(36), nullable=False)
    plan_id: Mapped[str] = mapped_column(String(36), nullable=False)
    kind: Mapped[str] = mapped_column(String(8), nullable=False)  # fee, credit
    period_start: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    period_end: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    # What the consumer's wallet moved: a fee positive (charged), a credit negative.
    amount: Mapped[Decimal] = mapped_column(Amount(), nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    ledger_entry_id: Mapped[str] = mapped_column(String(36), nullable=False)
    created_at: Mapped[datetime] = _created()

    __table_args__ = (
        UniqueConstraint(
            "subscription_id",
            "kind",
            "period_start",
            name="uq_marketplace_subscription_charges_period",
        ),
        Index("ix_marketplace_subscription_charges_org_created", "organisation_id", "created_at"),
    )


class SubscriptionKey(Base):
    """A key a consumer calls a subscribed API with (``X-API-Key`` or ``Authorization:
    Bearer`` on ``/gw/{slug}/``): kept as its SHA-256, shown once. Rotation gives
    the old key an ``expires_at`` (an overlap window); revocation ends it at once."""

    __tablename__ = "marketplace_keys"

    id: Mapped[str] = _id()
    subscription_id: Mapped[str] = mapped_column(
        String(36),
        ForeignKey("marketplace_subscriptions.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    )
    name: Mapped[str] = mapped_column(String(80), nullable=False, default="")
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()


class ListingReview(Base):
    """A consumer organisation's review of a listing (seed 002's reviews): 1 to 5
    ``stars`` and a text, one per organisation and listing (the listing is its API's
    one page, so: one per consumer and API), edited in place. Only an organisation
    whose subscription to the listing had a call answered below 400 may write one,
    never the listing's own; the creator may reply once (``reply_text``)."""

    __tablename__ = "marketplace_reviews"

    id: Mapped[str] = _id()
    listing_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("marketplace_listings.id", ondelete="CASCADE"), nullable=False
    )
    organisation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    stars: Mapped[int] = mapped_column(Integer, nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    reply_text: Mapped[str | None] = mapped_column(Text)
    reply_user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    replied_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        UniqueConstraint("listing_id", "organisation_id"),
        CheckConstraint("stars BETWEEN 1 AND 5", name="stars"),
        Index("ix_marketplace_reviews_listing_created", "listing_id", "created_at"),
    )


class ListingInvitation(Base):
    """An invitation to a private listing (seed 002's "private by invitation"): to an
    organisation (``organisation_id`` named by the seller, accepted at once), or to
    an e-mail address (a one-time token, kept as ``token_hash``, that the holder of
    the address accepts for one of its organisations, which sets
    ``organisation_id``). While accepted and not revoked, it lets its organisation
    see the published private listing and subscribe to it."""

    __tablename__ = "marketplace_invitations"

    id: Mapped[str] = _id()
    listing_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("marketplace_listings.id", ondelete="CASCADE"), nullable=False
    )
    organisation_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("organisations.id", ondelete="CASCADE")
    )
    email: Mapped[str | None] = mapped_column(String(320))
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    invited_by: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    accepted_by: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint("email IS NOT NULL OR organisation_id IS NOT NULL", name="invitee"),
        # The seller's list, newest first.
        Index("ix_marketplace_invitations_listing_created", "listing_id", "created_at"),
        # Who sees a private listing: an organisation's accepted invitations.
        Index("ix_marketplace_invitations_org_listing", "organisation_id", "listing_id"),
    )


class ApiCall(Base):
    """One call through the gateway (seed 002's ``api_calls``): who called which API
    on which plan, what it answered, and what it costs. ``request_id`` is unique:
    a replayed request is recorded, and billed, once. A call is charged when its
    ``created_at`` is at or before its consumer's watermark
    (``ApiCallWatermark``): the billing pass charges windows of time, never
    rewriting a call."""

    __tablename__ = "api_calls"

    id: Mapped[str] = _id()
    # "<subscription id>:<the call's X-Request-ID>" (36 + 1 + at most 64).
    request_id: Mapped[str] = mapped_column(String(101), nullable=False, unique=True)
    api_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("apis.id", ondelete="CASCADE"), nullable=False
    )
    subscription_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("marketplace_subscriptions.id", ondelete="SET NULL")
    )
    plan_id: Mapped[str | None] = mapped_column(String(36))
    organisation_id: Mapped[str] = mapped_column(String(36), nullable=False)
    method: Mapped[str] = mapped_column(String(8), nullable=False)
    path: Mapped[str] = mapped_column(String(500), nullable=False)
    status: Mapped[int] = mapped_column(Integer, nullable=False)
    latency_ms: Mapped[float] = mapped_column(Float, nullable=False)
    bytes_in: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    units: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    price: Mapped[Decimal] = mapped_column(Amount(), nullable=False, default=Decimal(0))
    # When the row was written (a retried 5xx call taken back in flight: when retried).
    created_at: Mapped[datetime] = _created()

    __table_args__ = (
        Index("ix_api_calls_api_created", "api_id", "created_at"),
        Index("ix_api_calls_subscription_created", "subscription_id", "created_at"),
        # A consumer's calls in a window of time: what the billing pass charges.
        Index("ix_api_calls_org_created", "organisation_id", "created_at"),
        # The calls in flight (few at a time): they hold their consumer's watermark.
        Index(
            "ix_api_calls_in_flight",
            "created_at",
            sqlite_where=text("status = 0"),
            postgresql_where=text("status = 0"),
        ),
    )


class ApiCallWatermark(Base):
    """How far a consumer organisation's priced calls in one currency are charged:
    every call with ``created_at <= charged_until`` (``billing/apicalls.py``). It
    only moves forward, by a guarded ``UPDATE`` in the transaction of the charge."""

    __tablename__ = "api_call_watermarks"

    organisation_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    charged_until: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = _updated()


class ApiCallWindow(Base):
    """One charged window of a consumer's priced calls in one currency: those with
    ``charged_after < created_at <= charged_until``, their count and sum, and each creator's part
    (``parts``: creator organisation -> [calls, amount as text]). ``id`` is the id of
    the ``charge`` ledger entry. ``recounted_at``: when the pass counted the window's
    calls again (a row written late is charged, or credited, then)."""

    __tablename__ = "api_call_windows"

    id: Mapped[str] = _id()
    organisation_id: Mapped[str] = mapped_column(String(36), nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    charged_after: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    charged_until: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    calls: Mapped[int] = mapped_column(BigInteger, nullable=False)
    amount: Mapped[Decimal] = mapped_column(Amount(), nullable=False)
    parts: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    recounted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()

    __table_args__ = (
        UniqueConstraint(
            "organisation_id", "currency", "charged_after", name="uq_api_call_windows_account_after"
        ),
        # The windows still to recount, oldest first.
        Index(
            "ix_api_call_windows_recount",
            "charged_until",
            sqlite_where=text("recounted_at IS NULL"),
            postgresql_where=text("recounted_at IS NULL"),
        ),
    )


class UsageAlert(Base):
    """A subscription's calls crossed ``threshold`` % of its plan's quota in the
    period starting ``period_start``: the ``usage_alert`` told once. The unique key
    (subscription, period, threshold) is what makes it once: whoever inserts the row
    (the gateway at the crossing call, or the billing pass's sweep) tells it, in the
    same transaction; a second insert fails and tells nothing."""

    __tablename__ = "usage_alerts"

    id: Mapped[str] = _id()
    subscription_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("marketplace_subscriptions.id", ondelete="CASCADE"), nullable=False
    )
    organisation_id: Mapped[str] = mapped_column(String(36), nullable=False)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    threshold: Mapped[int] = mapped_column(Integer, nullable=False)
    calls: Mapped[int] = mapped_column(Integer, nullable=False)
    quota: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = _created()

    __table_args__ = (
        UniqueConstraint(
            "subscription_id",
            "period_start",
            "threshold",
            name="uq_usage_alerts_subscription_period_threshold",
        ),
    )


class LoadTestScenario(Base):
    """A stored load-test scenario: weighted requests (method, path, headers, body)
    sent to a target's URLs; a test names it by id or name."""

    __tablename__ = "load_test_scenarios"

    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    requests: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_load_test_scenarios_project_id_name"),
        Index("ix_load_test_scenarios_project_created_id", "project_id", "created_at", "id"),
    )


class LoadTest(Base):
    """One load test (seed 004's ``test_id``): what was asked (``params``, with the
    scenario's requests as they were then), where it runs, and what it measured.

    ``status`` is ``running`` from its acceptance until it ends ``completed``,
    ``failed`` or ``cancelled``; every write of the runner is guarded by ``status =
    'running'``, so a cancel (a guarded ``UPDATE`` of its own) always wins.
    ``results`` is the latest summary (partial while running), ``histogram`` the
    encoded HDR histogram of the whole run; the timeline is ``load_test_seconds``.
    """

    __tablename__ = "load_tests"

    id: Mapped[str] = _id()
    project_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    organisation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="SET NULL")
    )
    target_type: Mapped[str] = mapped_column(String(16), nullable=False)  # container, vm
    target_id: Mapped[str] = mapped_column(String(36), nullable=False)
    scenario: Mapped[str] = mapped_column(String(100), nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="running")
    results: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    histogram: Mapped[str | None] = mapped_column(Text)
    verdict: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    operation_id: Mapped[str | None] = mapped_column(String(36))
    #: ``host:pid`` of the generator process while it runs (operators, tests).
    runner: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    __table_args__ = (
        Index("ix_load_tests_project_created_id", "project_id", "created_at", "id"),
        Index("ix_load_tests_org_status", "organisation_id", "status"),
    )


class LoadTestSecond(Base):
    """One second of a load test's timeline, appended as the second ends (a run's
    writes stay one small row a second however long it lasts)."""

    __tablename__ = "load_test_seconds"

    test_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("load_tests.id", ondelete="CASCADE"), primary_key=True
    )
    second: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
