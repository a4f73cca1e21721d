"""Who is calling, as far as the raw ASGI scope tells: the client's IP and the
credential presented.

Shared by the rate limiter, the request log, the idempotency middleware and the
routes' ``client_info``, so they agree on one address and one credential per request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from starlette.types import Scope

from nefos.security.apikeys import looks_like_api_key

MAX_IP = 64


@dataclass(frozen=True, slots=True)
class Credential:
    """What a request presents: an API key (known by its SHA-256, never kept in
    clear) or a bearer token (to be verified by whoever uses it)."""

    token: str
    is_api_key: bool

    @property
    def key_hash(self) -> str:
        """The API key's SHA-256 (hex)."""
        return hashlib.sha256(self.token.encode()).hexdigest()


def credential(headers: dict[bytes, bytes]) -> Credential | None:
    """The credential of a request, looked for where the API accepts one:
    ``Authorization: Bearer``, then ``X-Auth-Token``, then ``X-API-Key``."""
    token = ""
    auth = headers.get(b"authorization")
    if auth and auth[:7].lower() == b"bearer ":
        token = auth[7:].decode("latin-1").strip()
    if not token:
        raw = headers.get(b"x-auth-token") or headers.get(b"x-api-key") or b""
        token = raw.decode("latin-1").strip()
    if not token:
        return None
    return Credential(token, looks_like_api_key(token))


def client_ip(scope: Scope, trust_forwarded_for: bool) -> str | None:
    """The peer's address, or the first ``X-Forwarded-For`` hop when the proxy in
    front is trusted (``NEFOS_TRUST_FORWARDED_FOR``)."""
    if trust_forwarded_for:
        for key, value in scope["headers"]:
            if key == b"x-forwarded-for":
                first = value.split(b",", 1)[0].strip()[:MAX_IP]
                if first:
                    return bytes(first).decode("latin-1")
                break
    client = scope.get("client")
    return str(client[0]) if client else None
