"""The SDK against a real Nefos server over HTTP (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import jwt
import pytest

import nefos.sdk as sdk
from nefos.schemas.identity import UserPublic
from nefos.schemas.tenancy import OrganisationPublic
from nefos.sdk import (
    NOT_GIVEN,
    AuthenticationError,
    Client,
    ConflictError,
    InternalServerError,
    NefosAPIError,
    NotFoundError,
    Page,
    PermissionDeniedError,
    RateLimitedError,
    TransportError,
    ValidationError,
)
from tests.conftest import PASSWORD, free_port
from tests.sdk.conftest import Recorder, unique_email

NOW = "nefos.sdk._client._now"


def _expired_copy(access_token: str, secret: str) -> str:
    """The same session's access token, signed by the server's key, expired a minute ago."""
    claims = jwt.decode(access_token, options={"verify_signature": False})
    now = int(time.time())
    claims.update(iat=now - 7200, nbf=now - 7200, exp=now - 60, jti=str(uuid.uuid4()))
    return jwt.encode(claims, secret, algorithm="HS256")


# --- the public surface ---------------------------------------------------------------
def test_all_names_every_public_member_and_nothing_else():
    public = {name for name in dir(sdk) if not name.startswith("_")}
    assert sorted(sdk.__all__) == sorted(set(sdk.__all__)), "duplicates in __all__"
    assert public == set(sdk.__all__)
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None


def test_base_url_gets_the_api_prefix_once():
    for url in ("http://h:1", "http://h:1/", "http://h:1/api", "http://h:1/api/v1/"):
        with Client(url) as c:
            assert c.base_url == "http://h:1/api/v1"
    with pytest.raises(ValueError):
        Client("localhost:8000")


def test_an_api_key_and_a_password_together_are_refused():
    with pytest.raises(ValueError):
        Client("http://h:1", api_key="nfs_x", email="a@b.c", password="p")


# --- accounts and sessions ------------------------------------------------------------
def test_register_then_log_in_by_email_and_by_username(live_server):
    email = unique_email()
    with Client(live_server.url) as c:
        result = c.auth.register(
            email=email, password=PASSWORD, name="Ada", username=f"ada{uuid.uuid4().hex[:6]}"
        )
        assert result.user.email == email and result.access_token == result.token
        me = c.auth.me()
        assert isinstance(me, UserPublic) and me.name == "Ada" and me.id == result.user.id
    with Client(live_server.url, email=email, password=PASSWORD) as c:
        assert c.tokens is None  # login is lazy: on the first call
        assert c.auth.me().email == email
        assert c.tokens is not None and c.tokens.refresh_token
    with Client(live_server.url, username=result.user.username, password=PASSWORD) as c:
        assert c.users.get_profile().id == result.user.id


def test_wrong_password_raises_authentication_error(live_server, new_user):
    client = new_user()
    email = client.auth.me().email
    with Client(live_server.url, email=email, password="not-the-password") as c:
        with pytest.raises(AuthenticationError) as info:
            c.auth.me()
    assert info.value.status_code == 401 and info.value.code == "UNAUTHORIZED"


def test_no_credentials_gets_the_servers_401(live_server):
    with Client(live_server.url) as c, pytest.raises(AuthenticationError) as info:
        c.auth.me()
    assert info.value.message == "Authentication required"


def test_profile_settings_and_password_change(live_server, new_user):
    c = new_user()
    assert c.users.update_profile(name="Grace").name == "Grace"
    settings = c.users.update_settings(theme="dark", timezone="Europe/Dublin")
    assert settings.theme == "dark" and c.users.get_settings().timezone == "Europe/Dublin"
    old = c.tokens
    assert old is not None
    result = c.users.change_password(current_password=PASSWORD, new_password="a-new-password-42")
    assert c.tokens is not None and c.tokens.access_token == result.access_token
    assert c.auth.me().name == "Grace"  # the client moved to the new session
    with Client(live_server.url, access_token=old.access_token) as stale:
        with pytest.raises(AuthenticationError) as info:
            stale.auth.me()
    assert info.value.reason == "session_revoked"


def test_logout_ends_the_session_and_forgets_it(live_server):
    seen: list[object] = []
    with Client(live_server.url, on_tokens=seen.append) as c:
        c.auth.register(email=unique_email(), password=PASSWORD)
        tokens = c.tokens
        assert tokens is not None and seen == [tokens]
        assert c.auth.logout().message == "Logged out"
        assert c.tokens is None and seen == [tokens, None]
        with pytest.raises(AuthenticationError):  # and no silent login again
            c.auth.me()
    with Client(live_server.url, access_token=tokens.access_token) as stale:
        with pytest.raises(AuthenticationError):
            stale.auth.me()


# --- keeping the session alive --------------------------------------------------------
def test_token_is_refreshed_shortly_before_it_expires(short_ttl_server, monkeypatch):
    email = unique_email()
    reported: list[object] = []
    rec = Recorder()
    with Client(short_ttl_server.url, transport=rec, on_tokens=reported.append) as c:
        c.auth.register(email=email, password=PASSWORD)
        first = c.tokens
        assert first is not None and first.expires_at is not None
        c.auth.me()
        assert c.tokens == first  # a fresh token is used as it is
        # 45 s later the one-minute token is within its last half: renewed before use.
        monkeypatch.setattr(NOW, lambda: time.time() + 45)
        c.auth.me()
        assert c.tokens is not None and c.tokens.access_token != first.access_token
        assert c.tokens.refresh_token != first.refresh_token
    assert rec.paths() == [
        "POST /auth/register 201",
        "GET /auth/me 200",
        "POST /auth/refresh 200",
        "GET /auth/me 200",
    ]
    assert reported[-1] == c.tokens and len(reported) == 2


def test_tokens_from_a_previous_run_are_refreshed_from_their_jwt_expiry(short_ttl_server):
    with Client(short_ttl_server.url) as first:
        first.auth.register(email=unique_email(), password=PASSWORD)
        tokens = first.tokens
    assert tokens is not None
    rec = Recorder()
    with Client(
        short_ttl_server.url,
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        transport=rec,
    ) as c:
        assert (
            c.tokens is not None
            and c.tokens.expires_at
            == jwt.decode(tokens.access_token, options={"verify_signature": False})["exp"]
        )
        c.auth.me()
    assert rec.paths() == ["GET /auth/me 200"]


def test_expired_token_is_refreshed_once_and_the_call_retried(live_server, monkeypatch):
    with Client(live_server.url) as first:
        first.auth.register(email=unique_email(), password=PASSWORD)
        tokens = first.tokens
    assert tokens is not None and tokens.refresh_token
    expired = _expired_copy(tokens.access_token, live_server.settings.jwt_secret)
    # The client's clock runs an hour late, so it believes the token is still good.
    monkeypatch.setattr(NOW, lambda: time.time() - 3600)
    rec = Recorder()
    with Client(
        live_server.url, access_token=expired, refresh_token=tokens.refresh_token, transport=rec
    ) as c:
        assert c.projects.list().pagination.total == 1
    assert rec.paths() == [
        "GET /projects 401",
        "POST /auth/refresh 200",
        "GET /projects 200",
    ]


def test_failed_refresh_falls_back_to_logging_in_with_the_password(live_server, monkeypatch):
    email = unique_email()
    with Client(live_server.url) as first:
        first.auth.register(email=email, password=PASSWORD)
        tokens = first.tokens
    assert tokens is not None
    expired = _expired_copy(tokens.access_token, live_server.settings.jwt_secret)
    monkeypatch.setattr(NOW, lambda: time.time() - 3600)
    rec = Recorder()
    with Client(
        live_server.url,
        email=email,
        password=PASSWORD,
        access_token=expired,
        refresh_token="not-a-refresh-token",
        transport=rec,
    ) as c:
        assert c.auth.me().email == email
    assert rec.paths() == [
        "GET /auth/me 401",
        "POST /auth/refresh 401",
        "POST /auth/login 200",
        "GET /auth/me 200",
    ]


def test_failed_refresh_without_a_password_raises(live_server, monkeypatch):
    with Client(live_server.url) as first:
        first.auth.register(email=unique_email(), password=PASSWORD)
        tokens = first.tokens
    assert tokens is not None
    expired = _expired_copy(tokens.access_token, live_server.settings.jwt_secret)
    monkeypatch.setattr(NOW, lambda: time.time() - 3600)
    rec = Recorder()
    with (
        Client(live_server.url, access_token=expired, refresh_token="spent", transport=rec) as c,
        pytest.raises(AuthenticationError),
    ):
        c.auth.me()
    assert [p for p in rec.paths() if "refresh" in p] == ["POST /auth/refresh 401"]


def test_expired_token_with_nothing_to_renew_it_is_not_retried(live_server, monkeypatch):
    with Client(live_server.url) as first:
        first.auth.register(email=unique_email(), password=PASSWORD)
        tokens = first.tokens
    assert tokens is not None
    expired = _expired_copy(tokens.access_token, live_server.settings.jwt_secret)
    monkeypatch.setattr(NOW, lambda: time.time() - 3600)
    rec = Recorder()
    with Client(live_server.url, access_token=expired, transport=rec) as c:
        with pytest.raises(AuthenticationError) as info:
            c.auth.me()
    assert info.value.reason == "token_expired"
    assert rec.paths() == ["GET /auth/me 401"]


def test_concurrent_calls_spend_the_refresh_token_once(short_ttl_server, monkeypatch):
    rec = Recorder()
    with Client(short_ttl_server.url, transport=rec) as c:
        c.auth.register(email=unique_email(), password=PASSWORD)
        monkeypatch.setattr(NOW, lambda: time.time() + 45)
        errors: list[BaseException] = []

        def call() -> None:
            try:
                c.auth.me()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert errors == []
    assert [p for p in rec.paths() if "refresh" in p] == ["POST /auth/refresh 200"]


# --- tenancy round trips --------------------------------------------------------------
def test_organisation_round_trip(live_server, new_user):
    owner = new_user()
    org = owner.organisations.create(
        name="Acme", slug=f"acme-{uuid.uuid4().hex[:8]}", description="widgets"
    )
    assert isinstance(org, OrganisationPublic) and org.role == "owner" and org.kind == "standard"
    assert owner.organisations.get(org.id).description == "widgets"
    assert owner.organisations.update(org.id, name="Acme Ltd").name == "Acme Ltd"
    page = owner.organisations.list(limit=1)
    assert isinstance(page, Page) and page.pagination.total == 2 and len(page.items) == 1
    assert page.pagination.pages == 2
    assert owner.organisations.list(page=2, limit=1).items[0].id != page.items[0].id

    # Members: adding by e-mail invites; the invitee accepts; change the role, remove.
    friend = new_user()
    friend_me = friend.auth.me()
    invited = owner.organisations.add_member(org.id, email=friend_me.email, role="viewer")
    assert invited.email == friend_me.email and invited.role == "viewer"
    assert owner.auth.me().id in {m.user_id for m in owner.organisations.list_members(org.id).items}
    assert friend_me.id not in {m.user_id for m in owner.organisations.list_members(org.id).items}
    assert friend.organisations.accept_invitation(invited.token).id == org.id
    assert owner.organisations.update_member(org.id, friend_me.id, role="admin").role == "admin"
    assert {m.user_id for m in owner.organisations.list_members(org.id).items} == {
        owner.auth.me().id,
        friend_me.id,
    }
    assert friend.organisations.get(org.id).role == "admin"
    owner.organisations.remove_member(org.id, friend_me.id)
    with pytest.raises(NotFoundError):
        friend.organisations.get(org.id)

    # Invitations: invite, list, see it as the invitee, accept.
    invitee_email = unique_email("invitee")
    invitation = owner.organisations.invite(org.id, email=invitee_email, role="member")
    assert invitation.token and invitation.email == invitee_email
    assert [i.id for i in owner.organisations.list_invitations(org.id).items] == [invitation.id]
    invitee = new_user(email=invitee_email)
    assert [i.id for i in invitee.organisations.my_invitations().items] == [invitation.id]
    joined = invitee.organisations.accept_invitation(invitation.token)
    assert joined.id == org.id and joined.role == "member"
    second = owner.organisations.invite(org.id, email=unique_email("other"))
    owner.organisations.revoke_invitation(org.id, second.id)

    owner.organisations.delete(org.id)
    with pytest.raises(NotFoundError):
        owner.organisations.get(org.id)


def test_reseller_creates_and_lists_child_organisations(new_user):
    reseller = new_user()
    parent = reseller.organisations.create(name="Resell", kind="reseller")
    child = reseller.organisations.create_child(parent.id, name="Customer")
    assert child.parent_id == parent.id
    assert [o.id for o in reseller.organisations.list_children(parent.id).items] == [child.id]
    standard = reseller.organisations.create(name="Plain")
    with pytest.raises(ConflictError):
        reseller.organisations.create_child(standard.id, name="Nope")


def test_project_and_quota_round_trip(new_user):
    c = new_user()
    me = c.auth.me()
    default = c.projects.get(me.default_project_id)
    assert default.is_default
    org = c.organisations.create(name="Projects Inc")
    project = c.projects.create(name="web", description="the site", organisation_id=org.id)
    assert project.organisation_id == org.id and not project.is_default
    assert c.projects.update(project.id, description="the new site").description == "the new site"
    assert [p.id for p in c.projects.list(organisation_id=org.id).items] == [project.id]
    assert c.projects.list().pagination.total == 2

    quota = c.projects.get_quotas(project.id)
    assert quota.project_id == project.id and quota.limits.vcpus is not None
    memory = quota.limits.memory_gb
    changed = c.projects.set_quotas(project.id, vcpus=8, instances=None)
    assert changed.limits.vcpus == 8 and changed.limits.instances is None
    assert changed.limits.memory_gb == memory  # left out: kept
    assert c.projects.set_quotas(project.id, containers=NOT_GIVEN).limits.vcpus == 8

    c.projects.delete(project.id)
    with pytest.raises(NotFoundError):
        c.projects.get(project.id)


# --- API keys -------------------------------------------------------------------------
def test_api_key_round_trip_and_authenticating_with_it(live_server, new_user):
    c = new_user()
    created = c.api_keys.create(name="ci", scopes=["org:read", "account:read"], expires_in_days=30)
    assert created.key.startswith("nfs_") and created.prefix and created.expires_at is not None
    assert c.api_keys.get(created.id).name == "ci"
    assert [k.id for k in c.api_keys.list().items] == [created.id]

    rec = Recorder()
    with Client(live_server.url, api_key=created.key, transport=rec) as keyed:
        assert keyed.auth.me().id == c.auth.me().id
        assert keyed.projects.list().pagination.total == 1
        with pytest.raises(PermissionDeniedError) as info:
            keyed.organisations.create(name="Not with this scope")
        assert info.value.code == "FORBIDDEN" and info.value.status_code == 403
        assert c.api_keys.revoke(created.id).revoked_at is not None
        with pytest.raises(AuthenticationError) as info2:
            keyed.auth.me()
        assert info2.value.reason == "invalid_api_key"
    assert all("/auth/" not in p or p.startswith("GET /auth/me") for p in rec.paths())
    assert keyed.tokens is None


# --- errors ---------------------------------------------------------------------------
def test_missing_object_raises_not_found_with_the_wire_code(new_user):
    c = new_user()
    with pytest.raises(NotFoundError) as info:
        c.organisations.get("no-such-org")
    err = info.value
    assert err.status_code == 404 and err.code == "NOT_FOUND"
    assert err.message and err.request_id
    assert isinstance(err, NefosAPIError)


def test_another_tenants_project_is_not_found(new_user):
    alice, bob = new_user(), new_user()
    with pytest.raises(NotFoundError):
        bob.projects.get(alice.auth.me().default_project_id)


def test_invalid_input_raises_validation_error_with_field_details(new_user):
    c = new_user()
    with pytest.raises(ValidationError) as info:
        c.organisations.create(name="Bad", slug="Not A Slug")
    assert info.value.status_code == 422 and "slug" in info.value.details


def test_duplicate_slug_raises_conflict(new_user):
    c = new_user()
    slug = f"dup-{uuid.uuid4().hex[:8]}"
    c.organisations.create(name="One", slug=slug)
    with pytest.raises(ConflictError) as info:
        c.organisations.create(name="Two", slug=slug)
    assert info.value.code == "CONFLICT"


def test_unreachable_server_raises_transport_error_from_httpx():
    with Client(f"http://127.0.0.1:{free_port()}", timeout=5) as c:
        with pytest.raises(TransportError) as info:
            c.auth.me()
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_rate_limited_error_carries_retry_after():
    # Failure injection: a 429 is hard to provoke on purpose without side effects.
    def handler(request: httpx.Request) -> httpx.Response:
        body = {
            "success": False,
            "data": None,
            "error": {"code": "RATE_LIMITED", "message": "Too many requests", "details": {}},
            "timestamp": "2026-01-10T10:30:00Z",
        }
        return httpx.Response(429, json=body, headers={"Retry-After": "17", "X-Request-ID": "r1"})

    with Client("http://nefos.test", api_key="nfs_x", transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(RateLimitedError) as info:
            c.projects.list()
    assert info.value.retry_after == 17 and info.value.request_id == "r1"


def test_a_body_that_is_not_an_envelope_still_maps_by_status():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>Bad gateway</html>")

    with Client("http://nefos.test", transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(InternalServerError) as info:
            c.auth.me()
    assert info.value.status_code == 502 and info.value.code == "HTTP_502"


# --- administration -------------------------------------------------------------------
def test_admin_manages_users(live_server, admin_client, new_user):
    email = unique_email("made")
    made = admin_client.admin.create_user(email=email, password=PASSWORD, name="Made")
    assert made.email == email and not made.is_admin
    assert admin_client.admin.get_user(made.id).name == "Made"
    assert admin_client.admin.list_users(limit=500).pagination.total >= 2
    with Client(live_server.url, email=email, password=PASSWORD) as user:
        assert user.auth.me().id == made.id
        assert admin_client.admin.update_user(made.id, is_active=False).is_active is False
        with pytest.raises(AuthenticationError):
            user.auth.me()
    assert admin_client.admin.update_user(made.id, is_active=True).is_active
    with Client(live_server.url, email=email, password=PASSWORD) as user:
        assert user.auth.me().is_active

    with pytest.raises(PermissionDeniedError):
        new_user().admin.list_users()
