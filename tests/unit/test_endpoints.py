"""services.endpoints and the ingress's pure parts: names, URLs, the local-host
predicate, which replicas are routable, and the request's routing and headers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nefos.config import Settings
from nefos.db.models import ContainerReplica, Host, ServiceInstanceHealth
from nefos.gateway.ingress import TtlCache, _request_headers, _route
from nefos.services.endpoints import (
    Upstream,
    endpoint_url,
    host_label,
    label_of_host,
    mesh_ports,
    meshable,
    routable,
    target_port,
)

SID = "1a2b3c4d-0000-4000-8000-000000000000"


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, data_dir=Path("/nonexistent"), **values)  # type: ignore[call-arg]


def test_the_host_label_is_one_dns_label():
    assert host_label("web-app", SID) == "web-app-1a2b3c4d"
    assert host_label("Web_App.v2", SID) == "web-app-v2-1a2b3c4d"
    assert len(host_label("a" * 63, SID)) == 63
    assert host_label("___", SID) == "svc-1a2b3c4d"


def test_the_endpoint_follows_the_public_url():
    assert (
        endpoint_url(settings(), "web-app", SID) == "http://web-app-1a2b3c4d.apps.localhost:8000/"
    )
    s = settings(public_url="https://cloud.example.com", apps_domain="apps.example.com")
    assert endpoint_url(s, "web", SID) == "https://web-1a2b3c4d.apps.example.com/"
    s = settings(public_url="http://10.0.0.5:9000")
    assert endpoint_url(s, "web", SID) == "http://web-1a2b3c4d.apps.localhost:9000/"


def test_the_apps_domain_must_be_a_host_name():
    with pytest.raises(ValueError):
        settings(apps_domain="*.apps.example.com")


def test_a_label_is_read_from_the_host_header():
    assert label_of_host("web-1a2b3c4d.apps.localhost:8000", "apps.localhost") == "web-1a2b3c4d"
    assert label_of_host("WEB-1a2b3c4d.Apps.Localhost", "apps.localhost") == "web-1a2b3c4d"
    assert label_of_host("a.b.apps.localhost", "apps.localhost") is None
    assert label_of_host("apps.localhost", "apps.localhost") is None
    assert label_of_host("nefos.test", "apps.localhost") is None
    assert label_of_host("[::1]:8000", "apps.localhost") is None


def host(uri: str, driver: str = "docker", ip: str | None = None) -> Host:
    return Host(id="h", hostname="h1", driver=driver, uri=uri, ip_address=ip)


def test_nefos_listens_only_on_a_local_engine():
    assert meshable(host("unix:///run/podman/podman.sock"))
    assert meshable(host("tcp://127.0.0.1:2375"))
    assert meshable(host("tcp://localhost:2375"))
    assert not meshable(host("tcp://10.0.0.7:2376"))
    assert not meshable(host("ssh://root@10.0.0.7"))
    assert not meshable(host("qemu:///system", driver="libvirt"))


def test_the_mesh_publishes_fixed_tcp_ports_on_the_public_address():
    assert mesh_ports(["31080:8080", "8081", "31053:53/udp", "127.0.0.1:31081:9090"]) == {
        8080: 31080
    }
    assert target_port(["53/udp", "31080:8080", "9090"]) == 8080
    assert target_port(["53/udp"]) is None


def replica(rid: str, state: str, port: int | None, ip: str = "0.0.0.0") -> ContainerReplica:
    published = (
        []
        if port is None
        else [{"container_port": 8080, "protocol": "tcp", "host_ip": ip, "host_port": port}]
    )
    return ContainerReplica(id=rid, host_id="h", state=state, published=published)


def health(rid: str, status: str = "passing", maintenance: bool = False) -> ServiceInstanceHealth:
    return ServiceInstanceHealth(
        instance_id=rid,
        service_id="c",
        replica_id=rid,
        container_id="c",
        status=status,
        maintenance=maintenance,
    )


def test_only_running_replicas_with_the_port_are_routable():
    rows = [
        replica("a", "running", 31001),
        replica("b", "stopped", 31002),
        replica("c", "running", None),
        replica("d", "running", 31004, ip="10.1.2.3"),
    ]
    local = {"h": host("unix:///x.sock")}
    passing = {r.id: health(r.id) for r in rows}
    assert routable(rows, local, 8080, passing) == [
        Upstream("a", "127.0.0.1", 31001),
        Upstream("d", "10.1.2.3", 31004),
    ]
    remote = {"h": host("tcp://10.0.0.7:2376", ip="192.0.2.10")}
    assert routable(rows[:1], remote, 8080, passing) == [Upstream("a", "192.0.2.10", 31001)]
    assert routable(rows, local, 9090, passing) == []


@pytest.mark.parametrize(
    ("row", "routed"),
    [
        (None, False),  # not checked yet: a new instance takes no traffic
        (health("a"), True),
        (health("a", "warning"), True),  # alive, shedding load
        (health("a", "critical"), False),
        (health("a", maintenance=True), False),
    ],
)
def test_only_instances_whose_health_takes_traffic_are_routable(row, routed):
    rows = [replica("a", "running", 31001)]
    local = {"h": host("unix:///x.sock")}
    found = routable(rows, local, 8080, {"a": row} if row is not None else {})
    assert found == ([Upstream("a", "127.0.0.1", 31001)] if routed else [])


def scope(path: str, host_header: str = "nefos.test", **extra: object) -> dict[str, object]:
    return {
        "type": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", host_header.encode())],
        **extra,
    }


def test_requests_are_routed_by_host_or_by_path():
    assert _route(scope("/a/b", "web-1a2b3c4d.apps.localhost"), "apps.localhost") == (
        "host",
        "web-1a2b3c4d",
        b"/a/b",
    )
    assert _route(scope(f"/svc/{SID}/x%20y", query_string=b"q=1"), "apps.localhost") == (
        "path",
        SID,
        b"/x%20y?q=1",
    )
    assert _route(scope(f"/svc/{SID}"), "apps.localhost") == ("path", SID, b"/")
    assert _route(scope("/api/v1/health"), "apps.localhost") is None
    assert _route(scope("/svc/"), "apps.localhost") is None


def test_hop_by_hop_headers_are_dropped_and_forwarded_ones_set():
    s = scope("/", "web-1a2b3c4d.apps.localhost", scheme="http", client=("203.0.113.9", 5000))
    s["headers"] = [
        (b"host", b"web-1a2b3c4d.apps.localhost"),
        (b"connection", b"keep-alive, x-secret"),
        (b"x-secret", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"x-forwarded-for", b"198.51.100.1"),
        (b"x-forwarded-proto", b"https"),
        (b"content-length", b"3"),
    ]
    headers, has_body = _request_headers(s)
    names = [k for k, _ in headers]
    assert has_body
    assert b"connection" not in names and b"x-secret" not in names and b"keep-alive" not in names
    got = dict(headers)
    assert got[b"x-forwarded-for"] == b"198.51.100.1, 203.0.113.9"
    assert got[b"x-forwarded-proto"] == b"http"
    assert got[b"x-forwarded-host"] == b"web-1a2b3c4d.apps.localhost"
    assert got[b"host"] == b"web-1a2b3c4d.apps.localhost"


async def test_concurrent_misses_share_one_load():
    cache: TtlCache[str, int] = TtlCache(60)
    calls = 0

    async def load() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return 7

    assert await asyncio.gather(*(cache.get("k", load) for _ in range(20))) == [7] * 20
    assert calls == 1
    assert await cache.get("k", load) == 7 and calls == 1
    cache.forget("k")
    assert await cache.get("k", load) == 7 and calls == 2


async def test_one_service_has_a_bounded_share_of_the_ingress():
    """Requests in flight to one service are bounded: beyond, a 503 at once, and other
    services are not held up."""
    from nefos.gateway.ingress import _SCOPE_KEY, Ingress

    ingress = Ingress(settings(ingress_service_concurrency=2))
    release = asyncio.Event()
    forwarded: list[str] = []

    async def upstreams(service_id: str) -> list[Upstream]:
        return [Upstream("i", "127.0.0.1", 31001)]

    async def forward(scope, receive, send, service_id, ups, raw_path):  # type: ignore[no-untyped-def]
        forwarded.append(service_id)
        await release.wait()

    ingress.upstreams = upstreams  # type: ignore[method-assign]
    ingress._forward = forward  # type: ignore[method-assign]

    async def call(service_id: str) -> list[dict[str, object]]:
        sent: list[dict[str, object]] = []

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        request = {"type": "http", "method": "GET", _SCOPE_KEY: ("path", service_id, b"/")}
        await ingress.proxy(request, None, send)  # type: ignore[arg-type]
        return sent

    held = [asyncio.create_task(call("busy")) for _ in range(2)]
    await asyncio.sleep(0.05)
    refused = await call("busy")
    assert refused[0]["status"] == 503
    other = asyncio.create_task(call("calm"))
    await asyncio.sleep(0.05)
    assert forwarded == ["busy", "busy", "calm"]
    release.set()
    await asyncio.gather(*held, other)
    assert ingress._service_inflight == {}


def test_a_guest_address_is_taken_only_inside_its_networks_subnet() -> None:
    from nefos.domain.publishing import guest_address

    cidr = "10.78.4.0/24"
    assert guest_address(["10.78.4.23"], cidr) == "10.78.4.23"
    # The first lease inside the subnet; never the host's side, the network or
    # broadcast address, anything outside it, or anything without a subnet at all.
    assert guest_address(["192.168.1.5", "junk", "10.78.4.9"], cidr) == "10.78.4.9"
    for refused in ("10.78.4.1", "10.78.4.0", "10.78.4.255", "127.0.0.1", "10.78.5.2"):
        assert guest_address([refused], cidr) is None, refused
    assert guest_address(["10.78.4.23"], None) is None
    assert guest_address(["10.78.4.23"], "not a cidr") is None


def test_a_vm_upstream_needs_running_an_address_and_health_that_takes_traffic() -> None:
    from nefos.db.models import Vm
    from nefos.services.endpoints import Upstream, vm_upstream

    def vm(status: str = "running", ip: str | None = "10.78.4.23") -> Vm:
        return Vm(id="v", status=status, ip_address=ip, service_port=8080)

    assert vm_upstream(vm(), health("v")) == Upstream("v", "10.78.4.23", 8080)
    assert vm_upstream(vm("stopped"), health("v")) is None
    assert vm_upstream(vm(ip=None), health("v")) is None
    assert vm_upstream(vm(), health("v", "critical")) is None
    assert vm_upstream(vm(), health("v", maintenance=True)) is None
    assert vm_upstream(vm(), None) is None
