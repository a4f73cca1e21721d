"""Helpers of the security suite: other client IPs, API keys, forged JWTs, raw rows."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import select

from nefos.db.models import ApiKey, User
from nefos.domain.access import Scope
from tests.conftest import Account

API = "/api/v1"
# Every scope but ``admin``: the most a non-admin's key can hold.
USER_SCOPES = sorted(s.value for s in Scope if s is not Scope.ADMIN)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def unverified_claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def core(app: Any) -> Any:
    return app.state.core


@pytest.fixture
async def client_at(app: Any, client: httpx.AsyncClient) -> AsyncIterator[Any]:
    """Factory: an HTTP client on the same app, calling from another IP address.

    Depends on ``client`` so that the platform is emptied first, as for ``client``.
    """
    opened: list[httpx.AsyncClient] = []

    def _make(ip: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(ip, 40001))
        c = httpx.AsyncClient(transport=transport, base_url="http://nefos.test")
        opened.append(c)
        return c

    yield _make
    for c in opened:
        await c.aclose()


@pytest.fixture
def create_key(client: httpx.AsyncClient) -> Callable[..., Awaitable[dict[str, Any]]]:
    """Factory: create an API key as ``headers``; returns the create response's data."""

    async def _create(
        headers: dict[str, str], scopes: list[str] | None = None, **extra: Any
    ) -> dict[str, Any]:
        body = {"name": f"key-{uuid.uuid4().hex[:6]}", "scopes": scopes or USER_SCOPES, **extra}
        r = await client.post(f"{API}/api-keys", json=body, headers=headers)
        assert r.status_code == 201, r.text
        return dict(r.json()["data"])

    return _create


@pytest.fixture
def user_row(core: Any) -> Callable[[str], Awaitable[User]]:
    """Read a user's row straight from the database (no identity-map cache)."""

    async def _read(user_id: str) -> User:
        async with core.db.session() as s:
            user = await s.scalar(select(User).where(User.id == user_id))
            assert user is not None
            return user

    return _read


@pytest.fixture
def key_rows(core: Any) -> Callable[[str], Awaitable[list[ApiKey]]]:
    async def _read(user_id: str) -> list[ApiKey]:
        async with core.db.session() as s:
            return list((await s.scalars(select(ApiKey).where(ApiKey.user_id == user_id))).all())

    return _read


class Forger:
    """Builds JWTs the way an attacker (or a sloppy issuer) would, with the test secret."""

    def __init__(self, settings: Any) -> None:
        self.secret = settings.jwt_secret
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience

    def claims_from(self, token: str) -> dict[str, Any]:
        return unverified_claims(token)

    def fresh_claims(self, template: str, **changes: Any) -> dict[str, Any]:
        """A valid token's claims with new times and jti, then ``changes`` applied."""
        now = int(time.time())
        claims = {
            **unverified_claims(template),
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": str(uuid.uuid4()),
        }
        for name, value in changes.items():
            if value is _DROP:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def sign(
        self, claims: dict[str, Any], *, key: str | None = None, algorithm: str = "HS256"
    ) -> str:
        return jwt.encode(claims, key if key is not None else self.secret, algorithm=algorithm)

    @staticmethod
    def unsigned(claims: dict[str, Any], alg: str = "none") -> str:
        return f"{b64url_json({'alg': alg, 'typ': 'JWT'})}.{b64url_json(claims)}."


_DROP = object()
DROP: Any = _DROP


@pytest.fixture
def forger(app: Any) -> Forger:
    return Forger(app.state.core.settings)


async def login(
    client: httpx.AsyncClient, account: Account | str, password: str | None = None
) -> httpx.Response:
    email = account if isinstance(account, str) else account.email
    if password is None:
        assert isinstance(account, Account)
        password = account.password
    return await client.post(f"{API}/auth/login", json={"email": email, "password": password})
