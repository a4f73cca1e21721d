"""WS /vms/{id}/console: a running VM's serial console, interactive, on a real socket
and a real guest (the tiny image, whose init runs a root shell on ttyS0): typing and
its answer, one console at a time and taking one over, who may open one, and the
console's end when the VM stops. One VM boots for the whole file."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.test_container_terminal import Terminal, login, open_socket, refused_at
from tests.api.test_containers import Api
from tests.api.test_vms import console_until, register_tiny
from tests.conftest import (
    ADMIN_PASSWORD,
    PASSWORD,
    Account,
    DatabaseFactory,
    LiveServer,
    libvirt_test_uri,
    make_settings,
    remove_managed_domains,
)

V1 = "/api/v1"


@pytest.fixture(scope="module")
def live(
    databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    settings = make_settings(
        databases.new_url(),
        tmp_path_factory.mktemp("vm-console") / "data",
        ws_recheck_interval=0.5,
        shell_max_per_user=3,
    )
    with LiveServer(settings) as srv:
        yield srv


async def account(c: httpx.AsyncClient) -> Account:
    email = f"console-{uuid.uuid4().hex[:10]}@example.com"
    r = await c.post(f"{V1}/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    data = r.json()["data"]
    return Account(data["user"], data["access_token"], data["refresh_token"], PASSWORD)


def console(
    base: str, vm_id: str, token: str | None, **query: Any
) -> contextlib.AbstractAsyncContextManager[Terminal]:
    return open_socket(base, f"/vms/{vm_id}/console", token, **query)


async def refused(
    base: str, vm_id: str, token: str | None, **query: Any
) -> tuple[int | None, dict[str, Any]]:
    return await refused_at(base, f"/vms/{vm_id}/console", token, **query)


@pytest.mark.timeout(600)
async def test_the_serial_console_types_into_the_guest_one_at_a_time(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
        admin_token = await login(c, "admin", ADMIN_PASSWORD)
        admin = Account({"id": "", "email": ""}, admin_token, "", ADMIN_PASSWORD)
        r = await c.post(
            f"{V1}/resources/hosts",
            json={"hostname": "libvirt-console", "driver": "libvirt", "uri": libvirt_test_uri()},
            headers=admin.headers,
        )
        assert r.status_code == 201, r.text
        try:
            await register_tiny(Api(c, admin))
            user = await account(c)
            api = Api(c, user)
            body = {"name": "console-vm", "os_type": "busybox", "os_version": "1",
                    "cpu_cores": 1, "memory_gb": 0.125, "storage_gb": 1}  # fmt: skip
            vm_id = (await api.act("POST", "/vms", body))["vm"]["id"]
            await console_until(api, vm_id, "NEFOS-READY")

            async with console(live.url, vm_id, user.access_token) as first:
                await first.until(lambda t: t.typed("connected"), "connected")
                assert first.typed("connected")[0]["data"] == {"vm_id": vm_id, "forced": False}
                # Bytes typed reach the guest's shell; its answer is computed there.
                await first.ws.send(b"echo typed-$((6*7))\n")
                await first.until(lambda t: "typed-42" in t.output, "the binary input's answer")
                await first.ws.send('{"type": "input", "data": "echo text-$((7*7))\\n"}')
                await first.until(lambda t: "text-49" in t.output, "the text input's answer")
                # A resize is taken (a serial line has no size) and a ping answered.
                await first.ws.send('{"type": "resize", "cols": 120, "rows": 40}')
                await first.ws.send('{"type": "ping"}')
                await first.until(lambda t: t.typed("pong"), "pong")
                assert not first.typed("error")

                # A second console is refused while the first is open...
                code, err = await refused(live.url, vm_id, user.access_token)
                assert (code, err["code"], err["details"]) == (
                    4409,
                    "CONFLICT",
                    {"console": "busy"},
                )
                assert "force=true" in err["message"]
                # ... unless it takes over: the first one ends.
                async with console(live.url, vm_id, user.access_token, force="true") as second:
                    await second.until(lambda t: t.typed("connected"), "connected")
                    assert second.typed("connected")[0]["data"]["forced"] is True
                    await first.until(lambda t: t.typed("exit"), "the first console's end")
                    assert first.typed("exit")[0]["data"] == {"code": None}
                    assert await first.close_code() == 1000
                    await second.ws.send(b"echo second-$((8*8))\n")
                    await second.until(lambda t: "second-64" in t.output, "the answer")
                    # The log still reads what the console showed.
                    await console_until(api, vm_id, "second-64")

                    # Another tenant's VM is not found; bad input is a clear refusal.
                    other = await account(c)
                    code, err = await refused(live.url, vm_id, other.access_token)
                    assert (code, err["code"]) == (4404, "NOT_FOUND")
                    code, err = await refused(live.url, "vm-nope", user.access_token)
                    assert (code, err["code"]) == (4404, "NOT_FOUND")
                    code, err = await refused(live.url, vm_id, user.access_token, force="maybe")
                    assert (code, err["code"]) == (4422, "VALIDATION_ERROR")
                    code, err = await refused(live.url, vm_id, None)
                    assert (code, err["code"]) == (4401, "UNAUTHORIZED")

                    # The VM stopping ends the console.
                    await api.act("POST", f"/vms/{vm_id}/stop", {"force": True})
                    await second.until(lambda t: t.typed("exit"), "the console's end")
                    assert await second.close_code() == 1000

            # A stopped VM has no console to attach to.
            code, err = await refused(live.url, vm_id, user.access_token)
            assert (code, err["code"]) == (4409, "CONFLICT")
            assert err["message"] == "The VM is not running"
            await api.act("DELETE", f"/vms/{vm_id}")
        finally:
            await remove_managed_domains()
