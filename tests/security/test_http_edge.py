"""The HTTP edge: body limits, trusted proxies, trailing slashes, offline /docs."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from nefos.api.routing import walk
from nefos.db.models import RequestLogEntry
from tests.security.conftest import API, bearer
from tests.security.test_brute_force import WRONG, _assert_rate_limited

MIB = 1024 * 1024
CHUNK = 64 * 1024
HUGE = 50 * MIB


class Stream:
    """A request body of ``size`` bytes made chunk by chunk as the app reads it (never
    all in memory); ``sent`` is how much the app has pulled."""

    def __init__(self, size: int = HUGE) -> None:
        self.size = size
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunk = b" " * CHUNK
        while self.sent < self.size:
            self.sent += CHUNK
            yield chunk


def _assert_too_large(r: Any, limit: int) -> None:
    assert r.status_code == 413, r.text[:500]
    body = r.json()
    assert body["success"] is False
    assert body["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert body["error"]["details"] == {"limit": limit}


# --- body limit ---------------------------------------------------------------------------
async def test_a_huge_chunked_body_is_refused_once_past_the_limit(client: Any, core: Any) -> None:
    limit = core.settings.max_body_bytes
    assert limit == MIB
    body = Stream()
    r = await client.post(
        f"{API}/auth/login", content=body, headers={"Content-Type": "application/json"}
    )
    _assert_too_large(r, limit)
    assert body.sent <= limit + CHUNK  # not drained: read up to the limit, no further


async def test_a_huge_declared_length_is_refused_unread(client: Any, app: Any, core: Any) -> None:
    body = Stream()
    r = await client.post(
        f"{API}/auth/login",
        content=body,
        headers={"Content-Type": "application/json", "Content-Length": str(HUGE)},
    )
    _assert_too_large(r, core.settings.max_body_bytes)
    assert body.sent == 0
    # The request log records the refusal, as every answer.
    rid = r.headers["X-Request-ID"]
    await app.state.request_log.flush()
    async with core.db.session() as session:
        row = (
            await session.execute(select(RequestLogEntry).where(RequestLogEntry.request_id == rid))
        ).scalar_one()
    assert row.status == 413


async def test_idempotency_does_not_buffer_a_huge_body(client: Any, register: Any) -> None:
    acct = await register()
    body = Stream()
    r = await client.post(
        f"{API}/projects",
        content=body,
        headers={**acct.headers, "Idempotency-Key": "k-1", "Content-Type": "application/json"},
    )
    _assert_too_large(r, MIB)
    assert body.sent <= MIB + CHUNK


async def test_an_image_upload_may_be_larger(client: Any, register: Any) -> None:
    acct = await register()
    disk = b"\0" * (2 * MIB)  # twice the JSON routes' limit
    r = await client.post(
        f"{API}/images/upload",
        data={"name": "big-upload", "format": "raw"},
        files={"disk": ("big.raw", disk, "application/octet-stream")},
        headers=acct.headers,
    )
    assert r.status_code == 202, r.text


# --- trusted proxies ------------------------------------------------------------------------
PROXY = "10.1.1.1"


async def test_forged_first_hops_behind_a_trusted_proxy_still_hit_the_ip_limit(
    client_at: Any, register: Any, core: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core.settings, "forwarded_allow_ips", [PROXY])
    proxy = client_at(PROXY)
    accounts = [await register() for _ in range(11)]
    # One attacker (198.51.100.9) behind the proxy, a new forged first hop each time:
    # the proxy appends the address it saw, which is the one that counts.
    for i, acct in enumerate(accounts[:10]):
        r = await proxy.post(
            f"{API}/auth/login",
            json={"email": acct.email, "password": WRONG},
            headers={"X-Forwarded-For": f"10.0.0.{i}, 192.0.2.{i}, 198.51.100.9"},
        )
        assert r.status_code == 401, r.text
    r = await proxy.post(
        f"{API}/auth/login",
        json={"email": accounts[10].email, "password": accounts[10].password},
        headers={"X-Forwarded-For": "203.0.113.200, 198.51.100.9"},
    )
    _assert_rate_limited(r, core.settings.login_failure_window)
    # Another client behind the same proxy is not locked out with the attacker.
    r = await proxy.post(
        f"{API}/auth/login",
        json={"email": accounts[10].email, "password": accounts[10].password},
        headers={"X-Forwarded-For": "198.51.100.10"},
    )
    assert r.status_code == 200, r.text


# --- trailing slashes -----------------------------------------------------------------------
async def test_a_trailing_slash_is_served_without_a_redirect(client: Any, register: Any) -> None:
    acct = await register()
    r = await client.post(
        f"{API}/auth/login/", json={"email": acct.email, "password": acct.password}
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"]["access_token"]
    for path in (
        "/auth/me/",
        "/auth/me",
        "/projects/",
        "/compute/instances",
        "/compute/instances/",
    ):
        r = await client.get(API + path, headers=acct.headers)
        assert r.status_code == 200, (path, r.status_code, r.text)
    r = await client.post(
        f"{API}/project/", json={"name": "seed-001"}, headers=bearer(acct.access_token)
    )
    assert r.status_code == 201, r.text
    for path in ("/docs", "/docs/", "/openapi.json", "/health/"):
        assert (await client.get(path)).status_code == 200, path


def test_every_route_is_declared_without_a_trailing_slash(app: Any) -> None:
    # The slash is stripped before routing, so a route declared with one is unreachable.
    paths = [getattr(r, "path", "") for r in walk(app.routes)]
    assert len(paths) > 100
    assert [p for p in paths if p.endswith("/") and p != "/"] == []


# --- /docs from the installation --------------------------------------------------------------
TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_load_only_local_files(client: Any, page: str) -> None:
    r = await client.get(page)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "://" not in r.text  # no CDN, no font service: nothing off this server
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", r.text)
    urls += re.findall(r"""url:\s*["']([^"']+)["']""", r.text)
    assets = [u for u in urls if u != "/openapi.json"]
    assert len(assets) >= 2, urls
    for url in assets:
        assert url.startswith("/"), url
        a = await client.get(url)
        assert a.status_code == 200, url
        suffix = url[url.rindex(".") :]
        assert TYPES[suffix] in a.headers["content-type"], (url, a.headers["content-type"])
    assert "/openapi.json" in r.text
    assert (await client.get("/openapi.json")).status_code == 200
