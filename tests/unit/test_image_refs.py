"""Image references parsed as the engines parse them (the distribution grammar)."""

from __future__ import annotations

import pytest

from nefos.domain.image_refs import BadReference, parse_image_reference, registry_listed

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("nginx", "docker.io", "library/nginx", None, None),
        ("nginx:alpine", "docker.io", "library/nginx", "alpine", None),
        ("bitnami/redis:7", "docker.io", "bitnami/redis", "7", None),
        ("docker.io/nginx", "docker.io", "library/nginx", None, None),
        ("index.docker.io/library/nginx:1", "docker.io", "library/nginx", "1", None),
        ("quay.io/coreos/etcd:v3.5", "quay.io", "coreos/etcd", "v3.5", None),
        ("ghcr.io/a/b/c:latest", "ghcr.io", "a/b/c", "latest", None),
        ("localhost/nefos-busybox:test", "localhost", "nefos-busybox", "test", None),
        ("localhost:5000/x", "localhost:5000", "x", None, None),
        ("127.0.0.1:5432/x:1", "127.0.0.1:5432", "x", "1", None),
        ("169.254.169.254/x:1", "169.254.169.254", "x", "1", None),
        ("Registry.Internal:5000/team/app", "registry.internal:5000", "team/app", None, None),
        ("[::1]:5000/x", "[::1]:5000", "x", None, None),
        (f"nginx@{DIGEST}", "docker.io", "library/nginx", None, DIGEST),
        (f"quay.io/a/b:1@{DIGEST}", "quay.io", "a/b", "1", DIGEST),
        ("a__b/c-d.e_f:1.0-rc_1", "docker.io", "a__b/c-d.e_f", "1.0-rc_1", None),
    ],
)
def test_references_parse(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_image_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )


def test_hosts_ports_and_the_hub_endpoint() -> None:
    assert parse_image_reference("127.0.0.1:5432/x").host == "127.0.0.1"
    assert parse_image_reference("127.0.0.1:5432/x").port == 5432
    assert parse_image_reference("quay.io/a").port == 443
    assert parse_image_reference("[::1]:5000/x").host == "::1"
    assert parse_image_reference("nginx").endpoint_host == "registry-1.docker.io"
    assert parse_image_reference("ghcr.io/a").endpoint_host == "ghcr.io"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        (" nginx", "spaces"),
        ("nginx latest", "spaces"),
        ("NGINX", "component"),
        ("nginx:", "tag"),
        ("nginx:-x", "tag"),
        ("a//b", "component"),
        ("nginx@sha256:abc", "digest"),
        ("nginx@sha256:" + "G" * 64, "sha256"),
        ("host:99999/x", "port"),
        ("host:port/x", "port"),
        ("bad_host.io/x", "host"),
        ("x/" + "a" * 300, "longer"),
        ("-nginx", "component"),
        ("nginx:\uff46\uff4f\uff4f", "tag"),  # fullwidth letters: no tag an engine takes
        ("nginx:\u0663", "tag"),  # an Arabic-Indic digit
        ("[::1/foo", "port"),  # no closing bracket
        ("[::1]x/foo", "port"),  # something but a port after it
    ],
)
def test_bad_references_say_why(text: str, says: str) -> None:
    with pytest.raises(BadReference, match=says):
        parse_image_reference(text)


def test_registry_listed_normalises_the_settings_spelling() -> None:
    assert registry_listed(parse_image_reference("nginx"), ["Docker.io"])
    assert registry_listed(parse_image_reference("nginx"), ["index.docker.io"])
    assert registry_listed(parse_image_reference("quay.io/a"), ["quay.io"])
    assert not registry_listed(parse_image_reference("quay.io:444/a"), ["quay.io"])
    assert not registry_listed(parse_image_reference("127.0.0.1:5432/x"), ["docker.io"])
    assert registry_listed(
        parse_image_reference("registry.internal:5000/a"), ["registry.internal:5000"]
    )
