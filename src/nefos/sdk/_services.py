"""Services (seed 004's service discovery): containers as services, with health."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from nefos.schemas.services import ServiceList, ServicePublic
from nefos.sdk._resources import _body, _paging, _Resource, _seg

SERVICES = "/services"


class Services(_Resource):
    """Each container is a service: its replicas are the instances, checked by the
    platform (``http``, ``tcp``, ``exec`` or ``none``) with rise/fall thresholds."""

    def list(
        self,
        *,
        health: str | None = None,
        name: str | None = None,
        tags: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        project_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        index: int | None = None,
        wait: float | None = None,
    ) -> ServiceList:
        """One project's services. With ``index`` (a previous answer's), the call is
        a blocking query: answered once the list differs, or after ``wait`` seconds."""
        params = _paging(
            page,
            limit,
            health=health,
            name=name,
            project_id=project_id,
            index=index,
            wait=None if wait is None else f"{wait:g}s",
        )
        if tags:
            params["tag"] = list(tags)
        for key, value in (metadata or {}).items():
            params[f"metadata.{key}"] = value
        return ServiceList.model_validate(self._client.request("GET", SERVICES, params=params))

    def get(self, service_id: str) -> ServicePublic:
        data = self._client.request("GET", f"{SERVICES}/{_seg(service_id)}")
        return ServicePublic.model_validate(data["service"])

    def update(
        self,
        service_id: str,
        *,
        version: str | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        check: Mapping[str, Any] | None = None,
    ) -> ServicePublic:
        """Set what is given (``check``: ``{"type": "http", "path": "/health",
        "interval": 5, ...}``); what is left out stays."""
        body = _body(
            version=version,
            tags=None if tags is None else list(tags),
            metadata=None if metadata is None else dict(metadata),
            check=None if check is None else dict(check),
        )
        data = self._client.request("PUT", f"{SERVICES}/{_seg(service_id)}", json=body)
        return ServicePublic.model_validate(data["service"])

    def maintenance(
        self, service_id: str, instance_id: str, *, enabled: bool = True, reason: str | None = None
    ) -> ServicePublic:
        """Take an instance out of traffic (or, ``enabled=False``, put it back)."""
        data = self._client.request(
            "POST",
            f"{SERVICES}/{_seg(service_id)}/instances/{_seg(instance_id)}/maintenance",
            json=_body(enabled=enabled, reason=reason),
        )
        return ServicePublic.model_validate(data["service"])

    def watch(
        self, *, wait: float = 20.0, max_changes: int | None = None, **filters: Any
    ) -> Iterator[ServiceList]:
        """The list now, then each time it changes (blocking queries, one after the
        other); ``max_changes`` ends it after that many changes."""
        current = self.list(**filters)
        yield current
        changes = 0
        while max_changes is None or changes < max_changes:
            nxt = self.list(index=current.index, wait=wait, **filters)
            if nxt.index != current.index:
                changes += 1
                yield nxt
            current = nxt
