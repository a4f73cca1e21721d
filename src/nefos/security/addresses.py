"""The address guard: which network addresses Nefos may be made to connect to.

Two things connect where a tenant points them: webhook deliveries (a URL) and
container image pulls (the registry host of an image reference). Both must stay
off internal networks (server-side request forgery): loopback, private,
link-local (the cloud metadata address 169.254.169.254 among them), shared
(CGNAT), multicast, reserved and unspecified addresses, and their IPv6 forms
(IPv4-mapped, NAT64, 6to4, Teredo) are refused unless inside networks a platform
administrator allows. Pure but for :func:`resolve` (a DNS look-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Iterable, Sequence

log = logging.getLogger("nefos.security.addresses")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RESOLVE_TIMEOUT = 5.0

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class UnsafeTarget(Exception):
    """The target may not be connected to: its form, its host, or an address it
    resolves to."""


def parse_networks(values: Iterable[str], *, setting: str = "allowed networks") -> list[IPNetwork]:
    nets = []
    for value in values:
        try:
            nets.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            log.warning("%s: %r is not a network; ignored", setting, value)
    return nets


def _embedded(ip: IPAddress) -> list[IPAddress]:
    """IPv4 addresses an IPv6 address carries (mapped, NAT64, 6to4, Teredo)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    out: list[IPAddress] = []
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    if ip in _NAT64:
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    return out


def why_refused(ip: IPAddress) -> str | None:
    """Why ``ip`` is no place to connect to for a tenant, or None for a public address."""
    for inner in _embedded(ip):
        reason = why_refused(inner)
        if reason is not None:
            return f"{reason} (inside {ip})"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if isinstance(ip, ipaddress.IPv6Address) and (ip in _NAT64_LOCAL or ip.is_site_local):
        return "a private address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "a non-public address"
    return None


def _allowed(ip: IPAddress, allowed: Sequence[IPNetwork]) -> bool:
    candidates = [ip, *_embedded(ip)]
    return any(c.version == net.version and c in net for c in candidates for net in allowed)


def check_address(
    ip: IPAddress,
    allowed: Sequence[IPNetwork],
    *,
    what: str = "webhooks",
    setting: str = "webhook_allowed_networks",
) -> None:
    """``UnsafeTarget`` unless ``ip`` is public or inside ``allowed``."""
    reason = why_refused(ip)
    if reason is not None and not _allowed(ip, allowed):
        raise UnsafeTarget(
            f"{ip} is {reason}; {what} may only call public addresses "
            f"(an administrator may allow networks with {setting})"
        )


def _host_ok(host: str) -> None:
    if not host or len(host) > 253 or "\x00" in host:
        raise UnsafeTarget("invalid host name")


def _addresses(host: str, infos: Iterable[tuple[object, ...]]) -> list[IPAddress]:
    out: list[IPAddress] = []
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        addr = str(sockaddr[0]).split("%", 1)[0]  # an IPv6 zone id is not part of it
        ip = ipaddress.ip_address(addr)
        if ip not in out:
            out.append(ip)
    if not out:
        raise UnsafeTarget(f"the host {host!r} has no address")
    return out


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (itself if it is an address)."""
    with contextlib.suppress(ValueError):
        return [ipaddress.ip_address(host)]
    _host_ok(host)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
        )
    except (OSError, UnicodeError, TimeoutError) as exc:
        raise UnsafeTarget(f"the host {host!r} could not be resolved ({exc})") from None
    return _addresses(host, infos)


def resolve_blocking(host: str, port: int) -> list[IPAddress]:
    """:func:`resolve` for code already in a worker thread (a blocking driver)."""
    with contextlib.suppress(ValueError):
        return [ipaddress.ip_address(host)]
    _host_ok(host)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UnsafeTarget(f"the host {host!r} could not be resolved ({exc})") from None
    return _addresses(host, infos)
