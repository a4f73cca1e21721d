"""Error bodies: the envelope with a code, a message and ``detail``; no stack traces."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import ProgrammingError

from nefos.api.app import create_app
from nefos.domain.errors import Forbidden
from tests.security.conftest import API

SECRET = "s3cr3t-internal-detail-4242"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
LEAKS = ("Traceback", 'File "', ".py", "RuntimeError", "ProgrammingError", "SELECT", SECRET)


def _assert_error_envelope(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["success"] is False
    assert body["data"] is None
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    assert body["detail"] == body["error"]["message"]
    assert TIMESTAMP.match(body["timestamp"])
    for leak in ("Traceback", 'File "'):
        assert leak not in r.text
    return dict(body)


async def test_401_uses_the_envelope(client: Any) -> None:
    r = await client.get(f"{API}/auth/me")
    _assert_error_envelope(r, 401, "UNAUTHORIZED")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = await client.get(f"{API}/auth/me", headers={"Authorization": "Bearer nonsense"})
    _assert_error_envelope(r, 401, "UNAUTHORIZED")


async def test_403_uses_the_envelope(client: Any, register: Any) -> None:
    acct = await register()
    r = await client.get(f"{API}/admin/users", headers=acct.headers)
    _assert_error_envelope(r, 403, "FORBIDDEN")


async def test_404_uses_the_envelope(client: Any, register: Any) -> None:
    acct = await register()
    r = await client.get(f"{API}/organisations/no-such-org", headers=acct.headers)
    _assert_error_envelope(r, 404, "NOT_FOUND")
    r = await client.get(f"{API}/no/such/route", headers=acct.headers)
    _assert_error_envelope(r, 404, "NOT_FOUND")


async def test_another_tenants_object_is_a_plain_404(client: Any, register: Any) -> None:
    owner = await register()
    stranger = await register()
    r = await client.post(f"{API}/organisations", json={"name": "Private"}, headers=owner.headers)
    org_id = r.json()["data"]["id"]
    theirs = await client.get(f"{API}/organisations/{org_id}", headers=stranger.headers)
    missing = await client.get(f"{API}/organisations/no-such-org", headers=stranger.headers)
    a = _assert_error_envelope(theirs, 404, "NOT_FOUND")
    b = _assert_error_envelope(missing, 404, "NOT_FOUND")
    assert a["error"]["message"] == b["error"]["message"]
    assert "Private" not in theirs.text


async def test_422_uses_the_envelope_and_names_the_field(client: Any) -> None:
    r = await client.post(
        f"{API}/auth/register", json={"email": "not-an-email", "password": "long-enough-pw"}
    )
    body = _assert_error_envelope(r, 422, "VALIDATION_ERROR")
    assert "email" in body["error"]["details"]
    r = await client.post(f"{API}/auth/login", json={"password": "x", "unexpected": 1})
    _assert_error_envelope(r, 422, "VALIDATION_ERROR")


async def test_malformed_json_uses_the_envelope(client: Any) -> None:
    r = await client.post(
        f"{API}/auth/login", content=b'{"email": ', headers={"Content-Type": "application/json"}
    )
    _assert_error_envelope(r, 400, "VALIDATION_ERROR")


# --- 500s ---------------------------------------------------------------------------
@pytest.fixture
async def crashing_client(tmp_path: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A throwaway Nefos app with routes that fail in the ways real code can."""
    from tests.conftest import make_settings

    app = create_app(make_settings(f"sqlite:///{tmp_path / 'unused.db'}", tmp_path))

    async def boom() -> None:
        raise RuntimeError(f"database password is {SECRET}")

    async def boom_db() -> None:
        raise ProgrammingError(
            f"SELECT password_hash FROM users WHERE note = '{SECRET}'",
            {},
            Exception(f"syntax error near {SECRET}"),
        )

    async def boom_key() -> None:
        raise KeyError(SECRET)

    async def forbidden() -> None:
        raise Forbidden("Nope")

    for path, endpoint in (
        ("/boom", boom),
        ("/boom-db", boom_db),
        ("/boom-key", boom_key),
        ("/forbidden", forbidden),
    ):
        app.add_api_route(f"{API}{path}", endpoint, methods=["GET"])
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://nefos.test") as c:
        yield c


@pytest.mark.parametrize("path", ["/boom", "/boom-db", "/boom-key"])
async def test_500_has_no_stack_trace_and_names_the_request_id(
    crashing_client: httpx.AsyncClient, path: str, caplog: Any
) -> None:
    r = await crashing_client.get(f"{API}{path}")
    body = _assert_error_envelope(r, 500, "INTERNAL_ERROR")
    for leak in LEAKS:
        assert leak not in r.text, leak
    rid = body["error"]["details"]["request_id"]
    assert rid
    assert r.headers["X-Request-ID"] == rid
    # The cause is kept for the operators, in the log.
    assert SECRET in caplog.text


async def test_500_echoes_a_sane_client_request_id(crashing_client: httpx.AsyncClient) -> None:
    r = await crashing_client.get(f"{API}/boom", headers={"X-Request-ID": "trace-abc.123"})
    body = _assert_error_envelope(r, 500, "INTERNAL_ERROR")
    assert body["error"]["details"]["request_id"] == "trace-abc.123"
    assert r.headers["X-Request-ID"] == "trace-abc.123"


async def test_500_replaces_an_unsafe_client_request_id(
    crashing_client: httpx.AsyncClient,
) -> None:
    r = await crashing_client.get(f"{API}/boom", headers={"X-Request-ID": "<script>x</script>"})
    body = _assert_error_envelope(r, 500, "INTERNAL_ERROR")
    rid = body["error"]["details"]["request_id"]
    assert rid and "<" not in rid
    assert r.headers["X-Request-ID"] == rid


async def test_the_throwaway_app_answers_domain_errors_normally(
    crashing_client: httpx.AsyncClient,
) -> None:
    """The control: only unexpected failures become 500s."""
    r = await crashing_client.get(f"{API}/forbidden")
    body = _assert_error_envelope(r, 403, "FORBIDDEN")
    assert body["error"]["message"] == "Nope"
    assert r.headers["X-Request-ID"]


async def test_malformed_json_names_the_line_and_column(client: Any) -> None:
    raw = '{"email": "a@example.com",\n    "password" "x"}'
    r = await client.post(
        f"{API}/auth/login", content=raw, headers={"Content-Type": "application/json"}
    )
    body = _assert_error_envelope(r, 400, "VALIDATION_ERROR")
    assert body["error"]["details"] == {
        "body": "Invalid JSON at line 2, column 16: Expecting ':' delimiter"
    }


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_a_body_not_sent_as_json_says_how_to_send_it(
    client: Any, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = await client.post(
        f"{API}/auth/login",
        content=b'{"email": "a@example.com", "password": "x"}',
        headers=headers,
    )
    body = _assert_error_envelope(r, 422, "VALIDATION_ERROR")
    message = "Send the body as JSON with Content-Type: application/json"
    assert body["error"]["message"] == message
    assert body["error"]["details"] == {"body": message}
