"""`nefos serve` serves the web console at `/` without shadowing anything of the API.

A build of our own (a shell, a hashed asset with its .gz/.br twins) in a temporary
directory, served by a real app on each backend through ``NEFOS_CONSOLE_DIR``.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nefos.api.app import create_app
from nefos.api.console import ConsoleMiddleware
from nefos.config import Settings
from tests.conftest import DatabaseFactory, make_settings

SHELL = (
    b"<!doctype html><html><head>"
    b'<script type="module" src="/assets/app-1a2b3c.js"></script></head></html>'
)
SCRIPT = b"console.log('nefos console');\n" * 50


def _build(root: Path) -> Path:
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_bytes(SHELL)
    (root / "assets" / "app-1a2b3c.js").write_bytes(SCRIPT)
    (root / "assets" / "app-1a2b3c.js.gz").write_bytes(gzip.compress(SCRIPT))
    (root / "assets" / "app-1a2b3c.js.br").write_bytes(b"not really brotli, but ours")
    (root / "robots.txt").write_bytes(b"User-agent: *\n")
    return root


@pytest.fixture(scope="module")
def console_settings(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    build = _build(tmp_path_factory.mktemp("console") / "dist")
    return make_settings(
        databases.new_url(), tmp_path_factory.mktemp("console-data"), console_dir=build
    )


@pytest.fixture(scope="module")
async def served(console_settings: Settings) -> AsyncIterator[tuple[Any, Path]]:
    build = console_settings.console_dir
    assert build is not None
    app = create_app(console_settings)
    async with app.router.lifespan_context(app):
        yield app, build


@pytest.fixture
async def web(served: tuple[Any, Path]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=served[0])
    async with httpx.AsyncClient(transport=transport, base_url="http://nefos.test") as c:
        yield c


def _is_shell(r: httpx.Response) -> bool:
    return r.status_code == 200 and r.content == SHELL


@pytest.mark.parametrize("path", ["/", "/overview", "/containers/0f3c9a", "/marketplace"])
async def test_client_routes_get_the_shell_never_cached(web: httpx.AsyncClient, path: str) -> None:
    r = await web.get(path)
    assert _is_shell(r), (r.status_code, r.text[:200])
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    policy = r.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self';" in policy
    assert "stripe" not in policy  # cards are not set up here
    assert r.headers["x-content-type-options"] == "nosniff"
    head = await web.head(path)
    assert head.status_code == 200 and head.content == b""


async def test_the_shell_revalidates_with_its_etag(web: httpx.AsyncClient) -> None:
    first = await web.get("/")
    again = await web.get("/", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""


async def test_hashed_assets_are_immutable_and_sent_compressed_when_accepted(
    web: httpx.AsyncClient,
) -> None:
    plain = await web.get("/assets/app-1a2b3c.js", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200
    assert plain.content == SCRIPT
    assert plain.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert plain.headers["content-type"].startswith("text/javascript")
    assert "content-encoding" not in plain.headers

    async with web.stream(
        "GET", "/assets/app-1a2b3c.js", headers={"Accept-Encoding": "gzip"}
    ) as gz:
        raw = b"".join([chunk async for chunk in gz.aiter_raw()])
    assert gz.headers["content-encoding"] == "gzip"
    assert gzip.decompress(raw) == SCRIPT
    assert gz.headers["vary"] == "Accept-Encoding"

    async with web.stream(
        "GET", "/assets/app-1a2b3c.js", headers={"Accept-Encoding": "gzip, br"}
    ) as br:
        raw = b"".join([chunk async for chunk in br.aiter_raw()])
    assert br.headers["content-encoding"] == "br"
    assert raw == b"not really brotli, but ours"


async def test_missing_files_are_404_not_the_shell(web: httpx.AsyncClient) -> None:
    for path in ("/assets/gone-123.js", "/assets/app-1a2b3c.js.gz", "/favicon.ico"):
        r = await web.get(path)
        assert r.status_code == 404, path
        assert not _is_shell(r)
    assert (await web.get("/robots.txt")).content == b"User-agent: *\n"


def test_no_path_leaves_the_build_directory(tmp_path: Path) -> None:
    build = _build(tmp_path / "dist")
    (tmp_path / "secret.txt").write_text("no")
    console = ConsoleMiddleware(app=None, directory=build)  # type: ignore[arg-type]
    assert console.file("/../secret.txt") is None
    assert console.file("/assets/../../secret.txt") is None
    assert console.file("/assets/%2e%2e/secret.txt") is None
    assert console.file("/robots.txt") == (build / "robots.txt").resolve()


@pytest.mark.parametrize(
    "path",
    ["/api/v1/nothing-here", "/api/nothing-here", "/metrics", "/prometheus", "/ws/nothing"],
)
async def test_api_paths_keep_the_api_404(web: httpx.AsyncClient, path: str) -> None:
    r = await web.get(path)
    assert r.status_code == 404, (path, r.text[:200])
    assert r.json()["error"]["code"] == "NOT_FOUND"


async def test_the_api_own_pages_are_not_shadowed(web: httpx.AsyncClient) -> None:
    health = await web.get("/health")
    assert health.status_code in (200, 503) and "status" in health.json()["data"]
    assert (await web.get("/openapi.json")).json()["info"]["title"] == "Nefos API"
    docs = await web.get("/docs")
    assert "swagger-ui" in docs.text and not _is_shell(docs)
    assert (await web.get("/docs/static/swagger-ui.css")).status_code == 200
    gateway = await web.get("/gw/no-such-api/x")
    assert gateway.status_code in (401, 404) and gateway.json()["success"] is False
    assert not _is_shell(await web.get("/svc/nothing/"))
    # Only GET and HEAD are the console's: a POST to a page is the API's answer.
    post = await web.post("/overview", json={})
    assert post.status_code in (404, 405) and post.json()["success"] is False


async def test_no_route_of_the_openapi_document_is_shadowed(
    web: httpx.AsyncClient, served: tuple[Any, Path]
) -> None:
    paths = list(served[0].openapi()["paths"])
    assert len(paths) > 50
    for template in paths:
        path = re.sub(r"\{[^}]+\}", "x", template)
        r = await web.get(path)
        assert not _is_shell(r), template


@pytest.fixture
def unbuilt(databases: DatabaseFactory, tmp_path: Path) -> Settings:
    return make_settings(
        databases.new_url(), tmp_path / "data", console_dir=tmp_path / "never-built"
    )


async def test_without_a_build_the_shell_says_how_to_make_one(unbuilt: Settings) -> None:
    settings = unbuilt
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://nefos.test") as c:
            r = await c.get("/overview")
            assert r.status_code == 503
            assert "The web console is not built" in r.text
            assert "make run" in r.text and "scripts/ensure-console.sh" in r.text
            assert (await c.get("/api/v1/marketplace/listings")).status_code == 200


def test_where_cards_are_taken_the_policy_allows_stripe_js_and_nothing_else_more() -> None:
    def policy(js_url: str | None) -> dict[str, list[str]]:
        middleware = ConsoleMiddleware(None, directory=Path("/nonexistent"), card_js_url=js_url)  # type: ignore[arg-type]
        text = middleware.shell_headers["Content-Security-Policy"]
        return {d.split()[0]: d.split()[1:] for d in text.split("; ")}

    plain = policy(None)
    assert plain["script-src"] == ["'self'"] and plain["connect-src"] == ["'self'"]
    assert "frame-src" not in plain  # default-src 'self'
    stripe = policy("https://js.stripe.com/v3/")
    assert stripe["script-src"] == ["'self'", "https://js.stripe.com", "https://*.js.stripe.com"]
    assert stripe["connect-src"] == ["'self'", "https://js.stripe.com", "https://api.stripe.com"]
    assert stripe["frame-src"] == [
        "https://js.stripe.com",
        "https://*.js.stripe.com",
        "https://hooks.stripe.com",
    ]
    # Everything else as strict as without cards.
    same = ("default-src", "style-src", "frame-ancestors", "base-uri", "form-action", "object-src")
    assert {d: stripe[d] for d in same} == {d: plain[d] for d in same}
    # A stand-in's origin (the tests'), with its port and without any credentials;
    # an IPv6 literal keeps its brackets.
    local = policy("http://user:secret@127.0.0.1:4242/v3/")
    assert local["script-src"][:2] == ["'self'", "http://127.0.0.1:4242"]
    assert "secret" not in " ".join(" ".join(v) for v in local.values())
    assert policy("http://[::1]:4242/v3/")["script-src"][1] == "http://[::1]:4242"


def test_stripe_js_comes_over_https_only_and_only_publishable_keys_are_served(
    tmp_path: Path,
) -> None:
    for bad in ("http://js.example.com/v3/", "javascript:alert(1)", "ftp://x/y", "https:///v3"):
        with pytest.raises(ValueError, match="https URL"):
            Settings(data_dir=tmp_path, stripe_js_url=bad)
    assert Settings(data_dir=tmp_path, stripe_js_url="http://localhost:9/v3/").stripe_js_url
    for secret in ("sk_live_abc", "rk_live_abc", "whsec_abc"):
        with pytest.raises(ValueError, match="publishable key"):
            Settings(data_dir=tmp_path, stripe_publishable_key=secret)
    # Set empty, as an environment template leaves it: cards off, the server starts.
    assert Settings(data_dir=tmp_path, stripe_publishable_key="").stripe_publishable_key is None
    with pytest.raises(ValueError, match="port out of range"):
        Settings(data_dir=tmp_path, stripe_js_url="https://js.example.com:99999/v3/")
