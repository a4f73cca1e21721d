"""Idempotency-Key: one effect per key, the first response replayed."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import func, select

from nefos.db.models import Container, IdempotencyRecord, Project
from nefos.db.session import begin_write
from nefos.db.types import utcnow
from tests.conftest import TEST_IMAGE, wait_operation


async def _count(app: Any, model: Any) -> int:
    async with app.state.core.db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def test_same_key_and_body_replays_the_first_response(
    client: httpx.AsyncClient, register: Any, app: Any
) -> None:
    user = await register()
    headers = {**user.headers, "Idempotency-Key": "create-project-1"}
    before = await _count(app, Project)
    first = await client.post("/api/v1/projects", json={"name": "alpha"}, headers=headers)
    assert first.status_code == 201, first.text
    again = await client.post("/api/v1/projects", json={"name": "alpha"}, headers=headers)
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["data"]["id"] == first.json()["data"]["id"]
    assert await _count(app, Project) == before + 1
    # Without the key the same request is a new one (and here a name conflict).
    plain = await client.post("/api/v1/projects", json={"name": "alpha"}, headers=user.headers)
    assert plain.status_code == 409


async def test_same_key_other_body_is_422(client: httpx.AsyncClient, register: Any) -> None:
    user = await register()
    headers = {**user.headers, "Idempotency-Key": "k-2"}
    assert (
        await client.post("/api/v1/projects", json={"name": "a"}, headers=headers)
    ).status_code == 201
    r = await client.post("/api/v1/projects", json={"name": "b"}, headers=headers)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "VALIDATION_ERROR"
    # Another path with the same key is another request too.
    r = await client.put("/api/v1/users/profile", json={"name": "x"}, headers=headers)
    assert r.status_code == 422


async def test_retry_while_the_first_runs_is_409(
    client: httpx.AsyncClient, register: Any, app: Any
) -> None:
    user = await register()
    owner = f"user:{user.id}"
    import hashlib

    body = b'{"name":"slow"}'
    fingerprint = hashlib.sha256(b"\0".join([b"POST", b"/api/v1/projects", b"", body])).hexdigest()
    async with app.state.core.db.session() as s:
        await begin_write(s)
        s.add(
            IdempotencyRecord(
                owner=owner,
                key="k-3",
                fingerprint=fingerprint,
                status="running",
                expires_at=utcnow() + timedelta(hours=1),
            )
        )
        await s.commit()
    r = await client.post(
        "/api/v1/projects",
        content=body,
        headers={**user.headers, "Idempotency-Key": "k-3", "Content-Type": "application/json"},
    )
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "CONFLICT"


async def test_keys_belong_to_their_owner(client: httpx.AsyncClient, register: Any) -> None:
    a, b = await register(), await register()
    ra = await client.post(
        "/api/v1/projects", json={"name": "p"}, headers={**a.headers, "Idempotency-Key": "same"}
    )
    rb = await client.post(
        "/api/v1/projects", json={"name": "p"}, headers={**b.headers, "Idempotency-Key": "same"}
    )
    assert ra.status_code == rb.status_code == 201
    assert ra.json()["data"]["id"] != rb.json()["data"]["id"]
    assert "idempotent-replayed" not in rb.headers


async def test_an_expired_key_runs_again(
    client: httpx.AsyncClient, register: Any, app: Any
) -> None:
    user = await register()
    headers = {**user.headers, "Idempotency-Key": "old"}
    assert (
        await client.post("/api/v1/projects", json={"name": "e1"}, headers=headers)
    ).status_code == 201
    async with app.state.core.db.session() as s:
        await begin_write(s)
        record = await s.scalar(select(IdempotencyRecord).where(IdempotencyRecord.key == "old"))
        assert record is not None
        record.expires_at = utcnow() - timedelta(seconds=1)
        await s.commit()
    r = await client.post("/api/v1/projects", json={"name": "e1"}, headers=headers)
    assert r.status_code == 409  # really ran: the name is taken now
    assert "idempotent-replayed" not in r.headers


async def test_invalid_keys_are_rejected(client: httpx.AsyncClient, register: Any) -> None:
    user = await register()
    for key in ("x" * 256, "   "):
        r = await client.post(
            "/api/v1/projects", json={"name": "z"}, headers={**user.headers, "Idempotency-Key": key}
        )
        assert r.status_code == 422, key
        assert r.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_errors_the_server_made_are_not_kept(
    client: httpx.AsyncClient, admin: Any, app: Any
) -> None:
    # A host whose engine does not answer makes the create a 503; the retry runs again.
    r = await client.post(
        "/api/v1/resources/hosts",
        json={"hostname": "dead", "driver": "docker", "uri": "unix:///nonexistent/docker.sock"},
        headers=admin.headers,
    )
    assert r.status_code == 201 and r.json()["data"]["status"] == "offline"
    headers = {**admin.headers, "Idempotency-Key": "c-1"}
    body = {"name": "web", "image": TEST_IMAGE}
    first = await client.post("/api/v1/containers", json=body, headers=headers)
    assert first.status_code == 409  # no active host: RESOURCE_EXHAUSTED is kept (a 4xx)
    again = await client.post("/api/v1/containers", json=body, headers=headers)
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["error"]["code"] == "RESOURCE_EXHAUSTED"


async def test_container_create_happens_once(
    client: httpx.AsyncClient, admin: Any, podman_host: dict[str, Any], app: Any
) -> None:
    headers = {**admin.headers, "Idempotency-Key": "web-once"}
    body = {"name": "once", "image": TEST_IMAGE, "resources": {"cpu": "0.1", "memory": "32m"}}
    responses = await asyncio.gather(
        *(client.post("/api/v1/containers", json=body, headers=headers) for _ in range(3)),
    )
    codes = sorted(r.status_code for r in responses)
    # Each is the first (202), a replay of it (202) or a retry during it (409).
    assert set(codes) <= {202, 409} and 202 in codes
    ids = {r.json()["data"]["container_id"] for r in responses if r.status_code == 202}
    assert len(ids) == 1
    assert await _count(app, Container) == 1
    first = next(r for r in responses if r.status_code == 202)
    done = await wait_operation(client, admin.headers, first.json()["data"]["operation"])
    assert done["status"] == "succeeded", done
    replay = await client.post("/api/v1/containers", json=body, headers=headers)
    assert replay.status_code == 202
    assert replay.json()["data"]["operation"]["id"] == first.json()["data"]["operation"]["id"]


def test_a_retry_sent_as_soon_as_the_answer_arrives_is_replayed(live_server: Any) -> None:
    """Over a real socket: the response is recorded before the client has it all, so a
    retry sent the moment the answer arrives replays it (never "still in progress")."""
    import uuid

    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        email = f"retry-{uuid.uuid4().hex[:8]}@example.com"
        r = http.post(
            "/api/v1/auth/register", json={"email": email, "password": "a-good-password-1"}
        )
        assert r.status_code == 201, r.text
        auth = {"Authorization": f"Bearer {r.json()['data']['access_token']}"}
        for i in range(20):
            headers = {**auth, "Idempotency-Key": f"retry-{i}"}
            body = {"name": f"p-{i}"}
            first = http.post("/api/v1/projects", json=body, headers=headers)
            again = http.post("/api/v1/projects", json=body, headers=headers)
            assert first.status_code == 201, first.text
            assert again.status_code == 201, again.text
            assert again.headers["idempotent-replayed"] == "true"
            assert again.json()["data"]["id"] == first.json()["data"]["id"]
