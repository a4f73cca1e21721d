"""Rolling updates of a container (`PUT /containers/{id}`), end to end on the real test
Podman: replicas of the busybox test image behind the ingress, checked server-side by
the app's own health checker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from nefos.events import EventType
from tests.api.test_containers import (
    NEW_PAGE,
    PAGE,
    SERVE_NEW,
    V1,
    Api,
    assert_error,
    engine_containers,
    seed_body,
)
from tests.api.test_services import HTTP_CHECK
from tests.conftest import wait_serving


class Watcher:
    """GETs the service's `/svc/{id}/` on the ingress, one request after another, until
    stopped: every status and page it saw."""

    def __init__(self, client: httpx.AsyncClient, service_id: str) -> None:
        self.client = client
        self.path = f"/svc/{service_id}/"
        self.seen: list[tuple[int, str]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            r = await self.client.get(self.path)
            self.seen.append((r.status_code, r.text.strip()))
            await asyncio.sleep(0.02)

    def __enter__(self) -> Watcher:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    async def until(self, page: str, within: float = 30) -> None:
        """Wait (with a deadline) for a 200 with ``page`` newer than now."""
        start = len(self.seen)
        deadline = time.monotonic() + within
        while not any(s == 200 and page in t for s, t in self.seen[start:]):
            assert time.monotonic() < deadline, f"{page!r} not served: {self.seen[-5:]}"
            await asyncio.sleep(0.05)

    def errors(self) -> list[tuple[int, str]]:
        return [(s, t) for s, t in self.seen if s >= 500]


async def checked_service(api: Api, client: httpx.AsyncClient, replicas: int) -> dict[str, Any]:
    """A container of ``replicas`` replicas with an HTTP check, every replica passing."""
    c = await api.created(seed_body("web", replicas=replicas))
    await api.call("PUT", f"/services/{c['id']}", json={"check": HTTP_CHECK})
    await wait_serving(client, api.who.headers, c["id"], replicas)
    return c


async def test_a_rolling_update_replaces_every_replica_while_the_service_serves(
    client, register, podman_host, app
):
    user = await register()
    api = Api(client, user)
    c = await checked_service(api, client, 2)
    cid = c["id"]
    assert c["generation"] == 1 and [r["generation"] for r in c["replica_states"]] == [1, 1]
    old_ids = {e.labels["nefos.id"] for e in engine_containers(cid)}

    # Nothing to change: 200 with the container, no operation.
    same = await api.call("PUT", f"/containers/{cid}", json={"environment": {"ENV": "production"}})
    assert same["container"]["generation"] == 1 and "operation" not in same
    assert (await api.call("PUT", f"/containers/{cid}", json={}))["container"]["id"] == cid

    with (
        app.state.core.events.subscribe(
            lambda e: e.type == EventType.CONTAINER_STATUS and e.data["container_id"] == cid
        ) as told,
        Watcher(client, cid) as watcher,
    ):
        await watcher.until(PAGE)
        body = {"environment": {"ENV": "staging"}, "command": SERVE_NEW}
        data = await api.call("PUT", f"/containers/{cid}", 202, json=body)
        accepted = data["container"]
        assert accepted["status"] == "updating" and accepted["generation"] == 2
        assert accepted["environment"] == {"ENV": "staging"} and accepted["command"] == SERVE_NEW
        # The surge replica is placed with the request, in a slot of its own.
        assert sorted(r["generation"] for r in accepted["replica_states"]) == [1, 1, 2]
        assert data["operation"]["status"] == "pending"
        # One operation at a time: another write waits for the update.
        r = await client.post(
            f"{V1}/containers/{cid}/scale", json={"replicas": 3}, headers=user.headers
        )
        assert_error(r, 409, "CONFLICT")
        op = await api.wait(data["operation"])
        assert op["status"] == "succeeded", op
        assert op["result"] == {"generation": 2, "replaced": 2}, op
        await watcher.until(NEW_PAGE)
    # No client of the ingress saw a 5xx, and the page changed.
    assert watcher.errors() == [], watcher.errors()
    pages = [t for s, t in watcher.seen if s == 200]
    assert PAGE in pages[0] and NEW_PAGE in pages[-1]

    got = await api.get(cid)
    assert got["status"] == "running" and got["generation"] == 2 and got["replicas"] == 2
    assert [r["generation"] for r in got["replica_states"]] == [2, 2]
    assert {r["slot"] for r in got["replica_states"]} == {2, 3}
    engine = engine_containers(cid)
    assert len(engine) == 2 and not old_ids & {e.labels["nefos.id"] for e in engine}
    service = await wait_serving(client, user.headers, cid, 2)
    assert all(NEW_PAGE in i["checks"][0]["output"] for i in service["instances"])

    # The container told of its update: updating at generation 2, each replica
    # replaced, then running.
    events = []
    while (event := told.get_nowait()) is not None:
        events.append(event.data)
    statuses = [(e["status"], e["generation"]) for e in events]
    assert ("updating", 2) in statuses and statuses[-1] == ("running", 2), statuses
    assert any("2 of 2" in (e["reason"] or "") for e in events), events

    # Scale makes replicas of the current spec.
    await api.act("POST", f"/containers/{cid}/scale", {"replicas": 3})
    got = await api.get(cid)
    assert [r["generation"] for r in got["replica_states"]] == [2, 2, 2]

    # Another tenant's container does not exist for me; bad bodies are 422.
    other = Api(client, await register())
    r = await client.put(f"{V1}/containers/{cid}", json={"image": "x:1"}, headers=other.who.headers)
    assert_error(r, 404, "NOT_FOUND")
    for bad in (
        {"image": "not an image!"},
        {"replicas": 3},
        {"resources": {"cpu": "lots"}},
        {"environment": {"1BAD": "x"}},
        {"command": []},
    ):
        r = await client.put(f"{V1}/containers/{cid}", json=bad, headers=user.headers)
        assert_error(r, 422, "VALIDATION_ERROR")
    assert (await api.get(cid))["generation"] == 2
    await api.delete(cid)


async def test_an_update_that_never_serves_is_rolled_back(
    client, register, podman_host, app, monkeypatch
):
    monkeypatch.setattr(app.state.core.settings, "readiness_timeout", 5.0)
    user = await register()
    api = Api(client, user)
    c = await checked_service(api, client, 2)
    cid = c["id"]
    before = {e.labels["nefos.id"] for e in engine_containers(cid)}

    with Watcher(client, cid) as watcher:
        await watcher.until(PAGE)
        data = await api.call("PUT", f"/containers/{cid}", 202, json={"command": ["sleep", "3600"]})
        # While it runs, another update is refused.
        r = await client.put(f"{V1}/containers/{cid}", json={"image": "x:1"}, headers=user.headers)
        assert_error(r, 409, "CONFLICT")
        op = await api.wait(data["operation"])
        assert op["status"] == "failed", op
        assert op["error"]["code"] == "ROLLED_BACK", op
        message = op["error"]["message"]
        assert "did not pass its health check within 5 s" in message, message
        assert "the previous spec is serving" in message, message
        assert op["result"]["rolled_back"] is True and op["result"]["generation"] == 1
        await watcher.until(PAGE)
    assert watcher.errors() == [], watcher.errors()
    assert all(PAGE in t for s, t in watcher.seen), watcher.seen

    # The old replicas (the same ones) serve; the row shows the previous spec.
    got = await api.get(cid)
    assert got["generation"] == 1 and got["command"] is None
    assert got["status"] == "running" and "rolled back" in got["status_reason"]
    assert [r["generation"] for r in got["replica_states"]] == [1, 1]
    assert {e.labels["nefos.id"] for e in engine_containers(cid)} == before
    service = await wait_serving(client, user.headers, cid, 2)
    assert {i["id"] for i in service["instances"]} == before
    await api.delete(cid)
