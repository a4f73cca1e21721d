"""Where tenants may publish container ports on a host (pure; no I/O).

A tenant's container publishes only on the host's public address (the setting
``container_publish_ip``) and on host ports inside the configured range
(``container_port_range``, like Kubernetes' NodePort range). A request may name a
fixed host port inside the range; a bare container port gets a free port of the
range on its host. A platform admin may name a host address and a port outside the
range (an ingress on 80/443, say). Nobody, admin or not, publishes on a reserved
port: those the platform itself listens on (its API, PostgreSQL, Redis, libvirt,
SSH...) -- a container bound there would take the port from, or shadow, the service.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from urllib.parse import urlsplit

from nefos.domain.errors import ValidationFailed
from nefos.domain.units import PortMapping


def parse_port_range(text: str) -> tuple[int, int]:
    """``"30000-32767"`` -> ``(30000, 32767)``; ValueError unless 1024 <= low <= high <= 65535."""
    low_text, sep, high_text = text.strip().partition("-")
    try:
        low, high = int(low_text), int(high_text if sep else low_text)
    except ValueError:
        raise ValueError(f"{text!r}: expected LOW-HIGH, e.g. 30000-32767") from None
    if not 1024 <= low <= high <= 65535:
        raise ValueError(f"{text!r}: expected 1024 <= LOW <= HIGH <= 65535")
    return low, high


def parse_port_list(text: str) -> frozenset[int]:
    """``"22, 5432,6379"`` -> the ports; ValueError on anything but ports 1-65535."""
    ports = set()
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise ValueError(f"{item!r} is not a port (1-65535)")
        ports.add(int(item))
    return frozenset(ports)


@dataclass(frozen=True, slots=True)
class PublishPolicy:
    low: int
    high: int
    reserved: frozenset[int]

    def check(self, mapping: PortMapping, *, admin: bool) -> None:
        """Refuse (ValidationFailed, a 422) a mapping this caller may not publish."""
        text = _text(mapping)
        if mapping.host_ip is not None and not admin:
            raise ValidationFailed(
                f"ports: {text!r} names a host address; containers are published on the "
                "host's public address only: give 'HOST:CONTAINER' or 'CONTAINER'",
                ports=text,
            )
        port = mapping.host_port
        if port is None:
            return
        if port in self.reserved:
            raise ValidationFailed(
                f"ports: host port {port} is reserved for the platform's own services; "
                f"give a port of {self.low}-{self.high}, or only the container port to "
                "have one allocated",
                ports=text,
            )
        if not admin and not self.low <= port <= self.high:
            raise ValidationFailed(
                f"ports: host port {port} is outside the range containers may publish on "
                f"({self.low}-{self.high}); give a port in it, or only the container "
                "port to have one allocated",
                ports=text,
            )

    def pick(self, taken: Collection[int], rng: random.Random | None = None) -> int | None:
        """A free port of the range (not ``taken``, not reserved), or None if none is.

        Random rather than the lowest free one: two placements racing on one host
        (two workers, two processes) then rarely pick the same port."""
        rng = rng or random.SystemRandom()
        size = self.high - self.low + 1
        start = rng.randrange(size)
        for i in range(size):
            port = self.low + (start + i) % size
            if port not in taken and port not in self.reserved:
                return port
        return None


def _text(m: PortMapping) -> str:
    host = f"{m.host_ip}:" if m.host_ip else ""
    host += f"{m.host_port}:" if m.host_port else ""
    return f"{host}{m.container_port}/{m.protocol}"


_ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")  # noqa: S104 - recognised, not bound


def local_engine(uri: str) -> bool:
    """Is an engine at ``uri`` on this machine (a unix socket, or TCP on loopback)?"""
    if uri.startswith("unix://"):
        return True
    hostname = urlsplit(uri).hostname or ""
    if hostname == "localhost":
        return True
    try:
        return ip_address(hostname).is_loopback
    except ValueError:
        return False


def dial_address(
    published_ip: str | None, host_ip: str | None, host_uri: str = "", hostname: str = ""
) -> str:
    """Where Nefos reaches a port a replica published: the address it was published
    on, unless that is the wildcard; then loopback for an engine on this machine, else
    the host's recorded address, else the name in its engine's URI, else its name.
    All of it comes from Nefos's records (the engine's answer, the host's
    registration), never from a tenant."""
    ip = (published_ip or "").strip()
    if ip not in _ANY_ADDRESS:
        return ip.strip("[]")
    if local_engine(host_uri):
        return "127.0.0.1"
    return host_ip or urlsplit(host_uri).hostname or hostname


def guest_address(leased: Collection[str], cidr: str | None) -> str | None:
    """The first of a VM's leased addresses that Nefos may dial: inside the subnet of
    the Nefos network the VM is on, and neither the subnet's network, broadcast nor
    first address (the host's own side of the bridge). None when there is none (no
    subnet, no lease yet, or only addresses outside it: the guest's word is never
    taken for where it is)."""
    if not cidr:
        return None
    try:
        net = ip_network(cidr, strict=False)
    except ValueError:
        return None
    reserved = {net.network_address, net.broadcast_address, net.network_address + 1}
    for text in leased:
        try:
            address = ip_address(text)
        except ValueError:
            continue
        if (
            address in net
            and address not in reserved
            and not (address.is_loopback or address.is_link_local or address.is_multicast)
        ):
            return str(address)
    return None
