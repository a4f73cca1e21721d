"""APIs (seed 002's API management): deploy an API from a container image, and
follow its deployments, logs and metrics."""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from nefos.schemas.apis import (
    ApiAccepted,
    ApiCallLog,
    ApiLogs,
    ApiOutputLine,
    ApiPublic,
    DeploymentPublic,
)
from nefos.schemas.common import Page
from nefos.sdk._resources import _body, _idempotent, _paging, _Resource, _seg, _when

APIS = "/apis"


class Apis(_Resource):
    """A creator's APIs. ``deploy`` answers at once (an :class:`ApiAccepted` with the
    first deployment and its operation: follow it with
    ``client.operations.wait(accepted)``); the API takes calls once a replica passes
    its health check (``client.services.get(api.container_id)``)."""

    def list(
        self,
        *,
        project_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[ApiPublic]:
        return self._page(
            ApiPublic, APIS, _paging(page, limit, cursor=cursor, project_id=project_id)
        )

    def deploy(
        self,
        name: str,
        *,
        image: str,
        port: int,
        health_check_path: str = "/health",
        replicas: int = 1,
        environment: Mapping[str, str] | None = None,
        resources: Mapping[str, str] | None = None,
        base_path: str | None = None,
        description: str | None = None,
        slug: str | None = None,
        openapi: Mapping[str, Any] | None = None,
        openapi_path: str | None = None,
        units: Sequence[Mapping[str, Any]] | None = None,
        units_header: str | None = None,
        project_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> ApiAccepted:
        """Deploy an API: ``replicas`` containers of ``image`` serving ``port``,
        each checked on ``health_check_path``. ``units``: per-endpoint units,
        ``[{"method": "POST", "path": "/v1/translate", "units": 5}, ...]`` (a path
        ending in ``/*`` is a prefix; first match wins, else 1); ``units_header``:
        a header of the API's answers whose integer (0-1000) overrides them."""
        body = _body(
            name=name,
            image=image,
            port=port,
            health_check_path=health_check_path,
            replicas=replicas,
            environment=None if environment is None else dict(environment),
            resources=None if resources is None else dict(resources),
            base_path=base_path,
            description=description,
            slug=slug,
            openapi=None if openapi is None else dict(openapi),
            openapi_path=openapi_path,
            units=None if units is None else [dict(u) for u in units],
            units_header=units_header,
            project_id=project_id,
        )
        return self._one(ApiAccepted, "POST", APIS, json=body, headers=_idempotent(idempotency_key))

    def get(self, api_id: str) -> ApiPublic:
        return ApiPublic.model_validate(
            self._client.request("GET", f"{APIS}/{_seg(api_id)}")["api"]
        )

    def update(
        self,
        api_id: str,
        *,
        image: str | None = None,
        environment: Mapping[str, str] | None = None,
        resources: Mapping[str, str] | None = None,
        replicas: int | None = None,
        health_check_path: str | None = None,
        base_path: str | None = None,
        description: str | None = None,
        openapi: Mapping[str, Any] | None = None,
        openapi_path: str | None = None,
        units: Sequence[Mapping[str, Any]] | None = None,
        units_header: str | None = None,
        idempotency_key: str | None = None,
    ) -> ApiAccepted:
        """Change what is given. A new image, environment or resources is a
        deployment rolled out replica by replica (rolled back if a new replica never
        passes its check), and so is a new replica count: the answer's
        ``operation`` carries it out. The rest changes at once (no operation).
        ``units`` replaces the whole list (``[]`` clears it); ``units_header=""``
        clears the header."""
        body = _body(
            image=image,
            environment=None if environment is None else dict(environment),
            resources=None if resources is None else dict(resources),
            replicas=replicas,
            health_check_path=health_check_path,
            base_path=base_path,
            description=description,
            openapi=None if openapi is None else dict(openapi),
            openapi_path=openapi_path,
            units=None if units is None else [dict(u) for u in units],
        )
        if units_header is not None:  # ("" clears it: null on the wire)
            body["units_header"] = units_header or None
        return self._one(
            ApiAccepted,
            "PUT",
            f"{APIS}/{_seg(api_id)}",
            json=body,
            headers=_idempotent(idempotency_key),
        )

    def rollback(self, api_id: str, *, idempotency_key: str | None = None) -> ApiAccepted:
        """Deploy again the last spec that succeeded before the active one."""
        return self._one(
            ApiAccepted,
            "POST",
            f"{APIS}/{_seg(api_id)}/rollback",
            headers=_idempotent(idempotency_key),
        )

    def delete(self, api_id: str, *, idempotency_key: str | None = None) -> ApiAccepted:
        """Delete the API: its replicas drain and go (follow the operation)."""
        return self._one(
            ApiAccepted, "DELETE", f"{APIS}/{_seg(api_id)}", headers=_idempotent(idempotency_key)
        )

    def deployments(self, api_id: str) -> builtins.list[DeploymentPublic]:
        """The API's deployments, newest first."""
        data = self._client.request("GET", f"{APIS}/{_seg(api_id)}/deployments")
        return [DeploymentPublic.model_validate(d) for d in data["deployments"]]

    def openapi(self, api_id: str) -> dict[str, Any]:
        data = self._client.request("GET", f"{APIS}/{_seg(api_id)}/openapi")
        return dict(data["openapi"])

    def logs(
        self,
        api_id: str,
        *,
        source: str = "all",
        tail: int = 100,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        status: int | str | None = None,
        consumer: str | None = None,
        level: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        timestamps: bool = False,
    ) -> ApiLogs:
        """The API's logs: its replicas' output (the last ``tail`` lines of each, at
        ``level`` or above) and a page of its gateway call log (newest first; by
        ``since``/``until``, ``status`` (404 or "4xx"), ``consumer`` (an
        organisation) and ``level`` (error: 5xx, warning: 4xx and 5xx)); the output
        too by ``since``/``until``, each line after its time with ``timestamps``.
        ``source``: container, gateway or all."""
        params = _paging(
            page,
            limit,
            cursor=cursor,
            source=source,
            tail=tail,
            since=_when(since),
            until=_when(until),
            status=None if status is None else str(status),
            consumer=consumer,
            level=level,
            timestamps="true" if timestamps else None,
        )
        return self._one(ApiLogs, "GET", f"{APIS}/{_seg(api_id)}/logs", params=params)

    def follow(
        self,
        api_id: str,
        *,
        seconds: int = 60,
        since: datetime | str | None = None,
        status: int | str | None = None,
        consumer: str | None = None,
        level: str | None = None,
    ) -> Iterator[ApiCallLog]:
        """The API's calls as the gateway records them, from now (or ``since``) on,
        for ``seconds`` (at most 300); stop iterating to leave earlier."""
        params = _body(
            source="gateway",
            follow="true",
            seconds=seconds,
            since=_when(since),
            status=None if status is None else str(status),
            consumer=consumer,
            level=level,
        )
        for line in self._client.stream(f"{APIS}/{_seg(api_id)}/logs", params, seconds):
            yield ApiCallLog.model_validate_json(line)

    def follow_output(
        self,
        api_id: str,
        *,
        seconds: int = 60,
        since: datetime | str | None = None,
        level: str | None = None,
    ) -> Iterator[ApiOutputLine]:
        """The lines the API's replicas write, from now (or ``since``) on, each with
        its replica and time, for ``seconds`` (at most 300); stop iterating to leave
        earlier."""
        params = _body(
            source="container", follow="true", seconds=seconds, since=_when(since), level=level
        )
        for line in self._client.stream(f"{APIS}/{_seg(api_id)}/logs", params, seconds):
            yield ApiOutputLine.model_validate_json(line)

    def metrics(self, api_id: str, *, period: str = "1h") -> dict[str, Any]:
        """Over ``period`` (1h, 24h, 7d, 30d): the API's calls (``calls``: how many,
        errors 5xx and 4xx, latency p50/p95/p99, bytes, by endpoint, by consumer, a
        series) and its replicas' cpu, memory and network (``metrics``)."""
        data = self._client.request(
            "GET", f"{APIS}/{_seg(api_id)}/metrics", params={"period": period}
        )
        return dict(data)
