"""Who is calling, as far as the raw ASGI scope tells: the client's IP and the
credential presented.

Shared by the rate limiter, the request log, the idempotency middleware and the
routes' ``client_info``, so they agree on one address and one credential per request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

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


def client_ip(scope: Scope, trusted_proxies: Sequence[str]) -> str | None:
    """The client's address: the peer's, unless the peer is a trusted proxy
    (``NEFOS_FORWARDED_ALLOW_IPS``); then the address the trusted proxies saw.

    ``X-Forwarded-For`` is walked from the right (each proxy appends the address it
    was called from), skipping the trusted proxies: the first hop not trusted is the
    client. Hops to its left were written by the client itself and are never taken
    (uvicorn's ``forwarded_allow_ips`` does the same). When every hop is trusted,
    the leftmost is the client: with ``*`` that is whatever the client wrote, so
    ``*`` is only for a proxy that replaces the header rather than appending to it.
    A hop that is not an address (after dropping an ``IP:port``'s port) is not
    believed: the peer is taken instead."""
    client = scope.get("client")
    peer = str(client[0]) if client else None
    if not trusted_proxies or peer is None:
        return peer
    proxies = trusted(tuple(trusted_proxies))
    if not proxies.trusts(peer):
        return peer
    values = [v for k, v in scope["headers"] if k == b"x-forwarded-for"]
    if not values:
        return peer
    hops = [h.strip() for h in b",".join(values).decode("latin-1").split(",")]
    hops = [h for h in hops if h]
    for hop in reversed(hops):
        if not proxies.trusts(hop):
            # Not an address (a proxy that writes "IP:port", or garbage): its port
            # is dropped, and what is still no address is not believed: the proxy
            # that sent it is the client as far as anything can tell.
            return _address(hop) or peer
    return (_address(hops[0]) or peer) if hops else peer


def _address(hop: str) -> str | None:
    """An ``X-Forwarded-For`` hop as a plain address ("1.2.3.4:80" and "[::1]:80"
    lose their port), or None if it is none."""
    text = hop[:MAX_IP]
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return str(ip_address(text))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """Addresses and networks whose ``X-Forwarded-For`` is believed (``*``: all)."""

    everyone: bool
    networks: tuple[IPv4Network | IPv6Network, ...]

    def trusts(self, host: str) -> bool:
        if self.everyone:
            return True
        try:
            address = ip_address(host)
        except ValueError:
            return False
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self.networks)


@lru_cache(maxsize=8)
def trusted(entries: tuple[str, ...]) -> TrustedProxies:
    """The parsed form of ``NEFOS_FORWARDED_ALLOW_IPS`` (addresses or CIDRs, ``*``)."""
    everyone = any(e.strip() == "*" for e in entries)
    networks = tuple(ip_network(e.strip(), strict=False) for e in entries if e.strip() != "*")
    return TrustedProxies(everyone, networks)
