"""The reconciler against a real engine changed behind Nefos's back: a container
removed, one stopped, one Nefos-labelled container no row knows; then a start
brings the lost replica back."""

from __future__ import annotations

import uuid

from nefos.drivers.base import InstanceNotFound, InstanceSpec
from nefos.drivers.docker import DockerDriver
from nefos.services.containers import LABEL_INSTALLATION, installation_id
from tests.conftest import TEST_IMAGE
from tests.faults.conftest import V1, Lab


async def test_reconciler_against_changes_behind_nefos(lab: Lab) -> None:
    async with lab.app(workers=2) as n:
        admin = await n.admin()
        await n.add_host(admin)
        user = await n.user()
        gone = await n.created(user, "gone")
        halted = await n.created(user, "halted", replicas=2)
        kept = await n.created(user, "kept")
        (gone_replica,) = await n.replica_rows(gone["id"])
        halted_replicas = await n.replica_rows(halted["id"])
        await n.assert_converged()

        # Behind Nefos's back: one engine container removed, the other's stopped, and a
        # Nefos-labelled container made that no replica row knows.
        client = lab.podman.client()
        try:
            client.containers.get(f"nefos-{gone_replica.id}").remove(force=True)
            for r in halted_replicas:
                client.containers.get(f"nefos-{r.id}").stop(timeout=0)
        finally:
            client.close()
        driver = DockerDriver(lab.podman.uri, timeout=30)
        orphan_id, stranger_id = str(uuid.uuid4()), str(uuid.uuid4())
        lab.foreign.add(f"nefos-{stranger_id}")
        try:
            orphan = await driver.create(
                InstanceSpec(
                    nefos_id=orphan_id,
                    project_id=user.project_id,
                    name="orphan",
                    image=TEST_IMAGE,
                    labels={
                        "nefos.container": str(uuid.uuid4()),
                        "nefos.slot": "0",
                        LABEL_INSTALLATION: installation_id(n.core),
                    },
                )
            )
            await driver.start(orphan.driver_id)
            # Another installation's container on the same engine: not ours to reap.
            await driver.create(
                InstanceSpec(
                    nefos_id=stranger_id,
                    project_id=user.project_id,
                    name="stranger",
                    image=TEST_IMAGE,
                    labels={LABEL_INSTALLATION: "another-installation"},
                )
            )

            report = await n.app.state.reconciler.run_once()
            assert report.orphans_removed == [orphan_id]
            await driver.get(f"nefos-{stranger_id}")  # left alone
            assert report.replicas_changed == {
                gone_replica.id: "missing",
                **{r.id: "stopped" for r in halted_replicas},
            }
            assert report.requeued == [] and report.hosts_unreachable == []
            try:
                await driver.get(orphan.driver_id)
                raise AssertionError("the orphan is still on the engine")
            except InstanceNotFound:
                pass
        finally:
            await driver.destroy(f"nefos-{orphan_id}")
            await driver.destroy(f"nefos-{stranger_id}")
            await driver.close()
        lab.foreign.discard(f"nefos-{stranger_id}")

        shown = await n.container(user, gone["id"])
        assert shown["status"] == "error", shown
        assert shown["status_reason"]
        assert [s["state"] for s in shown["replica_states"]] == ["missing"]
        shown = await n.container(user, halted["id"])
        assert shown["status"] == "stopped", shown
        assert [s["state"] for s in shown["replica_states"]] == ["stopped", "stopped"]
        assert (await n.container(user, kept["id"]))["status"] == "running"
        listed = await n.client.get(
            f"{V1}/containers", headers=user.headers, params={"status": "error"}
        )
        assert [c["id"] for c in listed.json()["data"]["items"]] == [gone["id"]]

        # A second pass has nothing left to change.
        again = await n.app.state.reconciler.run_once()
        assert (again.orphans_removed, again.replicas_changed) == ([], {})

        # Start brings the lost replica back (made again) and the stopped ones up.
        for c in (gone, halted):
            r = await n.client.put(f"{V1}/containers/{c['id']}/start", headers=user.headers)
            assert r.status_code == 202, r.text
            op = await n.wait(user, r.json()["data"]["operation"])
            assert op["status"] == "succeeded", op
        shown = await n.container(user, gone["id"])
        assert shown["status"] == "running", shown
        assert [s["state"] for s in shown["replica_states"]] == ["running"]
        (again_replica,) = await n.replica_rows(gone["id"])
        assert again_replica.id == gone_replica.id  # the same replica, a new engine container
        assert again_replica.driver_id != gone_replica.driver_id
        assert (await n.container(user, halted["id"]))["status"] == "running"
        await n.assert_converged()
        final = await n.app.state.reconciler.run_once()
        assert (final.orphans_removed, final.replicas_changed) == ([], {})


async def test_orphan_of_a_busy_container_is_left_to_its_operation(lab: Lab) -> None:
    """An engine container whose Nefos container has an operation in progress is not
    swept: that operation may be about to record it."""
    async with lab.app(workers=0) as n:
        admin = await n.admin()
        await n.add_host(admin)
        user = await n.user()
        r = await n.create(user, "busy")
        assert r.status_code == 202, r.text
        container_id = r.json()["data"]["container_id"]
        driver = DockerDriver(lab.podman.uri, timeout=30)
        orphan_id = str(uuid.uuid4())
        lab.foreign.add(f"nefos-{orphan_id}")
        try:
            await driver.create(
                InstanceSpec(
                    nefos_id=orphan_id,
                    project_id=user.project_id,
                    name="early",
                    image=TEST_IMAGE,
                    labels={
                        "nefos.container": container_id,
                        LABEL_INSTALLATION: installation_id(n.core),
                    },
                )
            )
            report = await n.app.state.reconciler.run_once()
            assert report.orphans_removed == []
            await driver.get(f"nefos-{orphan_id}")  # still there
            # The create runs; afterwards the container is no longer busy.
            assert await n.core.workers.run_one() is True
            report = await n.app.state.reconciler.run_once()
            assert report.orphans_removed == [orphan_id]
            lab.foreign.discard(f"nefos-{orphan_id}")
        finally:
            await driver.destroy(f"nefos-{orphan_id}")
            await driver.close()
        await n.assert_converged()
