"""Container image references, parsed as the engines parse them.

The grammar is the distribution project's (``docker pull``'s)::

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [ registry "/" ] path-component ( "/" path-component )*
    registry  := host [ ":" port ]

The first path component names a registry if and only if it contains a ``.`` or a
``:``, or is ``localhost``; otherwise the registry is Docker Hub (``docker.io``),
where a one-component name lives under ``library/``. Pure: no I/O. The registry
is what Nefos checks before an engine may pull (``container_registries``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_REGISTRY = "docker.io"
#: Where the engines really connect for ``docker.io``.
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}

MAX_NAME = 255
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # ASCII, as the engines
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_HOST_LABEL = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?")


class BadReference(ValueError):
    """Not an image reference; the message says why (safe to show a tenant)."""


@dataclass(frozen=True, slots=True)
class ImageReference:
    registry: str  # host[:port], lower-case; "docker.io" for Docker Hub
    repository: str  # the path, "library/nginx" on Docker Hub
    tag: str | None
    digest: str | None

    @property
    def host(self) -> str:
        """The registry's host, without port or IPv6 brackets."""
        host, _port = _split_registry(self.registry)
        return host

    @property
    def port(self) -> int:
        """The port an engine connects to (HTTPS unless the registry names one)."""
        _host, port = _split_registry(self.registry)
        return port or 443

    @property
    def endpoint_host(self) -> str:
        """The host an engine really connects to (Docker Hub's is not docker.io)."""
        return DOCKER_HUB_ENDPOINT if self.registry == DEFAULT_REGISTRY else self.host


def _split_registry(registry: str) -> tuple[str, int | None]:
    if registry.startswith("["):
        host, closed, rest = registry[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(registry)  # "[::1" or "[::1]x"
        return host, int(rest[1:]) if rest else None
    host, _, port = registry.partition(":")
    return host, int(port) if port else None


def _check_registry(registry: str) -> str:
    try:
        host, port = _split_registry(registry)
    except ValueError:
        raise BadReference(f"the registry {registry!r} has an invalid port") from None
    if port is not None and not 0 < port < 65536:
        raise BadReference(f"the registry {registry!r} has an invalid port")
    if registry.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BadReference(f"the registry {registry!r} is not a valid host") from None
    elif not host or not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
        raise BadReference(f"the registry {registry!r} is not a valid host")
    return registry.lower()


def normalize_registry(registry: str) -> str:
    """A registry as written in settings ("Docker.io", "index.docker.io") -> its key."""
    key = registry.strip().lower().removeprefix("https://").rstrip("/")
    return DEFAULT_REGISTRY if key in _HUB_ALIASES else key


def parse_image_reference(text: str) -> ImageReference:
    """The reference, or :class:`BadReference` saying what is wrong with it."""
    ref = text.strip()
    if not ref:
        raise BadReference("the image reference is empty")
    if ref != text or any(c.isspace() for c in ref):
        raise BadReference("an image reference has no spaces")
    digest = None
    if "@" in ref:
        ref, _, digest = ref.partition("@")
        if not _DIGEST.fullmatch(digest):
            raise BadReference(f"{digest!r} is not a digest (algorithm:hex, e.g. sha256:...)")
        if digest.startswith("sha256:") and not re.fullmatch(r"sha256:[a-f0-9]{64}", digest):
            raise BadReference("a sha256 digest is 64 lower-case hex digits")
    tag = None
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        ref, tag = ref[:colon], ref[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise BadReference(f"{tag!r} is not a valid tag")
    if len(ref) > MAX_NAME:
        raise BadReference(f"the image name is longer than {MAX_NAME} characters")
    first, sep, rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry = _check_registry(first)
        path = rest
    else:
        registry = DEFAULT_REGISTRY
        path = ref
    if registry in _HUB_ALIASES:
        registry = DEFAULT_REGISTRY
    components = path.split("/")
    for component in components:
        if not _COMPONENT.fullmatch(component):
            raise BadReference(
                f"{component!r} is not a valid image name component "
                "(lower-case letters, digits, and . _ - between them)"
            )
    if registry == DEFAULT_REGISTRY and len(components) == 1:
        path = f"library/{path}"
    return ImageReference(registry=registry, repository=path, tag=tag, digest=digest)


def registry_listed(ref: ImageReference, registries: Iterable[str]) -> bool:
    """Whether the reference's registry is one of ``registries`` (settings' spelling)."""
    return ref.registry in {normalize_registry(r) for r in registries}
