"""Typed methods, one class a resource, over the client's request pipeline.

Arguments are keyword-only and sent as given: the API validates them, so a bad
value comes back as a :class:`~nefos.sdk.ValidationError` with per-field
details, the same as for any other client. An argument left as ``None`` is not
sent (the API keeps the current value or applies its default); only where the
API gives ``null`` a meaning of its own (quota limits) does the SDK use
:data:`~nefos.sdk.NOT_GIVEN` instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from datetime import date, datetime
from typing import IO, Any, TypeVar
from urllib.parse import quote

from pydantic import BaseModel

from nefos.schemas.apis import ApiOutputLine
from nefos.schemas.common import Message, Page
from nefos.schemas.compute import (
    ContainerAccepted,
    ContainerLogs,
    ContainerPublic,
    HostPublic,
    OperationPublic,
    OperationRef,
    ResourceStats,
)
from nefos.schemas.identity import (
    ApiKeyCreated,
    ApiKeyPublic,
    AuthResult,
    SessionPublic,
    UserPublic,
    UserSettings,
)
from nefos.schemas.monitoring import (
    ContainerMetrics,
    HostMetrics,
    MetricsSummary,
    SystemMetrics,
    VmMetrics,
)
from nefos.schemas.tenancy import (
    ChildOrganisationCreated,
    InvitationCreated,
    InvitationPublic,
    MemberPublic,
    OrganisationPublic,
    ProjectPublic,
    QuotaPublic,
)
from nefos.schemas.vms import (
    BackupAccepted,
    BackupPublic,
    ImageAccepted,
    ImagePublic,
    NetworkPublic,
    SnapshotAccepted,
    SnapshotPublic,
    VmAccepted,
    VmConsole,
    VmPublic,
    VolumeAccepted,
    VolumePublic,
)
from nefos.sdk._errors import OperationFailedError, OperationTimeoutError
from nefos.sdk._terminal import Terminal
from nefos.sdk._transport import Transport
from nefos.sdk._types import NOT_GIVEN, NotGiven

M = TypeVar("M", bound=BaseModel)


def _seg(value: str) -> str:
    """One path segment, escaped so that an id can never change the route."""
    return quote(str(value), safe="")


def _when(value: date | datetime | str | None) -> str | None:
    """A time (or date) as a query sends it: ISO 8601; a string as given."""
    return value.isoformat() if isinstance(value, date) else value


def _body(**fields: Any) -> dict[str, Any]:
    """The JSON body: None and NOT_GIVEN are left out."""
    return {k: v for k, v in fields.items() if v is not None and not isinstance(v, NotGiven)}


def _paging(page: int | None, limit: int | None, **extra: Any) -> dict[str, Any]:
    return _body(page=page, limit=limit, **extra)


def _idempotent(key: str | None) -> dict[str, str] | None:
    """The ``Idempotency-Key`` header of a write: the server answers a repeated
    request with the first one's response instead of doing the work twice."""
    return {"Idempotency-Key": key} if key else None


class _Resource:
    def __init__(self, client: Transport) -> None:
        self._client = client

    def _one(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        return model.model_validate(self._client.request(method, path, **kwargs))

    def _page(self, model: type[M], path: str, params: dict[str, Any]) -> Page[M]:
        data = self._client.request("GET", path, params=params)
        return Page[model].model_validate(data)  # type: ignore[valid-type]


class Auth(_Resource):
    """Accounts and sessions. ``register``, ``login``, ``refresh`` and
    ``change_password`` make the client use the session they return."""

    def register(
        self,
        *,
        email: str,
        password: str,
        name: str | None = None,
        username: str | None = None,
    ) -> AuthResult:
        body = _body(email=email, password=password, name=name, username=username)
        result = self._one(AuthResult, "POST", "/auth/register", json=body, authenticated=False)
        self._client._remember_login(email=email, username=None, password=password)
        self._client._adopt(result)
        return result

    def login(
        self,
        *,
        password: str,
        email: str | None = None,
        username: str | None = None,
        api_key: str | None = None,
    ) -> AuthResult:
        """Log in by e-mail or username. The password is kept in memory (only) so
        that the client can log in again when its refresh token stops working."""
        body = _body(email=email, username=username, password=password, api_key=api_key)
        result = self._one(AuthResult, "POST", "/auth/login", json=body, authenticated=False)
        self._client._remember_login(email=email, username=username, password=password)
        self._client._adopt(result)
        return result

    def refresh(self, refresh_token: str | None = None) -> AuthResult:
        """Spend a refresh token (default: the client's) for a new pair, and use it."""
        token = refresh_token or self._client.refresh_token
        if not token:
            raise ValueError("no refresh token: log in first")
        result = self._one(
            AuthResult,
            "POST",
            "/auth/refresh",
            json={"refresh_token": token},
            authenticated=False,
        )
        self._client._adopt(result)
        return result

    def logout(self) -> Message:
        """End the session on the server, then forget its tokens and password."""
        body = _body(refresh_token=self._client.refresh_token)
        try:
            return self._one(Message, "POST", "/auth/logout", json=body)
        finally:
            self._client._forget_session()

    def me(self) -> UserPublic:
        return self._one(UserPublic, "GET", "/auth/me")

    def sessions(
        self, *, page: int | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Page[SessionPublic]:
        """Your live sessions, newest first; ``current`` marks this client's."""
        return self._page(SessionPublic, "/auth/sessions", _paging(page, limit, cursor=cursor))

    def revoke_session(self, session_id: str) -> SessionPublic:
        """End one of your sessions: its tokens stop working at once."""
        return self._one(SessionPublic, "DELETE", f"/auth/sessions/{_seg(session_id)}")


class Users(_Resource):
    """The caller's own profile, settings and password."""

    def get_profile(self) -> UserPublic:
        return self._one(UserPublic, "GET", "/users/profile")

    def update_profile(
        self,
        *,
        name: str | None = None,
        username: str | None = None,
        email: str | None = None,
        current_password: str | None = None,
    ) -> UserPublic:
        """Changing ``email`` needs ``current_password``."""
        body = _body(name=name, username=username, email=email, current_password=current_password)
        return self._one(UserPublic, "PUT", "/users/profile", json=body)

    def get_settings(self) -> UserSettings:
        return self._one(UserSettings, "GET", "/users/settings")

    def update_settings(
        self,
        *,
        theme: str | None = None,
        language: str | None = None,
        timezone: str | None = None,
        email_notifications: bool | None = None,
        default_project_id: str | None = None,
    ) -> UserSettings:
        body = _body(
            theme=theme,
            language=language,
            timezone=timezone,
            email_notifications=email_notifications,
            default_project_id=default_project_id,
        )
        return self._one(UserSettings, "PUT", "/users/settings", json=body)

    def change_password(
        self, *, current_password: str, new_password: str, revoke_api_keys: bool = False
    ) -> AuthResult:
        """Change the password. The server ends every session and opens a new
        one, which the client adopts."""
        body = {
            "current_password": current_password,
            "new_password": new_password,
            "revoke_api_keys": revoke_api_keys,
        }
        result = self._one(AuthResult, "PUT", "/users/password", json=body)
        self._client._remember_login(email=result.user.email, username=None, password=new_password)
        self._client._adopt(result)
        return result


class Organisations(_Resource):
    """Organisations, their child organisations, members and invitations."""

    def list(
        self,
        *,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        all_orgs: bool = False,
    ) -> Page[OrganisationPublic]:
        """The caller's organisations; ``all_orgs=True`` (platform admins): every one."""
        params = _paging(page, limit, cursor=cursor, all="true" if all_orgs else None)
        return self._page(OrganisationPublic, "/organisations", params)

    def create(
        self,
        *,
        name: str,
        slug: str | None = None,
        kind: str | None = None,
        description: str | None = None,
    ) -> OrganisationPublic:
        """``kind`` is ``standard`` (default) or ``reseller``."""
        body = _body(name=name, slug=slug, kind=kind, description=description)
        return self._one(OrganisationPublic, "POST", "/organisations", json=body)

    def get(self, org_id: str) -> OrganisationPublic:
        return self._one(OrganisationPublic, "GET", f"/organisations/{_seg(org_id)}")

    def update(
        self,
        org_id: str,
        *,
        name: str | None = None,
        slug: str | None = None,
        description: str | None = None,
    ) -> OrganisationPublic:
        body = _body(name=name, slug=slug, description=description)
        return self._one(OrganisationPublic, "PUT", f"/organisations/{_seg(org_id)}", json=body)

    def delete(self, org_id: str) -> Message:
        """Delete an organisation with its projects."""
        return self._one(Message, "DELETE", f"/organisations/{_seg(org_id)}")

    def list_children(
        self,
        org_id: str,
        *,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[OrganisationPublic]:
        path = f"/organisations/{_seg(org_id)}/children"
        return self._page(OrganisationPublic, path, _paging(page, limit, cursor=cursor))

    def create_child(
        self,
        org_id: str,
        *,
        name: str,
        slug: str | None = None,
        kind: str | None = None,
        description: str | None = None,
        owner_email: str | None = None,
    ) -> ChildOrganisationCreated:
        """A reseller creates a customer organisation; ``owner_email`` is invited as its
        owner (``owner_invitation``, its token shown only here): the role takes effect
        when the invitee accepts."""
        body = _body(
            name=name, slug=slug, kind=kind, description=description, owner_email=owner_email
        )
        path = f"/organisations/{_seg(org_id)}/children"
        return self._one(ChildOrganisationCreated, "POST", path, json=body)

    def list_members(
        self,
        org_id: str,
        *,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[MemberPublic]:
        path = f"/organisations/{_seg(org_id)}/members"
        return self._page(MemberPublic, path, _paging(page, limit, cursor=cursor))

    def add_member(
        self,
        org_id: str,
        *,
        email: str,
        role: str | None = None,
        expires_in_days: int | None = None,
    ) -> InvitationCreated:
        """Invite ``email`` to join: they become a member when they accept (the answer's
        ``token``, shown only here; or they see it in ``my_invitations``). The answer is
        the same whether or not the address has an account.
        ``role``: ``owner``, ``admin``, ``member`` (default) or ``viewer``."""
        body = _body(email=email, role=role, expires_in_days=expires_in_days)
        path = f"/organisations/{_seg(org_id)}/members"
        return self._one(InvitationCreated, "POST", path, json=body)

    def update_member(self, org_id: str, user_id: str, *, role: str) -> MemberPublic:
        path = f"/organisations/{_seg(org_id)}/members/{_seg(user_id)}"
        return self._one(MemberPublic, "PUT", path, json={"role": role})

    def remove_member(self, org_id: str, user_id: str) -> Message:
        path = f"/organisations/{_seg(org_id)}/members/{_seg(user_id)}"
        return self._one(Message, "DELETE", path)

    def list_invitations(
        self,
        org_id: str,
        *,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[InvitationPublic]:
        path = f"/organisations/{_seg(org_id)}/invitations"
        return self._page(InvitationPublic, path, _paging(page, limit, cursor=cursor))

    def invite(
        self,
        org_id: str,
        *,
        email: str,
        role: str | None = None,
        expires_in_days: int | None = None,
    ) -> InvitationCreated:
        """Invite an address. The answer's ``token`` is shown only here: pass it on."""
        body = _body(email=email, role=role, expires_in_days=expires_in_days)
        path = f"/organisations/{_seg(org_id)}/invitations"
        return self._one(InvitationCreated, "POST", path, json=body)

    def revoke_invitation(self, org_id: str, invitation_id: str) -> Message:
        path = f"/organisations/{_seg(org_id)}/invitations/{_seg(invitation_id)}"
        return self._one(Message, "DELETE", path)

    def my_invitations(
        self, *, page: int | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Page[InvitationPublic]:
        """Pending invitations addressed to the caller's e-mail."""
        return self._page(InvitationPublic, "/invitations", _paging(page, limit, cursor=cursor))

    def accept_invitation(self, token: str) -> OrganisationPublic:
        return self._one(OrganisationPublic, "POST", "/invitations/accept", json={"token": token})


class Projects(_Resource):
    """Projects and their quotas."""

    def list(
        self,
        *,
        organisation_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[ProjectPublic]:
        params = _paging(page, limit, cursor=cursor, organisation_id=organisation_id)
        return self._page(ProjectPublic, "/projects", params)

    def create(
        self,
        *,
        name: str,
        description: str | None = None,
        organisation_id: str | None = None,
    ) -> ProjectPublic:
        """Without ``organisation_id``: in the organisation of the caller's default project."""
        body = _body(name=name, description=description, organisation_id=organisation_id)
        return self._one(ProjectPublic, "POST", "/projects", json=body)

    def get(self, project_id: str) -> ProjectPublic:
        return self._one(ProjectPublic, "GET", f"/projects/{_seg(project_id)}")

    def update(
        self, project_id: str, *, name: str | None = None, description: str | None = None
    ) -> ProjectPublic:
        body = _body(name=name, description=description)
        return self._one(ProjectPublic, "PUT", f"/projects/{_seg(project_id)}", json=body)

    def delete(self, project_id: str) -> Message:
        return self._one(Message, "DELETE", f"/projects/{_seg(project_id)}")

    def get_quotas(self, project_id: str) -> QuotaPublic:
        return self._one(QuotaPublic, "GET", f"/projects/{_seg(project_id)}/quotas")

    def set_quotas(
        self,
        project_id: str,
        *,
        instances: int | NotGiven | None = NOT_GIVEN,
        vcpus: int | NotGiven | None = NOT_GIVEN,
        memory_gb: int | NotGiven | None = NOT_GIVEN,
        storage_gb: int | NotGiven | None = NOT_GIVEN,
        containers: int | NotGiven | None = NOT_GIVEN,
    ) -> QuotaPublic:
        """Change some limits. A limit left out keeps its value; ``None`` lifts it."""
        limits = {
            "instances": instances,
            "vcpus": vcpus,
            "memory_gb": memory_gb,
            "storage_gb": storage_gb,
            "containers": containers,
        }
        body = {k: v for k, v in limits.items() if not isinstance(v, NotGiven)}
        path = f"/projects/{_seg(project_id)}/quotas"
        return self._one(QuotaPublic, "PUT", path, json=body)


class ApiKeys(_Resource):
    """The caller's API keys."""

    def list(
        self, *, page: int | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Page[ApiKeyPublic]:
        return self._page(ApiKeyPublic, "/api-keys", _paging(page, limit, cursor=cursor))

    def create(
        self,
        *,
        name: str,
        scopes: Sequence[str],
        expires_in_days: int | None = None,
        organisation_id: str | None = None,
    ) -> ApiKeyCreated:
        """Create a key with ``scopes`` such as ``compute:read`` (``*``: every scope,
        which only platform admins may grant). Its secret, ``key``, is in this
        answer only."""
        body = _body(
            name=name,
            scopes=list(scopes),
            expires_in_days=expires_in_days,
            organisation_id=organisation_id,
        )
        return self._one(ApiKeyCreated, "POST", "/api-keys", json=body)

    def get(self, key_id: str) -> ApiKeyPublic:
        return self._one(ApiKeyPublic, "GET", f"/api-keys/{_seg(key_id)}")

    def revoke(self, key_id: str) -> ApiKeyPublic:
        """Revoke a key: it fails from the next call on."""
        return self._one(ApiKeyPublic, "DELETE", f"/api-keys/{_seg(key_id)}")


class Admin(_Resource):
    """Platform administration (platform admins only)."""

    def list_users(
        self, *, page: int | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Page[UserPublic]:
        return self._page(UserPublic, "/admin/users", _paging(page, limit, cursor=cursor))

    def create_user(
        self,
        *,
        email: str,
        password: str,
        name: str | None = None,
        username: str | None = None,
        is_admin: bool = False,
    ) -> UserPublic:
        body = _body(
            email=email, password=password, name=name, username=username, is_admin=is_admin
        )
        return self._one(UserPublic, "POST", "/admin/users", json=body)

    def get_user(self, user_id: str) -> UserPublic:
        return self._one(UserPublic, "GET", f"/admin/users/{_seg(user_id)}")

    def update_user(
        self,
        user_id: str,
        *,
        is_active: bool | None = None,
        is_admin: bool | None = None,
        name: str | None = None,
    ) -> UserPublic:
        """``is_active=False`` disables the user: their sessions and keys end at once."""
        body = _body(is_active=is_active, is_admin=is_admin, name=name)
        return self._one(UserPublic, "PATCH", f"/admin/users/{_seg(user_id)}", json=body)


OperationLike = (
    str
    | OperationRef
    | OperationPublic
    | ContainerAccepted
    | VmAccepted
    | ImageAccepted
    | SnapshotAccepted
    | BackupAccepted
    | VolumeAccepted
)
"""What :meth:`Operations.wait` accepts: an id, an operation, or a 202's answer."""

_ENDED = ("succeeded", "failed", "cancelled")


def _operation_id(operation: OperationLike) -> str:
    if isinstance(operation, str):
        return operation
    if isinstance(operation, OperationRef | OperationPublic):
        return operation.id
    if operation.operation is None:  # an ImageAccepted of a container image (a 201)
        raise ValueError("nothing to wait for: the image was registered at once")
    return operation.operation.id


class Hosts(_Resource):
    """The hosts compute runs on, and their capacity (platform admins only)."""

    def list(
        self, *, page: int | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Page[HostPublic]:
        return self._page(HostPublic, "/resources/hosts", _paging(page, limit, cursor=cursor))

    def register(
        self,
        *,
        hostname: str,
        driver: str | None = None,
        uri: str | None = None,
        ip_address: str | None = None,
        cpu_cores: int | None = None,
        memory_gb: float | None = None,
        storage_gb: int | None = None,
        hypervisor_type: str | None = None,
        max_instances: int | None = None,
        enabled: bool | None = None,
        idempotency_key: str | None = None,
    ) -> HostPublic:
        """Add a host. ``driver`` is ``docker``, ``libvirt`` or ``sim``; ``uri`` is
        where Nefos reaches it (``unix:///run/podman/podman.sock``,
        ``tcp://10.0.0.5:2376``, ``qemu+ssh://root@10.0.0.6/system``). Without
        them they follow from ``hypervisor_type`` and ``ip_address``. The host is
        ``active`` if it answers now, else ``offline``; the capacity figures are
        used only while it cannot be reached."""
        body = _body(
            hostname=hostname,
            driver=driver,
            uri=uri,
            ip_address=ip_address,
            cpu_cores=cpu_cores,
            memory_gb=memory_gb,
            storage_gb=storage_gb,
            hypervisor_type=hypervisor_type,
            max_instances=max_instances,
            enabled=enabled,
        )
        headers = _idempotent(idempotency_key)
        return self._one(HostPublic, "POST", "/resources/hosts", json=body, headers=headers)

    def get(self, host_id: str) -> HostPublic:
        return self._one(HostPublic, "GET", f"/resources/hosts/{_seg(host_id)}")

    def delete(
        self, host_id: str, *, drain: bool = False, idempotency_key: str | None = None
    ) -> OperationRef | None:
        """Remove a host. One with instances on it needs ``drain=True``: they are
        moved to other hosts first, by the operation returned (follow it with
        :meth:`Operations.wait`). None when the host was removed at once."""
        data = self._client.request(
            "DELETE",
            f"/resources/hosts/{_seg(host_id)}",
            params={"drain": "true"} if drain else None,
            headers=_idempotent(idempotency_key),
        )
        operation = data.get("operation") if isinstance(data, dict) else None
        return OperationRef.model_validate(operation) if operation else None

    def stats(self) -> ResourceStats:
        """Capacity and use over every host, with a breakdown by class and driver."""
        return self._one(ResourceStats, "GET", "/resources/stats")


class Containers(_Resource):
    """Containers of a project. Writes answer at once (a :class:`ContainerAccepted`
    in a transitional status, such as ``creating``) and the work is done by the
    operation it names: follow it with ``client.operations.wait(accepted)``.

    ``project_id`` defaults to the caller's default project.
    """

    def list(
        self,
        *,
        status: str | None = None,
        user_id: str | None = None,
        project_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[ContainerPublic]:
        """One project's containers; ``status`` (``running``, ``stopped``, ``error``,
        ...) and ``user_id`` (the creator) filter them."""
        params = _paging(
            page, limit, cursor=cursor, status=status, user_id=user_id, project_id=project_id
        )
        return self._page(ContainerPublic, "/containers", params)

    def create(
        self,
        *,
        name: str,
        image: str,
        ports: Sequence[str | int] | None = None,
        environment: Mapping[str, str] | None = None,
        cpu: str | float | None = None,
        memory: str | None = None,
        storage: str | None = None,
        command: str | Sequence[str] | None = None,
        replicas: int = 1,
        project_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> ContainerAccepted:
        """Create and start a container of ``replicas`` replicas.

        ``ports``: ``"8080"`` (a free host port), ``"8081:80"`` (host:container),
        ``"127.0.0.1:8082:80/tcp"``. ``cpu`` in cores (``"0.5"``), ``memory``
        (``"64m"``, ``"1g"``) and ``storage`` (``"1Gi"``) are limits per replica
        (the server's defaults when left out). ``command`` is a list of arguments,
        or a string split like a shell would.
        """
        resources = _body(cpu=cpu, memory=memory, storage=storage)
        body = _body(
            name=name,
            image=image,
            ports=[str(p) for p in ports] if ports is not None else None,
            environment=dict(environment) if environment is not None else None,
            resources=resources or None,
            command=command if command is None or isinstance(command, str) else list(command),
            replicas=replicas,
            project_id=project_id,
        )
        headers = _idempotent(idempotency_key)
        return self._one(ContainerAccepted, "POST", "/containers", json=body, headers=headers)

    def get(self, container_id: str) -> ContainerPublic:
        """The container with its replicas, published ``endpoints`` and live
        ``metrics`` (None while nothing runs or its host does not answer)."""
        data = self._client.request("GET", f"/containers/{_seg(container_id)}")
        return ContainerPublic.model_validate(data["container"])

    def _write(
        self, method: str, path: str, key: str | None, body: Any = None
    ) -> ContainerAccepted:
        return self._one(ContainerAccepted, method, path, json=body, headers=_idempotent(key))

    def start(self, container_id: str, *, idempotency_key: str | None = None) -> ContainerAccepted:
        return self._write("PUT", f"/containers/{_seg(container_id)}/start", idempotency_key)

    def stop(self, container_id: str, *, idempotency_key: str | None = None) -> ContainerAccepted:
        return self._write("PUT", f"/containers/{_seg(container_id)}/stop", idempotency_key)

    def scale(
        self,
        container_id: str,
        *,
        replicas: int,
        strategy: str = "rolling",
        idempotency_key: str | None = None,
    ) -> ContainerAccepted:
        """Change the number of replicas. ``rolling`` starts the new replicas before
        removing any; ``recreate`` removes every old one, then starts the new ones."""
        body = {"replicas": replicas, "strategy": strategy}
        path = f"/containers/{_seg(container_id)}/scale"
        return self._write("POST", path, idempotency_key, body)

    def update(
        self,
        container_id: str,
        *,
        image: str | None = None,
        environment: Mapping[str, str] | None = None,
        command: str | Sequence[str] | NotGiven | None = NOT_GIVEN,
        cpu: str | float | None = None,
        memory: str | None = None,
        storage: str | None = None,
        idempotency_key: str | None = None,
    ) -> ContainerAccepted | ContainerPublic:
        """A rolling update to a new ``image``, ``environment`` (the whole set),
        ``command`` (``None``: the image's own) or resources: the replicas are replaced
        one at a time, each new one passing the service's check before an old one
        goes, and the update rolls back on its own if one does not (the operation then
        fails with ``ROLLED_BACK``). A :class:`ContainerAccepted` to follow; the
        container itself when nothing would change."""
        resources = _body(cpu=cpu, memory=memory, storage=storage)
        body = _body(
            image=image,
            environment=dict(environment) if environment is not None else None,
            resources=resources or None,
        )
        if not isinstance(command, NotGiven):
            body["command"] = (
                command if command is None or isinstance(command, str) else list(command)
            )
        data = self._client.request(
            "PUT",
            f"/containers/{_seg(container_id)}",
            json=body,
            headers=_idempotent(idempotency_key),
        )
        if isinstance(data, dict) and data.get("operation"):
            return ContainerAccepted.model_validate(data)
        return ContainerPublic.model_validate(data["container"])

    def delete(self, container_id: str, *, idempotency_key: str | None = None) -> ContainerAccepted:
        """Remove every replica, then the container (once the operation succeeds)."""
        return self._write("DELETE", f"/containers/{_seg(container_id)}", idempotency_key)

    def logs(
        self,
        container_id: str,
        *,
        tail: int = 100,
        replica: int | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        timestamps: bool = False,
    ) -> ContainerLogs:
        """The last ``tail`` lines of stdout and stderr of each replica (or of one), of
        those written between ``since`` and ``until``; each line after its time with
        ``timestamps``."""
        params = _body(
            tail=tail,
            replica=replica,
            since=_when(since),
            until=_when(until),
            timestamps="true" if timestamps else None,
        )
        return self._one(
            ContainerLogs, "GET", f"/containers/{_seg(container_id)}/logs", params=params
        )

    def follow(
        self,
        container_id: str,
        *,
        seconds: int = 60,
        since: datetime | str | None = None,
        replica: int | None = None,
    ) -> Iterator[ApiOutputLine]:
        """The lines the replicas (or replica ``replica``) write, from now (or
        ``since``) on, each with its replica and time, for ``seconds`` (at most 300);
        stop iterating to leave earlier."""
        params = _body(follow="true", seconds=seconds, since=_when(since), replica=replica)
        path = f"/containers/{_seg(container_id)}/logs"
        for line in self._client.stream(path, params, seconds):
            yield ApiOutputLine.model_validate_json(line)

    def terminal(
        self,
        container_id: str,
        *,
        replica: int | None = None,
        command: Sequence[str] | None = None,
        cols: int = 80,
        rows: int = 24,
    ) -> Terminal:
        """A terminal running ``command`` (default ``/bin/sh``) in a running replica
        (``replica``, or the lowest running one), to use as a context manager:
        ``with client.containers.terminal(cid) as t: t.send(b"ls\\n")``.
        See :class:`nefos.sdk.Terminal`."""
        return Terminal(
            self._client, container_id, replica=replica, command=command, cols=cols, rows=rows
        )

    def metrics(self, container_id: str, *, period: str = "1h") -> ContainerMetrics:
        """cpu and memory (% of the limits) and network (bytes per second in and out)
        over ``period``: ``1h``, ``24h``, ``7d`` or ``30d``."""
        return self._one(
            ContainerMetrics,
            "GET",
            f"/containers/{_seg(container_id)}/metrics",
            params={"period": period},
        )


class Vms(_Resource):
    """Virtual machines of a project. Writes answer at once (a :class:`VmAccepted`
    in a transitional status, such as ``creating``) and the work is done by the
    operation it names: follow it with ``client.operations.wait(accepted)``.

    ``project_id`` defaults to the caller's default project.
    """

    def list(
        self,
        *,
        status: str | None = None,
        project_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        skip: int | None = None,
    ) -> Page[VmPublic]:
        """One project's VMs; ``status`` (``running``, ``stopped``, ``error``, ...)
        filters them. ``skip`` (items to skip) is an alternative to ``page``."""
        params = _paging(
            page, limit, cursor=cursor, skip=skip, status=status, project_id=project_id
        )
        return self._page(VmPublic, "/vms", params)

    def create(
        self,
        name: str,
        *,
        image_id: str | None = None,
        os_type: str | None = None,
        os_version: str | None = None,
        cpu_cores: int = 1,
        memory_gb: float | None = None,
        memory_mb: int | None = None,
        storage_gb: int = 10,
        user_data: str | None = None,
        ssh_keys: Sequence[str] = (),
        network_id: str | None = None,
        service_port: int | None = None,
        flavor: str | None = None,
        project_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> VmAccepted:
        """Create and boot a VM from ``image_id``, or from the newest active image
        whose ``os_type`` (and ``os_version``) match.

        Memory is ``memory_gb`` (may be fractional) or ``memory_mb``, not both
        (1 GB when neither); ``storage_gb`` is the root disk. ``user_data``
        (cloud-init) and ``ssh_keys`` (OpenSSH public key lines) reach the guest on
        a NoCloud seed. ``network_id`` names one of the project's networks.
        ``service_port`` (the TCP port the guest serves on; needs a network with a
        subnet) makes the VM a service: ``client.services`` checks and routes it.
        """
        body = _body(
            name=name,
            image_id=image_id,
            os_type=os_type,
            os_version=os_version,
            cpu_cores=cpu_cores,
            memory_gb=memory_gb,
            memory_mb=memory_mb,
            storage_gb=storage_gb,
            user_data=user_data,
            ssh_keys=list(ssh_keys) or None,
            network_id=network_id,
            service_port=service_port,
            flavor=flavor,
            project_id=project_id,
        )
        headers = _idempotent(idempotency_key)
        return self._one(VmAccepted, "POST", "/vms", json=body, headers=headers)

    def get(self, vm_id: str) -> VmPublic:
        return self._one(VmPublic, "GET", f"/vms/{_seg(vm_id)}")

    def _write(self, method: str, path: str, key: str | None, body: Any = None) -> VmAccepted:
        return self._one(VmAccepted, method, path, json=body, headers=_idempotent(key))

    def update(
        self,
        vm_id: str,
        *,
        name: str | None = None,
        cpu_cores: int | None = None,
        memory_gb: float | None = None,
        memory_mb: int | None = None,
        storage_gb: int | None = None,
        service_port: int | NotGiven | None = NOT_GIVEN,
        idempotency_key: str | None = None,
    ) -> VmAccepted | VmPublic:
        """Resize and/or rename, or declare the port the guest serves on. New sizes
        need the VM stopped (a ConflictError otherwise) and the disk only grows; they
        are applied by the ``vm.resize`` operation of the :class:`VmAccepted`
        returned. When the sizes stay as they are (a rename, a service port), the
        change is made at once and the VM is returned. ``service_port=None`` ends
        the VM's service; leaving it out keeps it as it is."""
        body = _body(
            name=name,
            cpu_cores=cpu_cores,
            memory_gb=memory_gb,
            memory_mb=memory_mb,
            storage_gb=storage_gb,
        )
        if not isinstance(service_port, NotGiven):
            body["service_port"] = service_port
        data = self._client.request(
            "PUT", f"/vms/{_seg(vm_id)}", json=body, headers=_idempotent(idempotency_key)
        )
        if isinstance(data, dict) and data.get("operation"):
            return VmAccepted.model_validate(data)
        return VmPublic.model_validate(data["vm"])

    resize = update

    def start(self, vm_id: str, *, idempotency_key: str | None = None) -> VmAccepted:
        return self._write("POST", f"/vms/{_seg(vm_id)}/start", idempotency_key)

    def stop(
        self,
        vm_id: str,
        *,
        force: bool = False,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> VmAccepted:
        """Shut down gracefully (the ACPI power button), powering off after
        ``timeout`` seconds (default: the server's setting); ``force=True`` powers
        off at once."""
        body = _body(force=force, timeout=timeout)
        return self._write("POST", f"/vms/{_seg(vm_id)}/stop", idempotency_key, body)

    def reboot(
        self, vm_id: str, *, hard: bool = False, idempotency_key: str | None = None
    ) -> VmAccepted:
        """Ask the guest to reboot (ACPI); ``hard=True`` resets it. It must be running."""
        path = f"/vms/{_seg(vm_id)}/reboot"
        return self._write("POST", path, idempotency_key, {"hard": hard})

    def delete(self, vm_id: str, *, idempotency_key: str | None = None) -> VmAccepted:
        """Destroy the VM and its disks (once the operation succeeds); attached
        volumes are detached and kept."""
        return self._write("DELETE", f"/vms/{_seg(vm_id)}", idempotency_key)

    def console(self, vm_id: str, *, tail: int = 200) -> str:
        """The last ``tail`` lines of the serial console (boot messages, cloud-init)."""
        path = f"/vms/{_seg(vm_id)}/console"
        return self._one(VmConsole, "GET", path, params={"tail": tail}).console

    def attach_console(self, vm_id: str, *, force: bool = False) -> Terminal:
        """The running VM's serial console, interactive, to use as a context manager:
        ``with client.vms.attach_console(vm_id) as t: t.send(b"uname -a\\n")``. One
        console per VM at a time: another open one is ``ConflictError`` unless
        ``force`` takes it over (that one ends). See :class:`nefos.sdk.Terminal`."""
        return Terminal(
            self._client,
            path=f"/vms/{_seg(vm_id)}/console",
            params=[("force", "true" if force else "false")],
        )


PathLike = str | os.PathLike[str]


class Images(_Resource):
    """VM images (and container image references) that VMs are made from.

    Public images are visible to every project; the others to their project
    (``project_id``, default: the caller's default project).
    """

    def list(
        self,
        *,
        kind: str | None = None,
        os_type: str | None = None,
        status: str | None = None,
        project_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        skip: int | None = None,
    ) -> Page[ImagePublic]:
        """Public images and the project's own. ``kind``: ``vm`` or ``container``;
        ``status``: ``pending``, ``active``, ``error``, ``deleting``."""
        params = _paging(
            page,
            limit,
            cursor=cursor,
            skip=skip,
            kind=kind,
            os_type=os_type,
            status=status,
            project_id=project_id,
        )
        return self._page(ImagePublic, "/images", params)

    def register(
        self,
        name: str,
        *,
        path: str | None = None,
        kernel_path: str | None = None,
        initrd_path: str | None = None,
        kernel_cmdline: str | None = None,
        format: str | None = None,
        reference: str | None = None,
        kind: str = "vm",
        os_type: str = "",
        os_version: str = "",
        description: str = "",
        checksum: str | None = None,
        min_disk_gb: int = 0,
        public: bool | None = None,
        project_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> ImageAccepted:
        """Register an image without sending its bytes.

        A VM image (platform admins only) from files on the *Nefos server*: ``path``
        (a qcow2 or raw disk, or a folder holding ``vmlinuz``, ``initrd.img`` and
        optionally ``cmdline``), or ``kernel_path`` (with ``initrd_path`` and
        ``kernel_cmdline``). It is public unless ``public=False``. The answer's
        operation copies, checks (``checksum``: ``sha256:<hex>``) and imports it
        into every libvirt host: wait for it before using the image.

        A container image is ``kind="container"`` with a ``reference``
        (``nginx:alpine``); it is usable at once and its answer has no operation.
        """
        body = _body(
            name=name,
            path=path,
            kernel_path=kernel_path,
            initrd_path=initrd_path,
            kernel_cmdline=kernel_cmdline,
            format=format,
            reference=reference,
            kind=kind,
            os_type=os_type,
            os_version=os_version,
            description=description,
            checksum=checksum,
            min_disk_gb=min_disk_gb,
            public=public,
            project_id=project_id,
        )
        headers = _idempotent(idempotency_key)
        return self._one(ImageAccepted, "POST", "/images", json=body, headers=headers)

    def upload(
        self,
        name: str,
        *,
        disk: PathLike | None = None,
        kernel: PathLike | None = None,
        initrd: PathLike | None = None,
        kernel_cmdline: str | None = None,
        format: str | None = None,
        os_type: str = "",
        os_version: str = "",
        description: str = "",
        checksum: str | None = None,
        min_disk_gb: int = 0,
        public: bool = False,
        project_id: str | None = None,
    ) -> ImageAccepted:
        """Upload a VM image from local files: a ``disk`` (qcow2 or raw; ``format``
        is detected unless given), or a ``kernel`` (with ``initrd`` and
        ``kernel_cmdline``). The files are streamed (multipart/form-data); the
        answer's operation checks and imports the image: wait for it.

        No ``idempotency_key``: the server fingerprints a keyed request by its
        whole body, and refuses bodies over 8 MiB with one.
        """
        fields = _body(
            name=name,
            kernel_cmdline=kernel_cmdline,
            format=format,
            os_type=os_type,
            os_version=os_version,
            description=description,
            checksum=checksum,
            min_disk_gb=str(min_disk_gb),
            public="true" if public else "false",
        )
        with ExitStack() as stack:
            files: dict[str, tuple[str, IO[bytes]]] = {}
            for part, source in (("disk", disk), ("kernel", kernel), ("initrd", initrd)):
                if source is not None:
                    handle = stack.enter_context(open(source, "rb"))
                    files[part] = (os.path.basename(source), handle)
            data = self._client.request(
                "POST",
                "/images/upload",
                params=_body(project_id=project_id) or None,
                data=fields,
                files=files or None,
            )
        return ImageAccepted.model_validate(data)

    def get(self, image_id: str) -> ImagePublic:
        return self._one(ImagePublic, "GET", f"/images/{_seg(image_id)}")

    def delete(self, image_id: str, *, idempotency_key: str | None = None) -> OperationRef | None:
        """Delete an image; refused (ConflictError) while a VM or a backup uses it.
        A VM image is removed from every host by the operation returned (follow it
        with :meth:`Operations.wait`); None when the image was deleted at once."""
        data = self._client.request(
            "DELETE", f"/images/{_seg(image_id)}", headers=_idempotent(idempotency_key)
        )
        operation = data.get("operation") if isinstance(data, dict) else None
        return OperationRef.model_validate(operation) if operation else None


class Snapshots(_Resource):
    """Snapshots of a stopped VM's disks (its root disk and attached volumes). They
    go with the VM. Writes answer a :class:`SnapshotAccepted`: follow its operation
    with ``client.operations.wait(accepted)``."""

    def list(
        self,
        *,
        vm_id: str | None = None,
        status: str | None = None,
        project_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        skip: int | None = None,
    ) -> Page[SnapshotPublic]:
        """One project's snapshots (default: the caller's default project), or one
        VM's (``vm_id``); ``status``: ``creating``, ``available``, ``reverting``,
        ``deleting``, ``error``."""
        params = _paging(
            page, limit, cursor=cursor, skip=skip, vm_id=vm_id, status=status, project_id=project_id
        )
        return self._page(SnapshotPublic, "/snapshots", params)

    def create(
        self,
        vm_id: str,
        *,
        name: str | None = None,
        description: str = "",
        idempotency_key: str | None = None,
    ) -> SnapshotAccepted:
        """Snapshot a VM; a ConflictError unless it is stopped. ``name`` defaults to
        ``<vm name>-snap-<n>``."""
        body = _body(name=name, description=description)
        path = f"/vms/{_seg(vm_id)}/snapshots"
        return self._write("POST", path, idempotency_key, body)

    def get(self, snapshot_id: str) -> SnapshotPublic:
        return self._one(SnapshotPublic, "GET", f"/snapshots/{_seg(snapshot_id)}")

    def _write(self, method: str, path: str, key: str | None, body: Any = None) -> SnapshotAccepted:
        return self._one(SnapshotAccepted, method, path, json=body, headers=_idempotent(key))

    def restore(self, snapshot_id: str, *, idempotency_key: str | None = None) -> SnapshotAccepted:
        """Revert the VM's disks to the snapshot (the VM stopped); its sizes stay."""
        path = f"/snapshots/{_seg(snapshot_id)}/restore"
        return self._write("POST", path, idempotency_key)

    def delete(self, snapshot_id: str, *, idempotency_key: str | None = None) -> SnapshotAccepted:
        return self._write("DELETE", f"/snapshots/{_seg(snapshot_id)}", idempotency_key)


class Backups(_Resource):
    """Full copies of a stopped VM's disks, kept on its host's backup storage; they
    outlive the VM. Writes answer at once: follow their operation with
    ``client.operations.wait(accepted)``."""

    def list(
        self,
        *,
        vm_id: str | None = None,
        status: str | None = None,
        project_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        skip: int | None = None,
    ) -> Page[BackupPublic]:
        """One project's backups (default: the caller's default project); ``vm_id``
        and ``status`` (``creating``, ``available``, ``deleting``, ``error``) filter them."""
        params = _paging(
            page, limit, cursor=cursor, skip=skip, vm_id=vm_id, status=status, project_id=project_id
        )
        return self._page(BackupPublic, "/backups", params)

    def create(
        self, vm_id: str, *, name: str | None = None, idempotency_key: str | None = None
    ) -> BackupAccepted:
        """Back a VM up; a ConflictError unless it is stopped. ``name`` defaults to
        ``<vm name>-backup``."""
        body = _body(vm_id=vm_id, name=name)
        headers = _idempotent(idempotency_key)
        return self._one(BackupAccepted, "POST", "/backups", json=body, headers=headers)

    def get(self, backup_id: str) -> BackupPublic:
        return self._one(BackupPublic, "GET", f"/backups/{_seg(backup_id)}")

    def restore(
        self,
        backup_id: str,
        *,
        name: str,
        cpu_cores: int | None = None,
        memory_mb: int | None = None,
        user_data: str | None = None,
        network_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> VmAccepted:
        """Restore into a new VM named ``name``, on the backup's host (its sizes
        unless given): the answer is the new VM's, as from :meth:`Vms.create`."""
        body = _body(
            name=name,
            cpu_cores=cpu_cores,
            memory_mb=memory_mb,
            user_data=user_data,
            network_id=network_id,
        )
        path = f"/backups/{_seg(backup_id)}/restore"
        return self._one(VmAccepted, "POST", path, json=body, headers=_idempotent(idempotency_key))

    def delete(self, backup_id: str, *, idempotency_key: str | None = None) -> BackupAccepted:
        path = f"/backups/{_seg(backup_id)}"
        return self._one(BackupAccepted, "DELETE", path, headers=_idempotent(idempotency_key))


class Volumes(_Resource):
    """Data disks for VMs, counted in the storage quota. Writes answer a
    :class:`VolumeAccepted`: follow its operation with
    ``client.operations.wait(accepted)``."""

    def list(
        self,
        *,
        vm_id: str | None = None,
        status: str | None = None,
        project_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        skip: int | None = None,
    ) -> Page[VolumePublic]:
        """One project's volumes (default: the caller's default project); ``vm_id``
        and ``status`` (``available``, ``in-use``, ``error``, ...) filter them."""
        params = _paging(
            page, limit, cursor=cursor, skip=skip, vm_id=vm_id, status=status, project_id=project_id
        )
        return self._page(VolumePublic, "/volumes", params)

    def create(
        self,
        name: str,
        *,
        size_gb: int,
        vm_id: str | None = None,
        project_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> VolumeAccepted:
        """A blank volume of ``size_gb``, made on the host of ``vm_id`` and attached
        to it when given."""
        body = _body(name=name, size_gb=size_gb, vm_id=vm_id, project_id=project_id)
        return self._write("POST", "/volumes", idempotency_key, body)

    def get(self, volume_id: str) -> VolumePublic:
        return self._one(VolumePublic, "GET", f"/volumes/{_seg(volume_id)}")

    def _write(self, method: str, path: str, key: str | None, body: Any = None) -> VolumeAccepted:
        return self._one(VolumeAccepted, method, path, json=body, headers=_idempotent(key))

    def attach(
        self, volume_id: str, vm_id: str, *, idempotency_key: str | None = None
    ) -> VolumeAccepted:
        """Attach to a VM on the volume's host (live if it runs); the volume's
        ``device`` (``vdb``, ...) is set once the operation succeeds."""
        path = f"/volumes/{_seg(volume_id)}/attach"
        return self._write("POST", path, idempotency_key, {"vm_id": vm_id})

    def detach(self, volume_id: str, *, idempotency_key: str | None = None) -> VolumeAccepted:
        return self._write("POST", f"/volumes/{_seg(volume_id)}/detach", idempotency_key)

    def resize(
        self, volume_id: str, size_gb: int, *, idempotency_key: str | None = None
    ) -> VolumeAccepted:
        """Grow the volume to ``size_gb`` (it never shrinks)."""
        path = f"/volumes/{_seg(volume_id)}/resize"
        return self._write("POST", path, idempotency_key, {"size_gb": size_gb})

    def delete(self, volume_id: str, *, idempotency_key: str | None = None) -> VolumeAccepted:
        """Delete a volume; a ConflictError while it is attached."""
        return self._write("DELETE", f"/volumes/{_seg(volume_id)}", idempotency_key)


class Networks(_Resource):
    """Isolated networks of a project that VMs join (``network_id`` on create)."""

    def list(
        self,
        *,
        status: str | None = None,
        project_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        skip: int | None = None,
    ) -> Page[NetworkPublic]:
        """One project's networks (default: the caller's default project)."""
        params = _paging(
            page, limit, cursor=cursor, skip=skip, status=status, project_id=project_id
        )
        return self._page(NetworkPublic, "/networks", params)

    def create(
        self,
        name: str,
        *,
        cidr: str | None = None,
        project_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> NetworkPublic:
        """Record a network, made at once (no operation): each host creates it when
        its first VM joins. An IPv4 ``cidr`` (``10.20.0.0/24``) gets DHCP."""
        body = _body(name=name, cidr=cidr, project_id=project_id)
        headers = _idempotent(idempotency_key)
        return self._one(NetworkPublic, "POST", "/networks", json=body, headers=headers)

    def get(self, network_id: str) -> NetworkPublic:
        return self._one(NetworkPublic, "GET", f"/networks/{_seg(network_id)}")

    def delete(self, network_id: str, *, idempotency_key: str | None = None) -> OperationRef:
        """Delete a network; a ConflictError while a VM uses it. The operation
        returned removes it from every host: follow it with :meth:`Operations.wait`."""
        data = self._client.request(
            "DELETE", f"/networks/{_seg(network_id)}", headers=_idempotent(idempotency_key)
        )
        return OperationRef.model_validate(data["operation"])


class Operations(_Resource):
    """The long actions behind every 202: follow, wait for, cancel them."""

    def list(
        self,
        *,
        resource_id: str | None = None,
        status: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[OperationPublic]:
        """Operations in the projects you can see, newest first. ``status``:
        ``pending``, ``running``, ``succeeded``, ``failed`` or ``cancelled``."""
        params = _paging(page, limit, cursor=cursor, resource_id=resource_id, status=status)
        return self._page(OperationPublic, "/operations", params)

    def get(self, operation_id: str) -> OperationPublic:
        return self._one(OperationPublic, "GET", f"/operations/{_seg(operation_id)}")

    def cancel(self, operation_id: str, *, idempotency_key: str | None = None) -> OperationPublic:
        """Cancel a pending operation; what its request reserved is undone (a
        cancelled create removes the container). A ConflictError once it runs."""
        path = f"/operations/{_seg(operation_id)}"
        return self._one(OperationPublic, "DELETE", path, headers=_idempotent(idempotency_key))

    def wait(
        self,
        operation: OperationLike,
        *,
        timeout: float | None = 600.0,
        poll: float = 1.0,
        on_progress: Callable[[OperationPublic], None] | None = None,
    ) -> OperationPublic:
        """Poll an operation every ``poll`` seconds until it ends; the succeeded
        operation. ``operation`` is an id, an operation, or a write's answer.

        ``on_progress`` is called with the operation each time it is read.
        Raises :class:`OperationFailedError` (with the operation's error code and
        message) if it failed or was cancelled, and :class:`OperationTimeoutError`
        after ``timeout`` seconds (None: no limit), which leaves it running.
        """
        if poll <= 0:
            raise ValueError("poll must be positive")
        operation_id = _operation_id(operation)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            op = self.get(operation_id)
            if on_progress is not None:
                on_progress(op)
            if op.status in _ENDED:
                if op.status != "succeeded":
                    raise OperationFailedError(op)
                return op
            delay = poll
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OperationTimeoutError(op, timeout or 0.0)
                delay = min(poll, left)
            time.sleep(delay)


class Monitoring(_Resource):
    """Metrics: series of a VM or a host over the last hours, the platform now.

    Series are ``{metric: [{timestamp, value}]}`` at the finest resolution (raw,
    1m, 1h) that gives at most 1,500 points; hosts and the platform are for
    platform admins."""

    def vm_metrics(self, vm_id: str, *, hours: int = 24) -> VmMetrics:
        return self._one(
            VmMetrics, "GET", f"/monitoring/vm-metrics/{_seg(vm_id)}", params={"hours": hours}
        )

    def host_metrics(self, host_id: str, *, hours: int = 24) -> HostMetrics:
        return self._one(
            HostMetrics,
            "GET",
            f"/monitoring/host-metrics/{_seg(host_id)}",
            params={"hours": hours},
        )

    def system_metrics(self) -> SystemMetrics:
        return self._one(SystemMetrics, "GET", "/monitoring/system-metrics")

    def summary(self) -> MetricsSummary:
        """Seed 004's ``GET /metrics``: the system and request blocks (the platform for
        platform admins, your organisations' projects for anyone else)."""
        return self._one(MetricsSummary, "GET", "/metrics")
