"""Network XML for Nefos private networks, built and read back: pure, no I/O.

A Nefos network is an isolated libvirt network (no ``<forward>``: its guests reach
each other and the host's bridge, nothing beyond) named ``nefos-net-<id>``, on a
bridge ``nfs`` + 11 hex digits of a hash of the id (15 characters, the kernel's
limit). With a CIDR, the host takes the subnet's first address and hands out the
rest by DHCP (libvirt runs dnsmasq for it). Its identity is in ``<metadata>``, in
the namespace :data:`NETWORK_NAMESPACE`::

    <nefosnet:network xmlns:nefosnet="urn:nefos:libvirt:network:1">
      <nefosnet:id>n1</nefosnet:id>
      <nefosnet:project>p1</nefosnet:project>
      <nefosnet:label key="nefos.managed">true</nefosnet:label>
      ...
    </nefosnet:network>
"""

from __future__ import annotations

import hashlib
import ipaddress
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field

NETWORK_NAMESPACE = "urn:nefos:libvirt:network:1"
#: Not "nefos": ElementTree's prefix registry is global, and domain.py has that one.
_PREFIX = "nefosnet"
NETWORK_PREFIX = "nefos-net-"
ET.register_namespace(_PREFIX, NETWORK_NAMESPACE)


def _q(tag: str) -> str:
    return f"{{{NETWORK_NAMESPACE}}}{tag}"


@dataclass(frozen=True, slots=True)
class NetworkPlan:
    network_id: str
    project_id: str
    cidr: str | None  # normalised (ipaddress's form), IPv4
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return network_name(self.network_id)

    @property
    def bridge(self) -> str:
        return bridge_name(self.network_id)


@dataclass(frozen=True, slots=True)
class ParsedNetwork:
    """What a Nefos network's XML says."""

    network_id: str
    project_id: str
    cidr: str | None
    bridge: str
    labels: Mapping[str, str]


def network_name(network_id: str) -> str:
    return f"{NETWORK_PREFIX}{network_id}"


def bridge_name(network_id: str) -> str:
    """``nfs`` + 11 hex digits: unique per id in practice, and within IFNAMSIZ."""
    return "nfs" + hashlib.sha256(network_id.encode()).hexdigest()[:11]


def normal_cidr(cidr: str) -> str:
    """An IPv4 subnet with room for the host and at least one guest, normalised.
    ValueError for anything else (host bits set included)."""
    net = ipaddress.ip_network(cidr, strict=True)
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError(f"{cidr!r} is not an IPv4 subnet")
    if net.prefixlen > 30:
        raise ValueError(f"{cidr!r} is too small: a /30 at most (the host needs an address)")
    return str(net)


def network_xml(plan: NetworkPlan) -> str:
    root = ET.Element("network")
    ET.SubElement(root, "name").text = plan.name
    ET.SubElement(root, "metadata")  # filled in below
    ET.SubElement(root, "bridge", name=plan.bridge, stp="on", delay="0")
    if plan.cidr is not None:
        net = ipaddress.IPv4Network(plan.cidr)
        hosts = list(_first_hosts(net))
        ip = ET.SubElement(root, "ip", address=str(hosts[0]), prefix=str(net.prefixlen))
        dhcp = ET.SubElement(ip, "dhcp")
        ET.SubElement(dhcp, "range", start=str(hosts[1]), end=str(net.broadcast_address - 1))
    md = ET.Element(_q("network"))
    ET.SubElement(md, _q("id")).text = plan.network_id
    ET.SubElement(md, _q("project")).text = plan.project_id
    for key, value in sorted(plan.labels.items()):
        ET.SubElement(md, _q("label"), key=key).text = value
    # The namespace declared on the metadata element itself (as libvirt keeps it).
    metadata = ET.tostring(md, encoding="unicode")
    return ET.tostring(root, encoding="unicode").replace(
        "<metadata />", f"<metadata>{metadata}</metadata>", 1
    )


def _first_hosts(net: ipaddress.IPv4Network) -> list[ipaddress.IPv4Address]:
    """The subnet's first two host addresses (the host's, the first guest's)."""
    first = net.network_address + 1
    return [first, first + 1]


def parse_network(xml: str) -> ParsedNetwork | None:
    """A Nefos network's XML read back; None when it is not one of ours."""
    try:
        # libvirtd's own XML: not untrusted input.
        root = ET.fromstring(xml)  # noqa: S314
    except ET.ParseError:
        return None
    md = root.find(f"metadata/{_q('network')}")
    if md is None:
        return None
    network_id = md.findtext(_q("id")) or ""
    if not network_id:
        return None
    labels = {
        key: el.text or "" for el in md.findall(_q("label")) if (key := el.get("key")) is not None
    }
    cidr = None
    ip = root.find("ip")
    if ip is not None and ip.get("address"):
        prefix = ip.get("prefix")
        if prefix is None and ip.get("netmask"):
            prefix = str(ipaddress.IPv4Network(f"0.0.0.0/{ip.get('netmask')}").prefixlen)
        cidr = str(ipaddress.ip_interface(f"{ip.get('address')}/{prefix or 24}").network)
    bridge = root.find("bridge")
    return ParsedNetwork(
        network_id=network_id,
        project_id=md.findtext(_q("project")) or "",
        cidr=cidr,
        bridge=(bridge.get("name") or "") if bridge is not None else "",
        labels=labels,
    )
