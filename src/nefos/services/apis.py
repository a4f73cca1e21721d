"""APIs (seed 002's API management): a creator's API is a container service.

``POST /apis`` makes the API's container (its replicas are the API's instances,
one service in ``services.discovery``) with an HTTP health check on the API's
``health_check_path``, so a replica takes calls only once it passes; the API row
and its first *deployment* are written in the container's own transaction. Every
deployment records the spec it runs (image, environment, resources, replicas) and
the operation that carried it out; its status is that operation's, read, never
written twice.

Deleting an API deletes its container and keeps the row (``deleted_at``), its
deployments and what refers to it (logs, usage, invoices); its name is free again.
In the transaction that marks it deleted, its listing is unpublished and its
subscriptions end at once, their keys revoked and the unused part of each paid
monthly period credited (``market_endings.end_for_api``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import Api, ApiDeployment, Container, Operation, Project, ServiceSettings
from nefos.db.session import begin_write
from nefos.db.types import new_id, utcnow
from nefos.domain.access import Permission
from nefos.domain.errors import Conflict, NotFound, ValidationFailed
from nefos.domain.paging import PageParams
from nefos.schemas.apis import ApiCreate, ApiUpdate, UnitRulePublic
from nefos.schemas.compute import (
    ContainerCreate,
    ContainerResources,
    ContainerScale,
    ContainerUpdate,
)
from nefos.schemas.services import HealthCheck
from nefos.services.containers import ContainerService
from nefos.services.core import Core
from nefos.services.endpoints import host_label
from nefos.services.market_endings import end_for_api
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal, authorize_project

#: How often an API's replicas are checked (a new replica is checked at once).
CHECK_INTERVAL = 5.0


def health_check(api: Api) -> dict[str, Any]:
    """The service check of an API (the stored form of ``PUT /services/{id}``'s
    ``check``): GET its health-check path on its port, 2xx or 3xx passing."""
    return HealthCheck(
        type="http", port=api.port, path=api.health_check_path, interval=CHECK_INTERVAL
    ).model_dump(mode="json")


def stored_units(rules: Sequence[UnitRulePublic] | None) -> list[dict[str, Any]] | None:
    """The per-endpoint units as ``apis.units`` keeps them (None: every call is 1)."""
    return [r.model_dump(mode="json") for r in rules] if rules else None


def container_name(api_name: str) -> str:
    """The API's container: ``api-{name}``, kept within a container name's 63."""
    return f"api-{api_name}"[:63]


def deployment_status(op: Operation | None, active: bool) -> str:
    """A deployment's status, from its operation: ``in_progress``, ``active`` (the
    newest that succeeded: serving now), ``succeeded`` (superseded since),
    ``rolled_back``, ``failed`` or ``cancelled``."""
    if op is None:
        return "succeeded"
    if op.status in ("pending", "running"):
        return "in_progress"
    if op.status == "succeeded":
        return "active" if active else "succeeded"
    if op.status == "failed":
        return "rolled_back" if (op.result or {}).get("rolled_back") else "failed"
    return op.status


class ApiService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    # --- reading ----------------------------------------------------------------------
    async def visible(self, principal: Principal, api_id: str, permission: Permission) -> Api:
        """The live API if the caller may act on it; another tenant's, a deleted one
        and a missing one are alike NotFound."""
        api = await self.session.get(Api, api_id)
        if api is not None and api.deleted_at is None:
            try:
                await authorize_project(self.session, principal, api.project_id, permission)
                return api
            except NotFound:
                pass
        raise NotFound("API not found", api_id=api_id)

    async def list_page(self, project: Project, page: PageParams) -> tuple[Sequence[Api], int]:
        return await fetch_page(
            self.session,
            Api,
            Api.project_id == project.id,
            Api.deleted_at.is_(None),
            order_by=(Api.created_at, Api.id),
            page=page,
        )

    async def containers(self, apis: Sequence[Api]) -> dict[str, Container]:
        ids = [a.container_id for a in apis if a.container_id]
        if not ids:
            return {}
        rows = await self.session.scalars(select(Container).where(Container.id.in_(ids)))
        return {c.id: c for c in rows}

    async def deployments(
        self, apis: Sequence[Api], *, latest_only: bool = False
    ) -> dict[str, list[tuple[ApiDeployment, Operation | None, str]]]:
        """Each API's deployments, newest first, with their operation and status."""
        out: dict[str, list[tuple[ApiDeployment, Operation | None, str]]] = {a.id: [] for a in apis}
        if not apis:
            return out
        rows = (
            await self.session.execute(
                select(ApiDeployment, Operation)
                .outerjoin(Operation, Operation.id == ApiDeployment.operation_id)
                .where(ApiDeployment.api_id.in_([a.id for a in apis]))
                .order_by(ApiDeployment.api_id, ApiDeployment.number.desc())
            )
        ).all()
        for deployment, op in rows:
            listed = out[deployment.api_id]
            active = (
                op is not None
                and op.status == "succeeded"
                and not any(o is not None and o.status == "succeeded" for _, o, _ in listed)
            )
            listed.append((deployment, op, deployment_status(op, active)))
        if latest_only:
            return {k: v[:1] for k, v in out.items()}
        return out

    # --- writing ----------------------------------------------------------------------
    async def _name_free(self, project_id: str, name: str, slug: str) -> None:
        taken = await self.session.scalar(
            select(Api.id).where(
                Api.project_id == project_id, Api.name == name, Api.deleted_at.is_(None)
            )
        )
        if taken:
            raise Conflict("An API with this name exists in the project", name=name)
        if await self.session.scalar(select(Api.id).where(Api.slug == slug)):
            raise Conflict("This slug is taken; choose another", slug=slug)

    async def create(
        self, principal: Principal, project: Project, body: ApiCreate
    ) -> tuple[Api, ApiDeployment, Operation]:
        """Make the API's container and record the API and its first deployment, in
        one transaction; the container's ``container.create`` is the deployment's
        operation."""
        api = Api(
            id=new_id(),
            project_id=project.id,
            user_id=principal.user_id,
            name=body.name,
            description=body.description,
            port=body.port,
            health_check_path=body.health_check_path,
            base_path=body.base_path,
            openapi=body.openapi,
            openapi_path=body.openapi_path,
            units=stored_units(body.units),
            units_header=body.units_header,
        )
        api.slug = body.slug or host_label(body.name, api.id)
        await self._name_free(project.id, body.name, api.slug)
        spec = ContainerCreate(
            name=container_name(body.name),
            image=body.image,
            ports=[str(body.port)],
            environment=body.environment,
            resources=body.resources,
            replicas=body.replicas,
            project_id=project.id,
        )
        made: dict[str, Any] = {}

        async def record(container: Container, op: Operation) -> None:
            api.container_id = container.id
            self.session.add(api)
            self.session.add(
                ServiceSettings(
                    id=container.id,
                    container_id=container.id,
                    version="1",
                    tags=["api"],
                    meta={"api_id": api.id, "api_slug": api.slug},
                    check=health_check(api),
                )
            )
            deployment = ApiDeployment(
                api_id=api.id,
                number=1,
                image=body.image,
                environment=dict(body.environment),
                resources=dict(container.resources),
                replicas=body.replicas,
                operation_id=op.id,
                user_id=principal.user_id,
            )
            self.session.add(deployment)
            await self.session.flush()
            made["deployment"], made["op"] = deployment, op

        try:
            await ContainerService(self.core, self.session).create(
                principal, project, spec, also=record
            )
        except Conflict as exc:
            # The container's name (api-NAME) or, in a race, the API's name or slug.
            raise Conflict(
                "An API (or a container named api-NAME) with this name exists in the project",
                name=body.name,
            ) from exc
        return api, made["deployment"], made["op"]

    async def update(
        self, principal: Principal, api: Api, body: ApiUpdate
    ) -> tuple[Api, ApiDeployment | None, Operation | None]:
        """What changes at once (description, paths, OpenAPI, the health check, units) is
        written now. A new image, environment or resources is a deployment rolled
        out by the container's rolling update (``container.update``: replica by
        replica, each new one taking calls once it passes, rolled back if one never
        does); a new replica count alone is a deployment carried out by a scale."""
        spec_change = any(
            getattr(body, k) is not None for k in ("image", "environment", "resources")
        )
        if spec_change and body.replicas is not None:
            raise ValidationFailed(
                "Change the image, environment or resources, or the replicas, in one "
                "request each (each is a deployment of its own)",
                replicas="not with a new spec",
            )
        # The deployment first: if it is refused (quota, a busy container, a bad
        # image), nothing of the request is written. (The container's calls commit
        # and roll back this session: ``api`` is read from here on by its ids.)
        api_id, container_id = api.id, api.container_id
        deployment: ApiDeployment | None = None
        op: Operation | None = None
        container = await self.session.get(Container, container_id) if container_id else None
        if container is not None:
            containers = ContainerService(self.core, self.session)
            if spec_change:
                given = {k: getattr(body, k) for k in ("image", "environment", "resources")}
                update = ContainerUpdate(**{k: v for k, v in given.items() if v is not None})
                container, op = await containers.update(principal, container, update)
            elif body.replicas is not None and container.replicas != body.replicas:
                container, op = await containers.scale(
                    principal, container, ContainerScale(replicas=body.replicas)
                )
            if op is not None:
                deployment = await self._record(api_id, container, op, principal)
        await begin_write(self.session)
        current = await self.session.get(Api, api_id, populate_existing=True)
        if current is None or current.deleted_at is not None:
            await self.session.rollback()
            raise NotFound("API not found", api_id=api_id)
        fields = body.model_fields_set
        for name in ("description", "base_path", "openapi", "openapi_path", "units_header"):
            if name in fields:
                setattr(current, name, getattr(body, name))
        if "units" in fields:
            # (The gateway reads them with a key: in effect within its key memory, 5 s.)
            current.units = stored_units(body.units)
        if body.health_check_path is not None and body.health_check_path != (
            current.health_check_path
        ):
            current.health_check_path = body.health_check_path
            if current.container_id:
                settings = await self.session.get(ServiceSettings, current.container_id)
                if settings is not None:
                    settings.check = health_check(current)
                    settings.updated_at = utcnow()
        current.updated_at = utcnow()
        await self.session.commit()
        return current, deployment, op

    async def rollback(self, principal: Principal, api: Api) -> tuple[ApiDeployment, Operation]:
        """Deploy again the spec (image, environment, resources) of the newest earlier
        deployment that succeeded with another spec than the one running now: a new
        deployment (``rollback_of`` names the one it restores), rolled out like any
        other, at the replica count the API runs now (a scale is no spec to roll back
        to, nor does it stand in the way)."""
        api_id, container_id = api.id, api.container_id
        listed = (await self.deployments([api]))[api_id]
        active = next((i for i, (_, _, st) in enumerate(listed) if st == "active"), None)
        if active is None:
            raise Conflict("No deployment of this API is active: nothing to roll back from")
        container = await self.session.get(Container, container_id) if container_id else None
        if container is None:
            raise NotFound("API not found", api_id=api_id)
        running = (container.image, dict(container.environment), dict(container.resources))
        earlier = next(
            (
                d
                for d, op, _ in listed[active + 1 :]
                if op is not None
                and op.status == "succeeded"
                and (d.image, dict(d.environment), dict(d.resources)) != running
            ),
            None,
        )
        if earlier is None:
            raise Conflict(
                "No earlier deployment with another spec succeeded: nothing to roll back to"
            )
        containers = ContainerService(self.core, self.session)
        earlier_id, number = earlier.id, earlier.number
        container, op = await containers.update(
            principal,
            container,
            ContainerUpdate(
                image=earlier.image,
                environment=dict(earlier.environment),
                resources=ContainerResources.model_validate(earlier.resources),
            ),
        )
        if op is None:
            raise Conflict(f"The API already runs deployment {number}'s spec")
        deployment = await self._record(api_id, container, op, principal, rollback_of=earlier_id)
        return deployment, op

    async def _record(
        self,
        api_id: str,
        container: Container,
        op: Operation,
        principal: Principal,
        *,
        rollback_of: str | None = None,
    ) -> ApiDeployment:
        """A deployment of the container's spec now, carried out by ``op``."""
        await begin_write(self.session)
        number = await self.session.scalar(
            select(func.coalesce(func.max(ApiDeployment.number), 0)).where(
                ApiDeployment.api_id == api_id
            )
        )
        deployment = ApiDeployment(
            api_id=api_id,
            number=int(number or 0) + 1,
            image=container.image,
            environment=dict(container.environment),
            resources=dict(container.resources),
            replicas=container.replicas,
            rollback_of=rollback_of,
            operation_id=op.id,
            user_id=principal.user_id,
        )
        self.session.add(deployment)
        try:
            await self.session.commit()
        except IntegrityError as exc:  # two changes at once: the operation lock refuses one
            await self.session.rollback()
            raise Conflict("Another change of this API is being recorded; retry") from exc
        return deployment

    async def delete(self, principal: Principal, api: Api) -> Operation | None:
        """Delete the API's container (its replicas drain and go) and mark the API
        deleted; its row, deployments and what refers to it stay. In the same
        transaction as the mark, and only by the request that sets it: the listing is
        unpublished and its subscriptions end with their credits (``end_for_api``)."""
        api_id, container_id = api.id, api.container_id
        op = None
        if container_id:
            container = await self.session.get(Container, container_id)
            if container is not None:
                _, op = await ContainerService(self.core, self.session).delete(principal, container)
        await begin_write(self.session)
        current = await self.session.get(Api, api_id, populate_existing=True, with_for_update=True)
        if current is not None and current.deleted_at is None:
            now = utcnow()
            current.deleted_at = now
            await end_for_api(self.session, self.core.settings, api_id, now)
        await self.session.commit()
        return op
