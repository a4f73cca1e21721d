"""gateway.client.client_ip: X-Forwarded-For only through trusted proxies, read from
the right."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from nefos.config import Settings
from nefos.gateway.client import client_ip


def scope(peer: str | None, *forwarded: str) -> dict[str, Any]:
    return {
        "client": (peer, 40000) if peer else None,
        "headers": [(b"x-forwarded-for", f.encode()) for f in forwarded],
    }


PROXIES = ["10.0.0.0/8", "192.168.1.1"]


def test_no_trusted_proxy_means_the_peer() -> None:
    assert client_ip(scope("203.0.113.7", "1.2.3.4"), []) == "203.0.113.7"


def test_an_untrusted_peer_cannot_name_a_client() -> None:
    assert client_ip(scope("203.0.113.7", "1.2.3.4"), PROXIES) == "203.0.113.7"


def test_forged_first_hops_are_ignored_behind_one_trusted_proxy() -> None:
    # The client wrote "6.6.6.6, 7.7.7.7"; the proxy appended the address it saw.
    s = scope("192.168.1.1", "6.6.6.6, 7.7.7.7, 198.51.100.9")
    assert client_ip(s, PROXIES) == "198.51.100.9"


def test_trusted_hops_are_skipped_from_the_right() -> None:
    s = scope("10.0.0.2", "6.6.6.6, 198.51.100.9, 10.0.0.3, 192.168.1.1")
    assert client_ip(s, PROXIES) == "198.51.100.9"


def test_several_headers_are_one_list() -> None:
    s = scope("10.0.0.2", "6.6.6.6", "198.51.100.9")
    assert client_ip(s, PROXIES) == "198.51.100.9"


def test_every_hop_trusted_gives_the_leftmost_and_no_header_the_peer() -> None:
    assert client_ip(scope("10.0.0.2", "10.0.0.9, 10.0.0.3"), PROXIES) == "10.0.0.9"
    assert client_ip(scope("10.0.0.2"), PROXIES) == "10.0.0.2"
    assert client_ip(scope(None, "1.2.3.4"), PROXIES) is None


def test_a_junk_hop_is_not_believed() -> None:
    # Not a trusted proxy, and no address either: the proxy that sent it is the
    # client as far as anything can tell.
    assert client_ip(scope("10.0.0.2", "1.2.3.4, not-an-ip"), PROXIES) == "10.0.0.2"
    assert client_ip(scope("192.168.1.1", "not-an-ip"), PROXIES) == "192.168.1.1"


def test_ipv6_and_everyone() -> None:
    s = scope("fd00::1", "2001:db8::5")
    assert client_ip(s, ["fd00::/8"]) == "2001:db8::5"
    assert client_ip(scope("::ffff:10.0.0.2", "198.51.100.9"), PROXIES) == "198.51.100.9"
    assert client_ip(scope("203.0.113.7", "1.2.3.4, 5.6.7.8"), ["*"]) == "1.2.3.4"


def test_the_setting_is_checked_and_the_old_flag_means_loopback() -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, forwarded_allow_ips=["10.0.0.0/33"])  # type: ignore[call-arg]
    old = Settings(_env_file=None, trust_forwarded_for=True)  # type: ignore[call-arg]
    assert old.forwarded_allow_ips == ["127.0.0.1", "::1"]
    both = Settings(  # type: ignore[call-arg]
        _env_file=None, trust_forwarded_for=True, forwarded_allow_ips=["10.0.0.1"]
    )
    assert both.forwarded_allow_ips == ["10.0.0.1"]
    assert Settings(_env_file=None).forwarded_allow_ips == []  # type: ignore[call-arg]


def test_a_hop_with_a_port_is_its_address() -> None:
    # Some proxies (Azure's application gateway) write "IP:port": a new port on
    # each connection must not be a new client.
    assert client_ip(scope("192.168.1.1", "198.51.100.9:51234"), PROXIES) == "198.51.100.9"
    assert client_ip(scope("192.168.1.1", "[2001:db8::7]:443"), PROXIES) == "2001:db8::7"
    assert client_ip(scope("192.168.1.1", "2001:db8::7"), PROXIES) == "2001:db8::7"
