"""The web console in a real browser: Debian's Chromium, headless, driven by Playwright
for Python, against `nefos serve` in a process of its own with the test Podman as its
container host.

* The browser is ``/usr/bin/chromium`` (``make services`` installs it from Debian);
  Playwright never downloads one here.
* Every test gets a fresh browser context (no cookies, no storage), records every
  request its pages make, and on the way out keeps a screenshot of its last page under
  ``var/test-artifacts/console/`` and checks each API call against the OpenAPI
  document (:func:`check_calls`).
* :func:`check_a11y` runs axe-core (the npm package, from ``console/node_modules``)
  in the page: no serious or critical violation.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import expect

from tests.conftest import (
    ADMIN_PASSWORD,
    PASSWORD,
    DatabaseFactory,
    docker_host_uri,
    new_installation_id,
    remove_managed_containers,
)
from tests.console.netns import LAUNCHER, BrowserNetwork
from tests.processes import Server, serve_env
from tests.stripe_server import PUBLISHABLE_KEY, WEBHOOK_SECRET, StripeServer
from tests.stripe_server import SECRET_KEY as STRIPE_SECRET_KEY

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "src" / "nefos" / "api" / "console_dist"
AXE = ROOT / "console" / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "var" / "test-artifacts" / "console"
V1 = "/api/v1"
#: A container's terminal (WS /containers/{id}/exec), opened with a ticket as /ws is.
TERMINAL_SOCKET = re.compile(rf"^{V1}/containers/[^/]+/exec$")
CONSOLE_SOCKET = re.compile(rf"^{V1}/vms/[^/]+/console$")
# What the machine's closed network needs (no background fetches Chromium makes on
# its own, each refused), and root's need for --no-sandbox.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
#: Waits for what the console shows: generous, since a container's start on a loaded
#: machine (two cores, shared with the rest of the suite) takes its time, but never a
#: fixed sleep. Locator actions and `expect` (5 s by default) wait this long.
UI_TIMEOUT_MS = 90_000
expect.set_options(timeout=UI_TIMEOUT_MS)


def _require_prerequisites() -> None:
    if not (BUILD / "index.html").is_file():
        pytest.fail("the console is not built: run `make console` (scripts/ensure-console.sh)")
    if not AXE.is_file():
        pytest.fail("console/node_modules has no axe-core: run `make console`")
    if not CHROMIUM.is_file():
        pytest.fail("no /usr/bin/chromium: run `make services`, which installs it from Debian")


@dataclass
class ConsoleServer:
    server: Server
    openapi: dict[str, Any]
    admin_token: str
    #: Stripe's stand-in: the `stripe` provider's API and Stripe.js (cards are on).
    stripe: StripeServer

    @property
    def url(self) -> str:
        return self.server.url

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def register(self, http: httpx.Client) -> dict[str, Any]:
        """A new tenant through the API: its auth data (user, access_token, ...)."""
        email = f"api-{uuid.uuid4().hex[:10]}@example.com"
        r = http.post(f"{V1}/auth/register", json={"email": email, "password": PASSWORD})
        assert r.status_code == 201, r.text
        return dict(r.json()["data"])


@pytest.fixture(scope="module")
def console_server(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConsoleServer]:
    """`nefos serve` with the console's build and the test Podman as a host."""
    _require_prerequisites()
    tmp = tmp_path_factory.mktemp("console-serve")
    stripe = StripeServer()
    # new_url runs a loop of its own: not on a thread where Playwright's may be running.
    with ThreadPoolExecutor(1) as pool:
        url = pool.submit(databases.new_url).result()
    env = serve_env(
        url,
        tmp / "data",
        NEFOS_CONSOLE_DIR=str(BUILD),
        NEFOS_INSTALLATION_ID=new_installation_id(),
        # No registry is reachable: the test image is on the host already.
        NEFOS_CONTAINER_IMAGE_PULL="false",
        NEFOS_BILLING_INTERVAL="3600",
        # Cards through Stripe.js: the stand-in's script and API.
        NEFOS_STRIPE_SECRET_KEY=STRIPE_SECRET_KEY,
        NEFOS_STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        NEFOS_STRIPE_API_BASE=stripe.url,
        NEFOS_STRIPE_PUBLISHABLE_KEY=PUBLISHABLE_KEY,
        NEFOS_STRIPE_JS_URL=f"{stripe.url}/v3/",
    )
    srv = Server(env, ROOT, tmp / "serve.log")
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            r = http.post(
                f"{V1}/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
            )
            assert r.status_code == 200, r.text
            admin = r.json()["data"]["access_token"]
            r = http.post(
                f"{V1}/resources/hosts",
                json={"hostname": "podman-console", "driver": "docker", "uri": docker_host_uri()},
                headers={"Authorization": f"Bearer {admin}"},
            )
            assert r.status_code == 201 and r.json()["data"]["status"] == "active", r.text
            openapi = http.get("/openapi.json").json()
        yield ConsoleServer(srv, openapi, admin, stripe)
    finally:
        srv.kill(15)
        stripe.close()
        remove_managed_containers()


@pytest.fixture(scope="session")
def browser_network() -> Iterator[BrowserNetwork]:
    """The browser's network namespace: only a loopback, so no interface the rest of the
    suite adds or removes aborts its requests (:mod:`tests.console.netns`)."""
    network = BrowserNetwork()
    try:
        yield network
    finally:
        network.close()


@pytest.fixture(scope="module")
def browser(console_server: ConsoleServer, browser_network: BrowserNetwork) -> Iterator[Any]:
    """Chromium for one test module, in its network namespace, where the console's
    server and Stripe's stand-in are exposed. Not for the session: Playwright's sync API
    keeps its event loop current on this thread while it runs, which the next module's
    asyncio tests (pytest-asyncio) must not find. After the server, for the same
    reason."""
    _require_prerequisites()
    from playwright.sync_api import sync_playwright

    relays = [
        browser_network.expose(_port(url))
        for url in (console_server.url, console_server.stripe.url)
    ]
    try:
        with sync_playwright() as pw:
            chromium = pw.chromium.launch(
                executable_path=str(LAUNCHER),
                headless=True,
                args=CHROMIUM_ARGS,
                env=browser_network.env(),
            )
            try:
                yield chromium
            finally:
                chromium.close()
    finally:
        for relay in relays:
            relay.close()


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


@dataclass
class Visit:
    """One test's browser page and what it did."""

    page: Any
    base: str
    requests: list[tuple[str, str]] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def goto(self, path: str) -> None:
        self.page.goto(self.base + path)

    def path(self) -> str:
        return urlsplit(self.page.url).path


@pytest.fixture
def visit(
    browser: Any, console_server: ConsoleServer, request: pytest.FixtureRequest
) -> Iterator[Visit]:
    with open_visit(browser, console_server, request.node.name) as v:
        yield v


@pytest.fixture
def other_visit(
    browser: Any, console_server: ConsoleServer, request: pytest.FixtureRequest
) -> Iterator[Visit]:
    """A second person's browser: a context of its own (no shared cookies or storage)."""
    with open_visit(browser, console_server, f"{request.node.name}-other") as v:
        yield v


@contextmanager
def open_visit(browser: Any, console_server: ConsoleServer, name: str) -> Iterator[Visit]:
    """A fresh browser context and page; on the way out, a screenshot of its last page,
    no uncaught error in the page, and every API call checked (check_calls)."""
    # The CSP forbids inline scripts, and axe is injected as one: the test context
    # bypasses it (the console itself never needs to).
    context = browser.new_context(
        base_url=console_server.url, bypass_csp=True, viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    v = Visit(page, console_server.url)
    errors: list[str] = []
    page.on("request", lambda req: v.requests.append((req.method, req.url)))
    page.on("websocket", lambda ws: v.sockets.append(ws.url))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield v
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        try:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        finally:
            context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
    check_calls(v, console_server.openapi)


def _templates(openapi: dict[str, Any]) -> list[tuple[str, re.Pattern[str]]]:
    found = []
    for template, operations in openapi["paths"].items():
        pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$")
        for method in operations:
            found.append((method.upper(), pattern))
    return found


def check_calls(visit: Visit, openapi: dict[str, Any]) -> None:
    """Every API request the pages made is a route of the OpenAPI document; no URL
    (page, request or socket) carries a token; sockets open with a ticket."""
    routes = _templates(openapi)
    missing = []
    for method, url in visit.requests:
        parts = urlsplit(url)
        assert "eyJ" not in url, f"a JWT in a URL: {url}"
        query = parse_qs(parts.query)
        assert not {"token", "access_token", "api_key"} & set(query), url
        if not parts.path.startswith("/api/"):
            continue
        if not any(m == method and p.match(parts.path) for m, p in routes):
            missing.append(f"{method} {parts.path}")
    assert not missing, f"the console called routes missing from /openapi.json: {missing}"
    for url in visit.sockets:
        parts = urlsplit(url)
        if TERMINAL_SOCKET.match(parts.path):
            # A container's terminal: the ticket, and its size and replica.
            assert "ticket" in parse_qs(parts.query), url
            assert set(parse_qs(parts.query)) <= {"ticket", "cols", "rows", "replica"}, url
            continue
        if CONSOLE_SOCKET.match(parts.path):
            # A VM's serial console: the ticket, and force to take it over.
            assert "ticket" in parse_qs(parts.query), url
            assert set(parse_qs(parts.query)) <= {"ticket", "force"}, url
            continue
        assert parts.path == f"{V1}/ws", url
        assert set(parse_qs(parts.query)) == {"ticket"}, url


def check_a11y(visit: Visit, label: str) -> None:
    """axe-core on the page as it stands: no serious or critical violation."""
    page = visit.page
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))"
    )
    bad = [v for v in result if v["impact"] in ("serious", "critical")]
    assert not bad, f"axe on {label} ({visit.path()}):\n" + json.dumps(bad, indent=1)
    visit.checked.append(label)


def sign_up(visit: Visit) -> dict[str, Any]:
    """A fresh account through the sign-up page; the API's answer (user, tokens).
    Ends on the overview."""
    page = visit.page
    email = f"console-{uuid.uuid4().hex[:10]}@example.com"
    visit.goto("/signup")
    page.get_by_role("heading", name="Create an account").wait_for()
    check_a11y(visit, "sign-up")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_response(f"**{V1}/auth/register") as answer:
        page.get_by_role("button", name="Create account").click()
    assert answer.value.status == 201, answer.value.text()
    page.wait_for_url("**/overview")
    page.get_by_role("heading", name="Overview").wait_for()
    data: dict[str, Any] = answer.value.json()["data"]
    assert data["user"]["email"] == email
    return data


def record_timing(name: str, value_ms: float) -> None:
    """A figure for docs/benchmarks.md: printed, and kept beside the screenshots."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "timings.jsonl"
    with path.open("a") as f:
        f.write(json.dumps({"name": name, "ms": round(value_ms, 1), "at": time.time()}) + "\n")
    print(f"{name}: {value_ms:.0f} ms")  # noqa: T201
