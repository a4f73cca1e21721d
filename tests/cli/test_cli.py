"""The `nefos` CLI against a real server, through the SDK (on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import stat
import time
import uuid

import jwt
import pytest

from nefos.sdk import AuthenticationError, Client
from tests.cli.conftest import register
from tests.conftest import PASSWORD, free_port


def _no_traceback(result) -> None:
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


# --- sessions -------------------------------------------------------------------------
def test_login_stores_the_session_privately_and_logout_forgets_it(cli):
    email = register(cli.url)
    result = cli("login", "--url", cli.url, "--email", email, "--password", PASSWORD)
    assert result.exit_code == 0, result.stderr
    assert email in result.stdout

    assert stat.S_IMODE(cli.config.stat().st_mode) == 0o600
    stored = cli.stored()
    assert stored["url"] == cli.url and stored["access_token"] and stored["refresh_token"]
    assert PASSWORD not in cli.config.read_text()

    assert cli.json("whoami")["email"] == email
    table = cli("whoami")
    assert table.exit_code == 0 and email in table.stdout

    old_token = stored["access_token"]
    assert cli("logout").exit_code == 0
    assert "access_token" not in cli.stored() and cli.stored()["url"] == cli.url
    with Client(cli.url, access_token=old_token) as c, pytest.raises(AuthenticationError):
        c.auth.me()  # ended on the server too

    again = cli("whoami")
    assert again.exit_code == 4 and "nefos login" in again.stderr
    _no_traceback(again)


def test_login_prompts_for_what_is_missing(cli):
    email = register(cli.url)
    result = cli("login", "--url", cli.url, input=f"{email}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.stderr
    assert PASSWORD not in result.stdout  # the prompt hides it
    assert cli.json("whoami")["email"] == email


def test_login_reads_url_and_password_from_the_environment(cli):
    email = register(cli.url)
    result = cli("login", "--email", email, NEFOS_URL=cli.url, NEFOS_PASSWORD=PASSWORD)
    assert result.exit_code == 0, result.stderr
    assert cli.stored()["url"] == cli.url


def test_wrong_password_prints_the_api_error_without_a_traceback(cli):
    email = register(cli.url)
    result = cli("login", "--url", cli.url, "--email", email, "--password", "wrong-password")
    assert result.exit_code == 1
    assert "Invalid credentials" in result.stderr and "UNAUTHORIZED" in result.stderr
    assert not cli.config.exists()
    _no_traceback(result)


def test_tokens_refreshed_by_the_sdk_are_written_back(cli, live_server):
    cli.login(register(cli.url))
    stored = cli.stored()
    # Make the stored access token one that expired a minute ago (same session).
    claims = jwt.decode(stored["access_token"], options={"verify_signature": False})
    now = int(time.time())
    claims.update(iat=now - 7200, nbf=now - 7200, exp=now - 60, jti=str(uuid.uuid4()))
    expired = jwt.encode(claims, live_server.settings.jwt_secret, algorithm="HS256")
    cli.config.write_text(json.dumps({**stored, "access_token": expired}))

    assert cli("whoami").exit_code == 0
    renewed = cli.stored()
    assert renewed["access_token"] not in (expired, stored["access_token"])
    assert renewed["refresh_token"] != stored["refresh_token"]  # the old one is spent
    assert stat.S_IMODE(cli.config.stat().st_mode) == 0o600
    assert cli("whoami").exit_code == 0  # and the new pair works next time


def test_stored_tokens_are_not_sent_to_another_server(cli, user):
    result = cli("whoami", NEFOS_URL=f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 4 and "Not logged in" in result.stderr


def test_unreachable_server_exits_3(cli):
    url = f"http://127.0.0.1:{free_port()}"
    result = cli("login", "--url", url, "--email", "a@example.com", "--password", "x" * 10)
    assert result.exit_code == 3 and "Cannot reach" in result.stderr
    _no_traceback(result)


# --- organisations --------------------------------------------------------------------
def test_org_commands_round_trip(cli, make_cli, user):
    slug = f"acme-{uuid.uuid4().hex[:8]}"
    org = cli.json("org", "create", "Acme", "--slug", slug, "--description", "widgets")
    assert org["slug"] == slug and org["role"] == "owner"
    assert cli.json("org", "show", org["id"])["description"] == "widgets"
    assert cli.json("org", "update", org["id"], "--name", "Acme Ltd")["name"] == "Acme Ltd"
    listed = cli.json("org", "list")
    assert {o["id"] for o in listed["items"]} >= {org["id"]}
    assert listed["pagination"]["total"] == 2  # with the personal organisation
    table = cli("org", "list")
    assert table.exit_code == 0 and "Acme Ltd" in table.stdout and org["id"] in table.stdout

    # Members: adding one invites them; they are members once they accept.
    friend_email = register(cli.url)
    invited = cli.json("org", "add-member", org["id"], "--email", friend_email, "--role", "viewer")
    assert invited["role"] == "viewer" and "user_id" not in invited
    emails = {m["email"] for m in cli.json("org", "members", org["id"])["items"]}
    assert emails == {user}
    friend = make_cli()
    friend.login(friend_email)
    assert friend("org", "accept", invited["token"]).exit_code == 0
    [member] = [m for m in cli.json("org", "members", org["id"])["items"] if m["email"] != user]
    assert member["email"] == friend_email and member["role"] == "viewer"
    assert cli.json("org", "set-role", org["id"], member["user_id"], "admin")["role"] == "admin"
    assert cli("org", "remove-member", org["id"], member["user_id"]).exit_code == 0

    # Invitations: the token is printed once; the invitee sees and accepts it.
    invitee_email = f"inv-{uuid.uuid4().hex[:8]}@example.com"
    shown = cli("org", "invite", org["id"], invitee_email)
    assert shown.exit_code == 0 and "shown only once" in shown.stdout
    invitation = cli.json("org", "invitations", org["id"])["items"]
    assert [i["email"] for i in invitation] == [invitee_email]
    token = next(
        line.split("Token:", 1)[1].strip()
        for line in shown.stdout.splitlines()
        if line.startswith("Token:")
    )
    invitee = make_cli()
    invitee.login(register(cli.url, invitee_email))
    assert [i["id"] for i in invitee.json("org", "invitations")["items"]] == [invitation[0]["id"]]
    joined = invitee("org", "accept", token)
    assert joined.exit_code == 0 and "Acme Ltd" in joined.stdout and "member" in joined.stdout

    # Deleting asks first; --yes does not.
    refused = cli("org", "delete", org["id"], input="n\n")
    assert refused.exit_code == 1 and cli.json("org", "show", org["id"])
    assert cli("org", "delete", org["id"], "--yes").exit_code == 0
    gone = cli("org", "show", org["id"])
    assert gone.exit_code == 1 and "NOT_FOUND" in gone.stderr
    _no_traceback(gone)


def test_reseller_child_organisations(cli, user):
    parent = cli.json("org", "create", "Resell", "--kind", "reseller")
    child = cli.json("org", "create-child", parent["id"], "Customer")
    assert child["parent_id"] == parent["id"]
    assert [o["id"] for o in cli.json("org", "children", parent["id"])["items"]] == [child["id"]]


def test_errors_are_reported_as_json_with_json(cli, user):
    result = cli("org", "show", "no-such-org", "--json")
    assert result.exit_code == 1 and result.stdout == ""
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "NOT_FOUND" and error["status"] == 404 and error["request_id"]


def test_validation_errors_name_the_field(cli, user):
    result = cli("org", "create", "Bad", "--slug", "Not A Slug")
    assert result.exit_code == 1
    assert "VALIDATION_ERROR" in result.stderr and "slug" in result.stderr
    _no_traceback(result)


# --- projects -------------------------------------------------------------------------
def test_project_commands_round_trip(cli, user):
    org = cli.json("org", "create", "Projects Inc")
    project = cli.json("project", "create", "web", "--org", org["id"], "--description", "site")
    assert project["organisation_id"] == org["id"]
    assert cli.json("project", "show", project["id"])["name"] == "web"
    updated = cli.json("project", "update", project["id"], "--description", "new site")
    assert updated["description"] == "new site"
    only = cli.json("project", "list", "--org", org["id"])["items"]
    assert [p["id"] for p in only] == [project["id"]]

    quota = cli.json("project", "quota", project["id"])
    assert quota["limits"]["vcpus"] is not None
    changed = cli.json(
        "project", "set-quota", project["id"], "--vcpus", "8", "--instances", "unlimited"
    )
    assert changed["limits"]["vcpus"] == 8 and changed["limits"]["instances"] is None
    assert changed["limits"]["memory_gb"] == quota["limits"]["memory_gb"]
    table = cli("project", "quota", project["id"])
    assert table.exit_code == 0 and "unlimited" in table.stdout

    bad = cli("project", "set-quota", project["id"], "--vcpus", "lots")
    assert bad.exit_code == 2 and "--vcpus" in bad.stderr
    assert cli("project", "set-quota", project["id"]).exit_code == 2

    assert cli("project", "delete", project["id"], "--yes").exit_code == 0
    assert cli("project", "show", project["id"]).exit_code == 1


# --- API keys -------------------------------------------------------------------------
def test_api_key_commands_and_authenticating_with_a_key(cli, user):
    created = cli("api-key", "create", "ci", "-s", "org:read", "-s", "account:read")
    assert created.exit_code == 0, created.stderr
    secret = next(w for w in created.stdout.split() if w.startswith("nfs_"))
    assert "only time" in created.stderr  # the warning
    keys = cli.json("api-key", "list")["items"]
    assert [k["name"] for k in keys] == ["ci"] and "key" not in keys[0]
    key_id = keys[0]["id"]
    assert sorted(cli.json("api-key", "show", key_id)["scopes"]) == ["account:read", "org:read"]

    # NEFOS_API_KEY wins over the stored session, even after logout.
    assert cli("logout").exit_code == 0
    assert cli.json("whoami", NEFOS_API_KEY=secret, NEFOS_URL=cli.url)["email"] == user
    denied = cli("org", "create", "Nope", NEFOS_API_KEY=secret, NEFOS_URL=cli.url)
    assert denied.exit_code == 1 and "FORBIDDEN" in denied.stderr

    cli.login(user)
    assert cli.json("api-key", "revoke", key_id)["revoked_at"] is not None
    revoked = cli("whoami", NEFOS_API_KEY=secret, NEFOS_URL=cli.url)
    assert revoked.exit_code == 1 and "UNAUTHORIZED" in revoked.stderr


def test_api_key_create_with_json_includes_the_secret(cli, user):
    key = cli.json("api-key", "create", "robot", "--scope", "org:read", "--expires-in-days", "1")
    assert key["key"].startswith("nfs_") and key["expires_at"]
    # '*' is every scope the user may grant: all but admin for a non-admin.
    star = cli.json("api-key", "create", "robot", "--scope", "*")
    assert "admin" not in star["scopes"] and "compute:write" in star["scopes"]


# --- administration -------------------------------------------------------------------
def test_admin_commands(cli, make_cli):
    cli.login_admin()
    email = f"made-{uuid.uuid4().hex[:8]}@example.com"
    made = cli.json("admin", "create-user", email, "--password", PASSWORD, "--name", "Made")
    assert made["email"] == email and made["is_active"]
    users = cli.json("admin", "list-users", "--limit", "500")["items"]
    assert email in {u["email"] for u in users}
    assert cli.json("admin", "show-user", made["id"])["name"] == "Made"

    other = make_cli()
    other.login(email)
    assert cli.json("admin", "disable-user", made["id"])["is_active"] is False
    locked_out = other("whoami")
    assert locked_out.exit_code == 1 and "UNAUTHORIZED" in locked_out.stderr
    assert cli.json("admin", "enable-user", made["id"])["is_active"] is True
    other.login(email)
    assert other.json("whoami")["email"] == email

    forbidden = other("admin", "list-users")
    assert forbidden.exit_code == 1 and "FORBIDDEN" in forbidden.stderr


def test_admin_create_user_prompts_for_the_password_twice(cli):
    cli.login_admin()
    email = f"prompted-{uuid.uuid4().hex[:8]}@example.com"
    result = cli("admin", "create-user", email, input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.stderr
    with Client(cli.url, email=email, password=PASSWORD) as c:
        assert c.auth.me().email == email


# --- sessions -------------------------------------------------------------------------
def test_session_commands_list_and_end_another_sign_in(cli, make_cli, user):
    laptop = make_cli()
    laptop.login(user)
    sessions = cli.json("session", "list")["items"]
    assert len(sessions) >= 2 and sum(s["current"] for s in sessions) == 1
    theirs = laptop.json("session", "list")["items"]
    (laptop_session,) = [s for s in theirs if s["current"]]
    assert cli("session", "list").exit_code == 0

    ended = cli.json("session", "revoke", laptop_session["id"])
    assert ended["revoked_at"] is not None and ended["current"] is False
    locked_out = laptop("session", "list")
    assert locked_out.exit_code == 1 and "UNAUTHORIZED" in locked_out.stderr
    assert cli.json("whoami")["email"] == user
