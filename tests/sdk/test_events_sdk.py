"""client.events(): the WebSocket stream through the SDK, async and blocking."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest

from nefos.sdk import AuthenticationError, Client, EventMessage
from tests.conftest import LiveServer, docker_host_uri


def cycle_host(admin: Client) -> None:
    """A real status change: a host registered (active), then removed (deleted)."""
    host = admin.hosts.register(
        hostname=f"ev-{uuid.uuid4().hex[:8]}", driver="docker", uri=docker_host_uri()
    )
    admin.hosts.delete(host.id)


async def test_an_async_stream_of_host_events(admin_client: Client) -> None:
    stream = admin_client.events(["host_status_changed"], include_control=True)
    got: list[EventMessage] = []

    async def read() -> None:
        async for message in stream:
            if message.type == "subscribed":
                # In place: now make the change, from a thread (the client is sync).
                asyncio.get_running_loop().run_in_executor(None, cycle_host, admin_client)
            elif message.is_event:
                got.append(message)
                if len(got) == 2:
                    return

    await asyncio.wait_for(read(), 60)
    assert [m.data["status"] for m in got] == ["active", "deleted"]
    assert all(m.type == "host_status_changed" and m.id for m in got)
    assert stream.connected is not None and stream.connected.data["user_id"]


def test_a_blocking_stream_and_a_refused_token(
    live_server: LiveServer, admin_client: Client, new_user: Any
) -> None:
    found: list[EventMessage] = []
    ready = threading.Event()

    def read() -> None:
        for message in admin_client.events(["host_status_changed"], include_control=True):
            if message.type == "subscribed":
                ready.set()
            elif message.is_event:
                found.append(message)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert ready.wait(30)
    cycle_host(admin_client)
    reader.join(30)
    assert found and found[0].data["status"] == "active"

    user = new_user()
    user.auth.logout()
    with Client(live_server.url, access_token="not-a-token") as stranger:
        with pytest.raises(AuthenticationError):
            next(iter(stranger.events(reconnect=False)))


async def test_a_ticket_opens_one_socket_and_the_stream_url_holds_no_credential(
    live_server: LiveServer, admin_client: Client
) -> None:
    import json

    from websockets.asyncio.client import connect

    assert "?" not in admin_client.events().url  # the stream's credentials go in a header
    issued = admin_client.events_ticket()
    assert issued.ticket.startswith("nft_") and issued.expires_in > 0
    url = live_server.url.replace("http://", "ws://") + f"/ws?ticket={issued.ticket}"
    for expected in ("connected", "error"):  # once, then refused
        async with connect(url, open_timeout=30) as ws:
            assert json.loads(await ws.recv())["type"] == expected
