"""Property-based tests of the whole API against its own OpenAPI schema.

Schemathesis generates requests, valid and invalid, for every operation of the
OpenAPI document and sends them over HTTP to a live server (uvicorn on a real
socket, one per database backend) as a registered user, and under ``/admin`` and
``/resources`` as the platform admin. The operations with ids in their path run a
second time with the ids of the caller's real objects (a reseller organisation, a
project, a member, an invitation, an API key, a container and its operation, a
host), so that the handlers behind the access check see the generated bodies too.
The server's one live host is the test Podman; the containers made on it name an
image it lacks, so their operations fail at once and nothing runs in the engine.
Every answer must be

* not a server error (no 5xx),
* documented: its status code, content type and body match the schema.

``NEFOS_FUZZ_EXAMPLES`` (default 20) sets the examples per operation; raise it
for a deeper local run. The tests at the end pin the bugs the fuzzing found.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from nefos.api.app import create_app
from tests.conftest import (
    ADMIN_PASSWORD,
    PASSWORD,
    LiveServer,
    docker_host_uri,
    make_settings,
)

CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
EXAMPLES = int(os.environ.get("NEFOS_FUZZ_EXAMPLES", "20"))
ADMIN_PATHS = ("/api/v1/admin/", "/api/v1/resources/")
NO_IMAGE = "localhost/nefos-fuzz:absent"
DEAD_ENGINE = "unix:///nonexistent/nefos-fuzz.sock"


def _app_openapi() -> dict[str, Any]:
    # Building the app reads no database: only the lifespan would.
    tmp = Path(tempfile.gettempdir())
    return create_app(make_settings("sqlite:///unused.db", tmp)).openapi()


# The schema is the app's own, loaded at collection so that each operation is a test
# of its own. (schemathesis.pytest.from_fixture, which would load it from the live
# server, does not run under pytest 9: it sets `Item._nodeid`, which pytest dropped.)
# test_the_fuzzed_schema_is_the_served_one checks that the two are the same.
OPENAPI = _app_openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


def register(base: str) -> tuple[str, dict[str, str]]:
    """A new user of the live server: their id and the headers of their session."""
    r = httpx.post(
        f"{base}/api/v1/auth/register",
        json={"email": f"fuzz-{uuid.uuid4().hex[:10]}@example.com", "password": PASSWORD},
    )
    assert r.status_code == 201, r.text
    return r.json()["data"]["user"]["id"], {"Authorization": f"Bearer {r.json()['access_token']}"}


class Caller:
    """A user of the live server."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        self.http = httpx.Client(base_url=base + "/api/v1", headers=headers, timeout=30)
        self.headers = headers

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.http.request(method, path, **kwargs)
        assert r.is_success, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()["data"]

    def finished(self, op: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while True:
            data: dict[str, Any] = self.call("GET", op["url"].removeprefix("/api/v1"))
            if data["status"] not in ("pending", "running"):
                return data
            assert time.monotonic() < deadline, f"operation did not end: {data}"
            time.sleep(0.05)


@dataclass
class Callers:
    server: LiveServer
    user: Caller
    admin: Caller
    ids: dict[str, str] = field(default_factory=dict)  # the user's real objects
    victim_id: str = ""  # a user for the admin routes to act on
    # Where new containers go: a project no fuzzed request names (the fuzzing may
    # unset the default project and set the quotas of ids["project_id"] to 0).
    compute_project_id: str = ""

    def new(self, name: str) -> str:
        """A fresh object for a DELETE to consume."""
        user, org = self.user, self.ids["org_id"]
        if name == "org_id":
            return str(user.call("POST", "/organisations", json={"name": "Doomed"})["id"])
        if name == "project_id":
            return str(
                user.call(
                    "POST",
                    "/projects",
                    json={"name": f"doomed-{uuid.uuid4().hex[:8]}", "organisation_id": org},
                )["id"]
            )
        if name == "user_id":
            member_id, _ = register(self.server.url)
            user.call("POST", f"/organisations/{org}/members", json={"user_id": member_id})
            return member_id
        if name in ("container_id", "operation_id"):
            made = user.call(
                "POST",
                "/containers",
                json={
                    "name": f"doomed-{uuid.uuid4().hex[:8]}",
                    "image": NO_IMAGE,
                    "resources": {"cpu": "0.05", "memory": "8m"},
                    "project_id": self.compute_project_id,
                },
            )
            if name == "operation_id":
                return str(made["operation"]["id"])  # pending, or just claimed
            user.finished(made["operation"])  # no write waits on it then
            return str(made["container_id"])
        if name == "host_id":
            return str(
                self.admin.call(
                    "POST",
                    "/resources/hosts",
                    json={"hostname": f"doomed-{uuid.uuid4().hex[:8]}", "uri": DEAD_ENGINE},
                )["id"]
            )
        if name == "invitation_id":
            return str(
                user.call(
                    "POST",
                    f"/organisations/{org}/invitations",
                    json={"email": f"doomed-{uuid.uuid4().hex[:8]}@example.com"},
                )["id"]
            )
        assert name == "key_id", name
        return str(user.call("POST", "/api-keys", json={"name": "doomed", "scopes": ["*"]})["id"])

    def real_ids(self, case: schemathesis.Case) -> dict[str, str]:
        if case.operation.path.startswith("/api/v1/admin/"):
            return {"user_id": self.victim_id}
        if case.operation.path.startswith("/api/v1/resources/"):
            consumed = case.method.upper() == "DELETE"
            return {"host_id": self.new("host_id") if consumed else self.ids["host_id"]}
        if case.method.upper() == "DELETE":
            # The deepest id is the one consumed; the others stay the shared ones.
            *keep, consumed = list(case.path_parameters)
            return {**{k: self.ids[k] for k in keep}, consumed: self.new(consumed)}
        return {k: self.ids[k] for k in case.path_parameters}


@pytest.fixture(scope="session")
def callers(fuzz_server: LiveServer) -> Iterator[Callers]:
    base = fuzz_server.url
    r = httpx.post(
        f"{base}/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    )
    assert r.status_code == 200, r.text
    admin = Caller(base, {"Authorization": f"Bearer {r.json()['access_token']}"})
    user = Caller(base, register(base)[1])
    c = Callers(fuzz_server, user, admin, victim_id=register(base)[0])
    org = user.call("POST", "/organisations", json={"name": "Fuzz Reseller", "kind": "reseller"})
    c.ids["org_id"] = org["id"]
    for name in ("user_id", "project_id", "invitation_id", "key_id"):
        c.ids[name] = c.new(name)
    c.compute_project_id = c.new("project_id")
    # No quota: fuzzed scales of the shared container may take dozens of replicas.
    unlimited = {"containers": None, "vcpus": None, "memory_gb": None}
    user.call("PUT", f"/projects/{c.compute_project_id}/quotas", json=unlimited)
    host = admin.call(
        "POST", "/resources/hosts", json={"hostname": "podman", "uri": docker_host_uri()}
    )
    assert host["status"] == "active", host
    c.ids["host_id"] = host["id"]
    c.ids["container_id"] = c.new("container_id")
    c.ids["operation_id"] = user.call(
        "GET", "/operations", params={"resource_id": c.ids["container_id"]}
    )["items"][0]["id"]
    yield c
    user.http.close()
    admin.http.close()


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def call_and_validate(case: schemathesis.Case, callers: Callers) -> None:
    path = case.operation.path
    if path.startswith(ADMIN_PATHS):
        headers = callers.admin.headers
    elif path == "/api/v1/auth/logout":  # it ends the session it is called with
        headers = register(callers.server.url)[1]
    else:
        headers = callers.user.headers
    case.call_and_validate(base_url=callers.server.url, headers=headers, checks=CHECKS)


@schema.parametrize()
@FUZZ
def test_api_conforms_to_its_schema(case: schemathesis.Case, callers: Callers) -> None:
    call_and_validate(case, callers)


@schema.include(path_regex=r"\{").parametrize()
@FUZZ
def test_api_conforms_to_its_schema_on_real_objects(
    case: schemathesis.Case, callers: Callers
) -> None:
    """The same, with the path naming the caller's own objects: generated ids reach
    only the access check (404), these reach the handlers behind it."""
    case.path_parameters = callers.real_ids(case)
    call_and_validate(case, callers)


def test_the_fuzzed_schema_is_the_served_one(fuzz_server: LiveServer) -> None:
    assert httpx.get(f"{fuzz_server.url}/openapi.json").json() == OPENAPI


# --- bugs the fuzzing found, pinned ----------------------------------------------------
async def test_token_form_with_a_nul_byte_is_a_422_not_a_500(client: httpx.AsyncClient):
    r = await client.post("/api/v1/auth/token", data={"username": "a\x00", "password": "b"})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize(
    "path",
    ["/organisations/%00", "/organisations/%00/members", "/projects/%00", "/projects/a%0A/quotas"],
)
async def test_a_malformed_id_in_the_path_is_a_422(client, register, path: str) -> None:
    # The access check reads the id before FastAPI validates the path; a NUL byte
    # used to reach PostgreSQL (500).
    acct = await register()
    r = await client.get("/api/v1" + path, headers=acct.headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_an_email_too_long_once_lowercased_is_a_422(client, register) -> None:
    # "İ".lower() is two characters: 320 of them were let through, and PostgreSQL's
    # varchar(320) refused the lowered address (500).
    email = "İ" * 150 + "@" + "a" * 165 + ".com"
    assert len(email) == 320 and len(email.lower()) > 320
    r = await client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 422
    acct = await register()
    r = await client.put(
        "/api/v1/users/profile",
        headers=acct.headers,
        json={"email": email, "current_password": PASSWORD},
    )
    assert r.status_code == 422
