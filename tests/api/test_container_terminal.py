"""WS /containers/{id}/exec: a terminal in a running replica of a real Podman container,
on a real socket: typing, output, resizing, exit codes; who may open one; its bounds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import (
    ADMIN_PASSWORD,
    PASSWORD,
    TEST_IMAGE,
    DatabaseFactory,
    LiveServer,
    docker_host_uri,
    make_settings,
    remove_managed_containers,
)

V1 = "/api/v1"
WAIT = 90.0


class Terminal:
    """A terminal's socket: its output as one text, its JSON messages apart."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.output = ""
        self.messages: list[dict[str, Any]] = []
        self.closed: ConnectionClosed | None = None
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                if isinstance(raw, bytes):
                    self.output += raw.decode(errors="replace")
                else:
                    self.messages.append(json.loads(raw))
                self._arrived.set()
        except ConnectionClosed as exc:
            self.closed = exc
        finally:
            self._arrived.set()

    async def until(self, check: Any, what: str, within: float = WAIT) -> Any:
        deadline = time.monotonic() + within
        while True:
            found = check(self)
            if found:
                return found
            if self._task.done() and not check(self):
                raise AssertionError(f"closed ({self.closed}) before {what}: {self.output!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {within} s: {self.output!r}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 1.0))

    def typed(self, type_: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == type_]

    async def close_code(self) -> int | None:
        await self.until(lambda t: t._task.done(), "the close")
        return self.ws.close_code


def socket_url(base: str, route: str, **query: Any) -> str:
    """The ws:// address of a terminal's ``route`` (under /api/v1) with ``query``; a
    list value repeats its key."""
    pairs = [
        (k, str(v))
        for k, values in query.items()
        for v in (values if isinstance(values, list) else [values])
    ]
    q = str(httpx.QueryParams(pairs))
    return base.replace("http://", "ws://") + f"{V1}{route}" + (f"?{q}" if q else "")


def url(base: str, container_id: str, **query: Any) -> str:
    return socket_url(base, f"/containers/{container_id}/exec", **query)


@contextlib.asynccontextmanager
async def open_socket(
    base: str, route: str, token: str | None, **query: Any
) -> AsyncIterator[Terminal]:
    """A terminal's socket at ``route``, the token in the subprotocols as the SDK does."""
    protocols = ["nefos.v1", f"bearer.{token}"] if token else ["nefos.v1"]
    async with connect(
        socket_url(base, route, **query),
        subprotocols=protocols,
        open_timeout=30,  # type: ignore[list-item]
    ) as ws:
        t = Terminal(ws)
        try:
            yield t
        finally:
            await ws.close()
            with contextlib.suppress(Exception):
                await t._task


def terminal(
    base: str, container_id: str, token: str | None, **query: Any
) -> contextlib.AbstractAsyncContextManager[Terminal]:
    return open_socket(base, f"/containers/{container_id}/exec", token, **query)


async def refused_at(
    base: str, route: str, token: str | None, **query: Any
) -> tuple[int | None, dict[str, Any]]:
    """The close code and the error's data of a terminal that was refused (and showed
    nothing)."""
    async with open_socket(base, route, token, **query) as t:
        code = await t.close_code()
        errors = t.typed("error")
        assert errors, t.messages
        assert t.output == ""
        return code, errors[0]["data"]


async def refused(
    base: str, container_id: str, token: str | None, **query: Any
) -> tuple[int | None, dict[str, Any]]:
    return await refused_at(base, f"/containers/{container_id}/exec", token, **query)


@pytest.fixture
def live(databases: DatabaseFactory, tmp_path: Path) -> Iterator[LiveServer]:
    settings = make_settings(
        databases.new_url(),
        tmp_path / "data",
        ws_recheck_interval=0.5,
        shell_max_per_user=2,
    )
    with LiveServer(settings) as srv:
        yield srv


async def login(c: httpx.AsyncClient, username: str, password: str) -> str:
    r = await c.post(f"{V1}/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return str(r.json()["data"]["access_token"])


async def register(c: httpx.AsyncClient) -> str:
    email = f"term-{uuid.uuid4().hex[:10]}@example.com"
    r = await c.post(f"{V1}/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    return str(r.json()["data"]["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def running_container(c: httpx.AsyncClient, token: str, name: str) -> str:
    """A container of TEST_IMAGE, once its replica runs."""
    r = await c.post(
        f"{V1}/containers", json={"name": name, "image": TEST_IMAGE}, headers=bearer(token)
    )
    assert r.status_code == 202, r.text
    cid = str(r.json()["data"]["container_id"])
    deadline = time.monotonic() + WAIT
    while True:
        r = await c.get(f"{V1}/containers/{cid}", headers=bearer(token))
        assert r.status_code == 200, r.text
        status = r.json()["data"]["container"]["status"]
        if status == "running":
            return cid
        assert status not in ("failed", "error"), r.text
        assert time.monotonic() < deadline, f"{name} is not running: {r.text}"
        await asyncio.sleep(0.3)


@contextlib.asynccontextmanager
async def world(live: LiveServer) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A client, the Podman host registered by the admin; the containers removed after."""
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        admin = await login(c, "admin", ADMIN_PASSWORD)
        r = await c.post(
            f"{V1}/resources/hosts",
            json={"hostname": "podman-term", "driver": "docker", "uri": docker_host_uri()},
            headers=bearer(admin),
        )
        assert r.status_code == 201, r.text
        try:
            yield c, admin
        finally:
            remove_managed_containers()


async def test_a_terminal_types_resizes_and_ends_with_the_exit_code(live: LiveServer) -> None:
    async with world(live) as (c, _):
        token = await register(c)
        cid = await running_container(c, token, "term-app")
        async with terminal(live.url, cid, token, cols=100, rows=30) as t:
            hello = await t.until(lambda t: t.typed("connected"), "connected")
            assert hello[0]["data"] == {
                "container_id": cid,
                "replica": 0,
                "command": ["/bin/sh"],
                "cols": 100,
                "rows": 30,
            }
            # The quotes split the word, so the echo's output is not the typed line.
            await t.ws.send(b"stty size; echo hel''lo\n")
            await t.until(lambda t: "30 100" in t.output and "hello\r\n" in t.output, "output")
            await t.ws.send(json.dumps({"type": "resize", "cols": 120, "rows": 40}))
            await t.ws.send(json.dumps({"type": "input", "data": "stty size\n"}))
            await t.until(lambda t: "40 120" in t.output, "the new size")
            await t.ws.send(json.dumps({"type": "ping"}))
            await t.until(lambda t: t.typed("pong"), "pong")
            for bad in ("not json", json.dumps({"type": "resize", "cols": 0, "rows": 5}), "[]"):
                await t.ws.send(bad)
            await t.until(lambda t: len(t.typed("error")) == 3, "three errors")
            assert {e["data"]["code"] for e in t.typed("error")} == {"VALIDATION_ERROR"}
            await t.ws.send(b"exit 7\n")
            assert await t.close_code() == 1000
            assert t.typed("exit")[0]["data"] == {"code": 7}

        # A command of one's own, with a one-time ticket (a browser's way in).
        r = await c.post(f"{V1}/ws/ticket", headers=bearer(token))
        assert r.status_code == 201, r.text
        ticket = r.json()["data"]["ticket"]
        async with terminal(
            live.url, cid, None, ticket=ticket, command=["sh", "-c", "echo $((6 * 7)); exit 3"]
        ) as t:
            assert await t.close_code() == 1000
            assert "42" in t.output
            assert t.typed("connected")[0]["data"]["command"] == [
                "sh",
                "-c",
                "echo $((6 * 7)); exit 3",
            ]
            assert t.typed("exit")[0]["data"] == {"code": 3}
        # The ticket was spent.
        code, err = await refused(live.url, cid, None, ticket=ticket)
        assert (code, err["code"]) == (4401, "UNAUTHORIZED")


async def test_who_may_open_a_terminal(live: LiveServer) -> None:
    async with world(live) as (c, _):
        owner, stranger = await register(c), await register(c)
        cid = await running_container(c, owner, "term-mine")
        # No credential; another tenant's container; an id that is no id; a replica
        # that does not exist; a query out of its bounds.
        assert (await refused(live.url, cid, None))[0] == 4401
        code, err = await refused(live.url, cid, stranger)
        assert (code, err["code"]) == (4404, "NOT_FOUND")
        assert (await refused(live.url, "no-such-container", owner))[0] == 4404
        assert (await refused(live.url, "bad%00id", owner))[0] == 4404
        code, err = await refused(live.url, cid, owner, replica=5)
        assert (code, err["code"]) == (4404, "NOT_FOUND")
        code, err = await refused(live.url, cid, owner, cols=0)
        assert (code, err["code"]) == (4422, "VALIDATION_ERROR")
        code, err = await refused(live.url, cid, owner, command="")
        assert err["code"] == "VALIDATION_ERROR"
        # A key that may only read compute gets no terminal; one that may write does.
        keys = {}
        for scopes in (["compute:read"], ["compute:write"]):
            r = await c.post(
                f"{V1}/api-keys", json={"name": scopes[0], "scopes": scopes}, headers=bearer(owner)
            )
            assert r.status_code == 201, r.text
            keys[scopes[0]] = r.json()["data"]["key"]
        code, err = await refused(live.url, cid, keys["compute:read"])
        assert (code, err["code"]) == (4403, "FORBIDDEN")
        async with terminal(live.url, cid, keys["compute:write"]) as t:
            await t.until(lambda t: t.typed("connected"), "connected")
        # A browser from another origin is refused before the upgrade.
        with pytest.raises(InvalidStatus) as refused_origin:
            async with connect(
                url(live.url, cid),
                subprotocols=["nefos.v1", f"bearer.{owner}"],  # type: ignore[list-item]
                origin="https://evil.example",  # type: ignore[arg-type]
                open_timeout=30,
            ):
                pass
        assert refused_origin.value.response.status_code == 403
        # Signing out hangs the open terminal up at the next re-check.
        async with terminal(live.url, cid, owner) as t:
            await t.until(lambda t: t.typed("connected"), "connected")
            r = await c.post(f"{V1}/auth/logout", headers=bearer(owner))
            assert r.status_code in (200, 204), r.text
            assert await t.close_code() == 4401
            assert t.typed("error")[-1]["data"]["code"] == "UNAUTHORIZED"


@pytest.fixture
def tight(databases: DatabaseFactory, tmp_path: Path) -> Iterator[LiveServer]:
    """A Nefos whose terminals are bounded tightly: two a user, idle for 2 s at most."""
    settings = make_settings(
        databases.new_url(),
        tmp_path / "data",
        shell_max_per_user=2,
        shell_idle_timeout=2.0,
    )
    with LiveServer(settings) as srv:
        yield srv


async def test_terminals_are_bounded(tight: LiveServer) -> None:
    live = tight
    async with world(live) as (c, _):
        token = await register(c)
        cid = await running_container(c, token, "term-bounds")
        async with (
            terminal(live.url, cid, token) as one,
            terminal(live.url, cid, token) as two,
        ):
            for t in (one, two):
                await t.until(lambda t: t.typed("connected"), "connected")
            code, err = await refused(live.url, cid, token)
            assert (code, err["code"]) == (4409, "CONFLICT")
            assert err["details"] == {"limit": 2}
            # Nothing either way for the idle timeout: hung up.
            assert await one.close_code() == 4408
            assert one.typed("error")[-1]["data"]["code"] == "TIMEOUT"
        # A message over 64 KiB closes the terminal (1009).
        async with terminal(live.url, cid, token) as t:
            await t.until(lambda t: t.typed("connected"), "connected")
            await t.ws.send(b"x" * (64 * 1024 + 1))
            assert await t.close_code() == 1009


async def test_the_sdk_and_the_cli_open_terminals(live: LiveServer, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nefos.cli.main import app
    from nefos.sdk import Client, NotFoundError

    async with world(live) as (c, _):
        email = f"term-{uuid.uuid4().hex[:10]}@example.com"
        r = await c.post(f"{V1}/auth/register", json={"email": email, "password": PASSWORD})
        assert r.status_code == 201, r.text
        token = str(r.json()["data"]["access_token"])
        cid = await running_container(c, token, "term-sdk")

        def sdk() -> None:
            with Client(live.url) as client:
                client.auth.login(email=email, password=PASSWORD)
                with client.containers.terminal(cid, command=["sh"], cols=90, rows=20) as term:
                    assert term.info["replica"] == 0
                    term.send("stty size; exit 4\n")
                    shown = b""
                    while (chunk := term.recv(timeout=WAIT)) is not None:
                        shown += chunk
                    assert b"20 90" in shown, shown
                    assert term.exit_code == 4
                with pytest.raises(NotFoundError):
                    client.containers.terminal("no-such-container").__enter__()
                with pytest.raises(NotFoundError):
                    client.containers.terminal(cid, replica=3).__enter__()

            runner = CliRunner()
            env = {"NEFOS_CONFIG": str(tmp_path / "cli.json"), "COLUMNS": "200"}
            done = runner.invoke(
                app,
                ["login", "--url", live.url, "--email", email, "--password", PASSWORD],
                env=env,
            )
            assert done.exit_code == 0, done.output
            done = runner.invoke(
                app,
                ["container", "exec", cid, "--", "sh", "-c", "cat; exit 6"],
                input="typed in\n",
                env=env,
            )
            assert done.exit_code == 6, done.output
            assert "typed in" in done.stdout
            done = runner.invoke(
                app, ["container", "exec", cid], input="echo o''k\nexit\n", env=env
            )
            assert done.exit_code == 0, done.output
            assert "\nok\n" in done.stdout.replace("\r\n", "\n")
            done = runner.invoke(app, ["container", "exec", "no-such-container"], env=env)
            assert done.exit_code != 0
            assert "not found" in done.output.lower()

        await asyncio.to_thread(sdk)
