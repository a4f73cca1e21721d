"""`nefos events`: the live stream through the CLI."""

from __future__ import annotations

import json
import threading
import time
import uuid

from click.testing import Result

from nefos.sdk import Client
from tests.cli.conftest import Cli, no_traceback
from tests.conftest import ADMIN_PASSWORD, docker_host_uri


def test_events_streams_json_lines_until_the_count(admin_cli: Cli) -> None:
    results: list[Result] = []
    runner = threading.Thread(
        target=lambda: results.append(
            admin_cli("events", "--type", "host_status_changed", "-n", "2", "--json")
        ),
        daemon=True,
    )
    runner.start()
    # The CLI subscribes at its own pace: keep making real host events until it has two.
    with Client(admin_cli.url, username="admin", password=ADMIN_PASSWORD) as admin:
        deadline = time.monotonic() + 60
        while runner.is_alive() and time.monotonic() < deadline:
            host = admin.hosts.register(
                hostname=f"cli-ev-{uuid.uuid4().hex[:8]}", driver="docker", uri=docker_host_uri()
            )
            admin.hosts.delete(host.id)
            runner.join(0.3)
    runner.join(5)
    assert results, "nefos events did not stop after -n 2"
    result = results[0]
    assert result.exit_code == 0, (result.stdout, result.stderr)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 2
    assert all(e["type"] == "host_status_changed" and e["id"] for e in lines)
    assert {e["data"]["status"] for e in lines} <= {"active", "deleted"}


def test_events_refuses_an_unknown_type(admin_cli: Cli) -> None:
    result = admin_cli("events", "--type", "no_such_thing")
    assert result.exit_code == 2
    assert "unknown event type" in result.stdout + result.stderr
    no_traceback(result)


def test_events_ticket_prints_a_one_time_ticket(admin_cli: Cli) -> None:
    result = admin_cli("events", "--ticket", "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    issued = json.loads(result.stdout)
    assert issued["ticket"].startswith("nft_") and issued["expires_in"] > 0
    plain = admin_cli("events", "--ticket")
    assert plain.exit_code == 0 and plain.stdout.strip().startswith("nft_")
    assert plain.stdout.strip() != issued["ticket"]
