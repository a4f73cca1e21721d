"""Fixtures of the API tests: a populated two-tenant platform, and a server to fuzz."""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from nefos.domain.access import Role
from tests.conftest import Account, DatabaseFactory, LiveServer, join_org, make_settings

V1 = "/api/v1"


def _greedy_kernel() -> bytes:
    header = bytearray(0x264)
    header[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", header, 0x206, 0x020F)  # boot protocol 2.15
    struct.pack_into("<Q", header, 0x258, 1 << 40)  # pref_address: 1 TiB
    return bytes(header)


#: A VM "image" no VM boots from: a kernel that is only a bzImage setup header asking
#: for 1 TiB of memory. The libvirt driver refuses it before it defines a domain, so
#: a VM made from it fails at once and leaves nothing in libvirt (as containers that
#: name an image the host lacks do in the engine).
GREEDY_KERNEL = _greedy_kernel()
#: A raw disk whose boot sector halts the CPU (cli; hlt): a real VM that costs a QEMU
#: process and nothing more, for what needs a real domain (snapshots, backups).
HALT_DISK = b"\xfa\xf4\xeb\xfd".ljust(510, b"\0") + b"\x55\xaa"


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


@dataclass
class World:
    """Tenant A (an owner with a reseller organisation and everything in it), people
    holding each role there, and tenant B (a normal user of another organisation).

    ``ids`` names A's real objects by the path parameter (or sample field) that
    takes them; ``b_org_id`` is B's own organisation, where B is owner.
    """

    client: httpx.AsyncClient
    register: Any
    owner: Account
    other: Account
    roles: dict[Role, Account]
    ids: dict[str, str]
    personal_org_id: str
    b_org_id: str
    a_project_ids: list[str] = field(default_factory=list)
    a_org_ids: list[str] = field(default_factory=list)

    async def ok(self, method: str, path: str, who: Account, **kwargs: Any) -> Any:
        r = await self.client.request(method, V1 + path, headers=who.headers, **kwargs)
        assert r.is_success, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()["data"]

    async def new_org(self, *, member: Account | None = None, role: Role | None = None) -> str:
        org = await self.ok(
            "POST", "/organisations", self.owner, json={"name": f"Org {uuid.uuid4().hex[:8]}"}
        )
        if member is not None and role is not None:
            await self.add_member(org["id"], member, role)
        return str(org["id"])

    async def add_member(self, org_id: str, who: Account, role: Role) -> None:
        await join_org(self.client, org_id, self.owner.headers, who, role.value, V1)

    async def new_member(self) -> Account:
        user = await self.register()
        await self.add_member(self.ids["org_id"], user, Role.MEMBER)
        return user

    async def new_project(self) -> str:
        project = await self.ok(
            "POST",
            "/projects",
            self.owner,
            json={"name": f"p-{uuid.uuid4().hex[:8]}", "organisation_id": self.ids["org_id"]},
        )
        return str(project["id"])

    async def new_invitation(self) -> tuple[str, str]:
        inv = await self.ok(
            "POST",
            f"/organisations/{self.ids['org_id']}/invitations",
            self.owner,
            json={"email": unique_email("invitee")},
        )
        return str(inv["id"]), str(inv["token"])

    async def api_key(self, who: Account, scopes: list[str]) -> dict[str, str]:
        key = await self.ok("POST", "/api-keys", who, json={"name": "k", "scopes": scopes})
        return {"Authorization": f"Bearer {key['key']}"}


@pytest.fixture
async def world(client: httpx.AsyncClient, register: Any) -> World:
    owner = await register(name="Alice Owner")
    other = await register(name="Bob Other")
    w = World(
        client=client,
        register=register,
        owner=owner,
        other=other,
        roles={},
        ids={},
        personal_org_id="",
        b_org_id="",
    )
    orgs = await w.ok("GET", "/organisations", owner)
    w.personal_org_id = orgs["items"][0]["id"]
    org = await w.ok(
        "POST", "/organisations", owner, json={"name": "Acme Reseller", "kind": "reseller"}
    )
    w.ids["org_id"] = org["id"]
    w.ids["project_id"] = await w.new_project()
    child = await w.ok(
        "POST", f"/organisations/{org['id']}/children", owner, json={"name": "Acme Customer"}
    )
    for role in Role:
        user = await register(name=f"Role {role.value}")
        await w.add_member(org["id"], user, role)
        w.roles[role] = user
    target = await w.new_member()
    w.ids["user_id"] = target.id
    w.ids["invitation_id"], w.ids["token"] = await w.new_invitation()
    key = await w.ok("POST", "/api-keys", owner, json={"name": "ci", "scopes": ["org:read"]})
    w.ids["key_id"] = key["id"]
    # A second sign-in of A's owner: a session to name (never the one the walk uses).
    r = await w.client.post(
        f"{V1}/auth/login", json={"email": owner.email, "password": owner.password}
    )
    assert r.status_code == 200, r.text
    second = {"Authorization": f"Bearer {r.json()['access_token']}"}
    r = await w.client.get(f"{V1}/auth/sessions", headers=second)
    (current,) = [s for s in r.json()["data"]["items"] if s["current"]]
    w.ids["session_id"] = current["id"]
    outsider = await register()
    w.ids["outsider_email"] = outsider.email
    w.ids["invitee_email"] = unique_email("invitee")

    b_orgs = await w.ok("GET", "/organisations", other)
    w.b_org_id = b_orgs["items"][0]["id"]
    w.a_org_ids = [w.personal_org_id, org["id"], child["id"]]
    projects = await w.ok("GET", "/projects", owner, params={"limit": 500})
    w.a_project_ids = [p["id"] for p in projects["items"]]
    assert owner.project_id in w.a_project_ids and len(w.a_project_ids) == 3
    return w


@pytest.fixture(scope="session")
def fuzz_server(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A live server of its own for schemathesis.

    Fuzzing fails logins by the hundred (locking out 127.0.0.1) and fills the
    database with odd records; a server shared with other tests would inherit both.
    """
    settings = make_settings(
        databases.new_url(),
        tmp_path_factory.mktemp("fuzz"),
        host_timeout=2,  # a fuzzed host URI that does not answer holds a request less
        # Webhooks to loopback only (the shared ones point at the discard port), so
        # that no fuzzed ping or alert is ever sent off this machine.
        webhook_allowed_networks=["127.0.0.0/8"],
        # The fuzzing's containers name an image no host has: they fail at once
        # rather than after a pull from a registry this machine cannot reach.
        container_image_pull=False,
    )
    with LiveServer(settings) as server:
        yield server


class Follow:
    """A followed log (``GET /apis/{id}/logs?follow=true``, ``GET /containers/{id}/logs
    ?follow=true``) driven as ASGI, so that each line is read
    as the server sends it, and the client leaves (``http.disconnect``) when done."""

    def __init__(self, app: Any, path: str, query: str, headers: dict[str, str]) -> None:
        self.lines: list[dict[str, Any]] = []
        self.status = 0
        self.started = asyncio.Event()
        self.arrived = asyncio.Event()
        self.leave = asyncio.Event()
        self._buffer = b""
        self._asked = False
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            + [(b"host", b"nefos.test")],
            "server": ("nefos.test", 80),
            "client": ("203.0.113.7", 40000),
            "root_path": "",
        }
        self.task = asyncio.create_task(app(scope, self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        if not self._asked:
            self._asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.started.set()
        elif message["type"] == "http.response.body":
            self._buffer += message.get("body", b"")
            *whole, self._buffer = self._buffer.split(b"\n")
            self.lines += [orjson.loads(line) for line in whole if line]
            if self.lines:
                self.arrived.set()

    async def close(self) -> None:
        self.leave.set()
        await asyncio.wait_for(self.task, 30)  # a deadline, not a measure
