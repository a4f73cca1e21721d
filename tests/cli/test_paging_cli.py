"""`--cursor` on the CLI's lists, and the next cursor in their output."""

from __future__ import annotations

from tests.cli.conftest import Cli, ok


def test_list_commands_page_by_cursor(cli: Cli, user: str) -> None:
    org = cli.json("org", "create", "Cursor Inc")
    made = [cli.json("project", "create", f"p{i}", "--org", org["id"])["id"] for i in range(5)]

    first = cli.json("project", "list", "--org", org["id"], "--limit", "2")
    assert [p["id"] for p in first["items"]] == made[:2]
    cursor = first["pagination"]["next_cursor"]
    seen = [p["id"] for p in first["items"]]
    while cursor is not None:
        data = cli.json("project", "list", "--org", org["id"], "--limit", "2", "--cursor", cursor)
        assert data["pagination"]["page"] is None
        seen += [p["id"] for p in data["items"]]
        cursor = data["pagination"]["next_cursor"]
    assert seen == made

    # The table says how to go on.
    table = ok(cli("project", "list", "--org", org["id"], "--limit", "2"))
    assert f"--cursor {first['pagination']['next_cursor']}" in table

    bad = cli("project", "list", "--org", org["id"], "--cursor", "forged")
    assert bad.exit_code == 1 and "cursor" in (bad.stdout + bad.stderr).lower()
    both = cli("project", "list", "--org", org["id"], "--cursor", cursor or "x", "--page", "2")
    assert both.exit_code == 1
