"""Crashes: the server dies after the API's commit, or between the engine call and the
status write, or is SIGKILLed mid-way; a restart on the same database converges with
one engine container per replica and no orphans."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ADMIN_PASSWORD, PASSWORD, TEST_IMAGE, free_port
from tests.faults.conftest import V1, Lab, Nefos, eventually
from tests.processes import server


async def requeued(n: Nefos, op_id: str) -> None:
    """Run reconciler passes until the interrupted operation is requeued (by one of
    them, or by the pass the app runs when it starts); none takes the engine
    container the interrupted attempt made for an orphan."""

    async def done() -> bool:
        report = await n.app.state.reconciler.run_once()
        assert not report.orphans_removed, report
        op = await n.op_row(op_id)
        return op_id in report.requeued or op.status != "running" or op.attempts > 1

    await eventually(done, "the reconciler requeues the stale operation")


async def test_crash_after_the_commit_before_any_engine_call(lab: Lab) -> None:
    url = await lab.new_url()
    # First life: no workers, so the create is committed and never run.
    async with lab.app(url, workers=0) as first:
        admin = await first.admin()
        await first.add_host(admin)
        user = await first.user()
        r = await first.create(user, "web", replicas=2)
        assert r.status_code == 202, r.text
        accepted = r.json()["data"]
        op = await first.op_row(accepted["operation"]["id"])
        assert op.status == "pending"
        assert [x.state for x in await first.replica_rows()] == ["pending", "pending"]
        assert lab.containers(user.project_id) == []

    # Second life: workers pick the pending operation up.
    async with lab.app(url, workers=2, operation_lease=2) as second:
        final = await second.wait(user, accepted["operation"])
        assert final["status"] == "succeeded", final
        assert final["attempts"] == 1
        container = await second.container(user, accepted["container_id"])
        assert container["status"] == "running", container
        await second.assert_converged()
        assert (await second.counts())["replicas"] == 2


async def test_crash_after_the_engine_call_before_the_status_write(lab: Lab) -> None:
    url = await lab.new_url()
    async with lab.app(url, workers=1, operation_lease=2) as first:
        admin = await first.admin()
        host = await first.add_host(admin)
        user = await first.user()
        driver = first.core.drivers.for_host(await first.host_row(host["id"]))
        made = asyncio.Event()
        original = driver.create

        async def create_then_hang(spec: Any) -> Any:
            await original(spec)
            made.set()
            await asyncio.Event().wait()  # the process "dies" here

        driver.create = create_then_hang
        r = await first.create(user, "web", replicas=2)
        assert r.status_code == 202, r.text
        accepted = r.json()["data"]
        op_id = accepted["operation"]["id"]
        await asyncio.wait_for(made.wait(), 60)
        # The engine has the first replica's container; the rows do not know it.
        op = await first.op_row(op_id)
        assert op.status == "running" and op.attempts == 1
        rows = await first.replica_rows()
        assert [x.state for x in rows] == ["pending", "pending"]
        assert [x.driver_id for x in rows] == [None, None]
        (early,) = lab.containers(user.project_id)
        assert early["name"] == f"nefos-{rows[0].id}"
    # Leaving the lifespan cancels the worker mid-handler: the operation stays
    # `running`, its heartbeat stops, as after a kill.

    async with lab.app(url, workers=2, operation_lease=2) as second:
        await requeued(second, op_id)
        final = await second.wait(user, accepted["operation"])
        assert final["status"] == "succeeded", final
        assert final["attempts"] == 2
        container = await second.container(user, accepted["container_id"])
        assert container["status"] == "running", container
        found = await second.assert_converged()
        assert early["id"] in {c["id"] for c in found}  # adopted, not made twice
        host_row = await second.host_row(host["id"])
        assert host_row.instance_count == 2
        # A later pass finds nothing to do.
        report = await second.app.state.reconciler.run_once()
        assert (report.requeued, report.orphans_removed, report.replicas_changed) == ([], [], {})


async def test_cancelling_a_requeued_create_leaves_an_orphan_the_reconciler_removes(
    lab: Lab,
) -> None:
    """A create interrupted after its engine call goes back to pending; cancelled then,
    its rows go, and the engine container made before the crash is an orphan."""
    url = await lab.new_url()
    async with lab.app(url, workers=1, operation_lease=2) as first:
        admin = await first.admin()
        host = await first.add_host(admin)
        user = await first.user()
        driver = first.core.drivers.for_host(await first.host_row(host["id"]))
        made = asyncio.Event()
        original = driver.create

        async def create_then_hang(spec: Any) -> Any:
            await original(spec)
            made.set()
            await asyncio.Event().wait()

        driver.create = create_then_hang
        r = await first.create(user, "web")
        assert r.status_code == 202, r.text
        accepted = r.json()["data"]
        await asyncio.wait_for(made.wait(), 60)
        (replica,) = await first.replica_rows()

    # Restarted without workers: the requeued create stays pending, and is cancelled.
    async with lab.app(url, workers=0, operation_lease=2) as second:
        op_id = accepted["operation"]["id"]
        await requeued(second, op_id)
        assert (await second.op_row(op_id)).status == "pending"
        r = await second.client.delete(f"{V1}/operations/{op_id}", headers=user.headers)
        assert r.status_code == 200, r.text
        assert r.json()["data"]["status"] == "cancelled"
        r = await second.client.get(
            f"{V1}/containers/{accepted['container_id']}", headers=user.headers
        )
        assert r.status_code == 404, r.text
        assert await second.counts() == {"containers": 0, "replicas": 0, "operations": 1}
        row = await second.host_row(host["id"])
        assert (row.instance_count, row.used_cpu_milli, row.used_memory_mb) == (0, 0, 0)
        assert [c["name"] for c in lab.containers(user.project_id)] == [f"nefos-{replica.id}"]

        report = await second.app.state.reconciler.run_once()
        assert report.orphans_removed == [replica.id]
        assert lab.containers(user.project_id) == []
        await second.assert_converged()


async def test_sigkill_mid_way_then_restart_converges(lab: Lab, tmp_path: Path) -> None:
    url = await lab.new_url()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEFOS_")}
    env.update(
        {
            "NEFOS_DATABASE_URL": url,
            "NEFOS_INSTALLATION_ID": lab.installation(url),
            "NEFOS_DATA_DIR": str(tmp_path / "data"),
            "NEFOS_HOST": "127.0.0.1",
            "NEFOS_PORT": str(free_port()),
            "NEFOS_SECRET_KEY": "test-secret-key-that-is-long-enough-for-hs256",
            "NEFOS_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "NEFOS_REGISTER_LOCAL_HOSTS": "false",
            "NEFOS_LOG_LEVEL": "warning",
            "NEFOS_WORKERS": "2",
            "NEFOS_OPERATION_POLL_INTERVAL": "0.2",
            "NEFOS_OPERATION_LEASE": "2",
            # The restarted server's own reconciler requeues what the kill interrupted.
            "NEFOS_RECONCILE_INTERVAL": "1",
            "NEFOS_HOST_CHECK_INTERVAL": "3600",
            "NEFOS_ARGON2_TIME_COST": "2",
            "NEFOS_ARGON2_MEMORY_KIB": "19456",
            "NEFOS_ARGON2_PARALLELISM": "1",
        }
    )
    log = tmp_path / "serve.log"
    names = [f"svc-{i}" for i in range(4)]
    with server(env, tmp_path, log) as first:
        async with httpx.AsyncClient(base_url=first.url, timeout=30) as c:
            r = await c.post(
                f"{V1}/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
            )
            assert r.status_code == 200, r.text
            admin = {"Authorization": f"Bearer {r.json()['data']['access_token']}"}
            r = await c.post(
                f"{V1}/resources/hosts",
                json={"hostname": "podman", "driver": "docker", "uri": lab.podman.uri},
                headers=admin,
            )
            assert r.status_code == 201 and r.json()["data"]["status"] == "active", r.text
            r = await c.post(
                f"{V1}/auth/register", json={"email": "kill@example.com", "password": PASSWORD}
            )
            assert r.status_code == 201, r.text
            user = r.json()["data"]
            headers = {"Authorization": f"Bearer {user['access_token']}"}
            project = user["user"]["default_project_id"]
            ops = []
            for name in names:
                r = await c.post(
                    f"{V1}/containers",
                    json={"name": name, "image": TEST_IMAGE, "replicas": 3},
                    headers=headers,
                )
                assert r.status_code == 202, r.text
                ops.append(r.json()["data"]["operation"]["id"])
        # Kill it as soon as the engine has the first container: work is under way.
        await eventually(lambda: lab.containers(project), "the first engine container", within=120)
        first.kill(signal.SIGKILL)
    at_kill = len(lab.containers(project))
    assert at_kill < 3 * len(names), "every replica was made before the kill"

    with server(env, tmp_path, log) as second:
        async with httpx.AsyncClient(base_url=second.url, timeout=30) as c:
            attempts: list[int] = []
            for op_id in ops:
                deadline = time.monotonic() + 180
                while True:
                    r = await c.get(f"{V1}/operations/{op_id}", headers=headers)
                    assert r.status_code == 200, r.text
                    op = r.json()["data"]
                    if op["status"] not in ("pending", "running"):
                        break
                    assert time.monotonic() < deadline, (op, second.tail())
                    await asyncio.sleep(0.2)
                assert op["status"] == "succeeded", (op, second.tail())
                attempts.append(op["attempts"])
            # Some operation was running when the server died, and ran again.
            assert max(attempts) >= 2, attempts
            r = await c.get(f"{V1}/containers", headers=headers, params={"limit": 50})
            items = r.json()["data"]["items"]
            assert sorted(i["name"] for i in items) == names
            assert {i["status"] for i in items} == {"running"}, items
            states = [s["state"] for i in items for s in i["replica_states"]]
            assert states == ["running"] * 3 * len(names)

    # The engine: exactly one running container per replica row, nothing else (seen
    # once the server has stopped: on SQLite a database has one process at a time).
    async with lab.app(url, workers=0) as view:
        await view.assert_converged()
        assert (await view.counts())["replicas"] == 3 * len(names)
