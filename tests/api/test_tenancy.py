"""Organisations, resellers, members, invitations, projects and quotas."""

from __future__ import annotations

import uuid

from tests.conftest import join_org

V1 = "/api/v1"


async def _accept(client, who, token):
    r = await client.post(f"{V1}/invitations/accept", json={"token": token}, headers=who.headers)
    assert r.status_code == 200, r.text
    return r.json()["data"]


async def _org(client, acct, **body):
    r = await client.post(
        f"{V1}/organisations", json={"name": "Acme", **body}, headers=acct.headers
    )
    assert r.status_code == 201, r.text
    return r.json()["data"]


async def test_registration_makes_a_personal_org_and_default_project(client, register):
    acct = await register(name="Jane")
    orgs = (await client.get(f"{V1}/organisations", headers=acct.headers)).json()["data"]
    assert orgs["pagination"]["total"] == 1
    org = orgs["items"][0]
    assert org["is_personal"] and org["role"] == "owner"
    projects = (await client.get(f"{V1}/projects", headers=acct.headers)).json()["data"]["items"]
    assert [p["id"] for p in projects] == [acct.project_id]
    assert projects[0]["is_default"] and projects[0]["organisation_id"] == org["id"]


async def test_organisation_crud(client, register):
    acct = await register()
    org = await _org(client, acct, slug="acme-ltd", description="widgets")
    assert org["slug"] == "acme-ltd" and org["kind"] == "standard" and org["role"] == "owner"
    r = await client.put(
        f"{V1}/organisations/{org['id']}", json={"name": "Acme Ltd"}, headers=acct.headers
    )
    assert r.status_code == 200 and r.json()["data"]["name"] == "Acme Ltd"
    again = await client.post(
        f"{V1}/organisations", json={"name": "X", "slug": "acme-ltd"}, headers=acct.headers
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "CONFLICT"
    r = await client.delete(f"{V1}/organisations/{org['id']}", headers=acct.headers)
    assert r.status_code == 200
    r = await client.get(f"{V1}/organisations/{org['id']}", headers=acct.headers)
    assert r.status_code == 404


async def test_personal_organisation_cannot_be_deleted(client, register):
    acct = await register()
    org = (await client.get(f"{V1}/organisations", headers=acct.headers)).json()["data"]["items"][0]
    r = await client.delete(f"{V1}/organisations/{org['id']}", headers=acct.headers)
    assert r.status_code == 409


async def test_reseller_creates_and_manages_child_organisations(client, register):
    reseller = await register()
    customer = await register()
    org = await _org(client, reseller, name="Hosting Co", kind="reseller")
    r = await client.post(
        f"{V1}/organisations/{org['id']}/children",
        json={"name": "Customer One", "owner_email": customer.email},
        headers=reseller.headers,
    )
    assert r.status_code == 201, r.text
    child = r.json()["data"]
    assert child["parent_id"] == org["id"]
    # The customer is invited as owner, and owns it once they accept.
    invitation = child["owner_invitation"]
    assert invitation["email"] == customer.email and invitation["role"] == "owner"
    r = await client.get(f"{V1}/organisations/{child['id']}", headers=customer.headers)
    assert r.status_code == 404
    await _accept(client, customer, invitation["token"])
    # The reseller's owner holds the same role in the child; the customer owns it.
    r = await client.get(f"{V1}/organisations/{child['id']}", headers=reseller.headers)
    assert r.status_code == 200 and r.json()["data"]["role"] == "owner"
    r = await client.get(f"{V1}/organisations/{child['id']}", headers=customer.headers)
    assert r.json()["data"]["role"] == "owner"
    # ...but the customer cannot see the reseller.
    r = await client.get(f"{V1}/organisations/{org['id']}", headers=customer.headers)
    assert r.status_code == 404
    kids = (
        await client.get(f"{V1}/organisations/{org['id']}/children", headers=reseller.headers)
    ).json()["data"]
    assert [c["id"] for c in kids["items"]] == [child["id"]]
    # The child got a default project the reseller can manage.
    projects = (
        await client.get(
            f"{V1}/projects", params={"organisation_id": child["id"]}, headers=reseller.headers
        )
    ).json()["data"]["items"]
    assert len(projects) == 1
    r = await client.put(
        f"{V1}/projects/{projects[0]['id']}/quotas", json={"vcpus": 4}, headers=reseller.headers
    )
    assert r.status_code == 200
    # A reseller with children cannot be deleted first.
    r = await client.delete(f"{V1}/organisations/{org['id']}", headers=reseller.headers)
    assert r.status_code == 409


async def test_only_resellers_create_children(client, register):
    acct = await register()
    org = await _org(client, acct)
    r = await client.post(
        f"{V1}/organisations/{org['id']}/children", json={"name": "Kid"}, headers=acct.headers
    )
    assert r.status_code == 409


async def test_member_roles_and_last_owner(client, register):
    owner, alice, bob = await register(), await register(), await register()
    org = await _org(client, owner)
    base = f"{V1}/organisations/{org['id']}/members"
    r = await client.post(base, json={"email": alice.email, "role": "admin"}, headers=owner.headers)
    assert r.status_code == 202 and r.json()["data"]["role"] == "admin"
    await _accept(client, alice, r.json()["data"]["token"])
    # An admin may add members but may not make owners.
    r = await client.post(base, json={"email": bob.email, "role": "owner"}, headers=alice.headers)
    assert r.status_code == 403
    r = await client.post(base, json={"email": bob.email, "role": "viewer"}, headers=alice.headers)
    assert r.status_code == 202
    await _accept(client, bob, r.json()["data"]["token"])
    r = await client.post(base, json={"email": bob.email}, headers=alice.headers)
    assert r.status_code == 409
    # A viewer reads but cannot manage.
    assert (await client.get(base, headers=bob.headers)).json()["data"]["pagination"]["total"] == 3
    r = await client.put(f"{base}/{alice.id}", json={"role": "viewer"}, headers=bob.headers)
    assert r.status_code == 403
    # The last owner can neither leave nor be demoted.
    r = await client.put(f"{base}/{owner.id}", json={"role": "admin"}, headers=owner.headers)
    assert r.status_code == 409
    r = await client.delete(f"{base}/{owner.id}", headers=owner.headers)
    assert r.status_code == 409
    r = await client.delete(f"{base}/{bob.id}", headers=alice.headers)
    assert r.status_code == 200
    assert (
        await client.get(f"{V1}/organisations/{org['id']}", headers=bob.headers)
    ).status_code == 404


async def test_invitation_flow(client, register):
    owner = await register()
    org = await _org(client, owner)
    email = f"invitee-{uuid.uuid4().hex[:6]}@example.com"
    r = await client.post(
        f"{V1}/organisations/{org['id']}/invitations",
        json={"email": email, "role": "member"},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    token = r.json()["data"]["token"]
    listed = (
        await client.get(f"{V1}/organisations/{org['id']}/invitations", headers=owner.headers)
    ).json()["data"]["items"]
    assert len(listed) == 1 and "token" not in listed[0]

    stranger = await register()
    r = await client.post(
        f"{V1}/invitations/accept", json={"token": token}, headers=stranger.headers
    )
    assert r.status_code == 404

    invitee = await register(email=email)
    mine = (await client.get(f"{V1}/invitations", headers=invitee.headers)).json()["data"]["items"]
    assert [i["organisation_id"] for i in mine] == [org["id"]]
    r = await client.post(
        f"{V1}/invitations/accept", json={"token": token}, headers=invitee.headers
    )
    assert r.status_code == 200 and r.json()["data"]["role"] == "member"
    r = await client.post(
        f"{V1}/invitations/accept", json={"token": token}, headers=invitee.headers
    )
    assert r.status_code == 404


async def test_projects_and_quotas(client, register):
    acct = await register()
    org = await _org(client, acct)
    r = await client.post(
        f"{V1}/projects", json={"name": "web", "organisation_id": org["id"]}, headers=acct.headers
    )
    assert r.status_code == 201
    project = r.json()["data"]
    # Without an organisation, the project goes where the default project is.
    r = await client.post(f"{V1}/projects", json={"name": "scratch"}, headers=acct.headers)
    assert r.status_code == 201
    assert r.json()["data"]["organisation_id"] != org["id"]
    r = await client.post(
        f"{V1}/projects", json={"name": "web", "organisation_id": org["id"]}, headers=acct.headers
    )
    assert r.status_code == 409

    q = (await client.get(f"{V1}/projects/{project['id']}/quotas", headers=acct.headers)).json()
    assert q["data"]["limits"]["instances"] == 20
    r = await client.put(
        f"{V1}/projects/{project['id']}/quotas",
        json={"vcpus": 8, "memory_gb": None},
        headers=acct.headers,
    )
    limits = r.json()["data"]["limits"]
    assert limits["vcpus"] == 8 and limits["memory_gb"] is None and limits["instances"] == 20
    r = await client.put(
        f"{V1}/projects/{project['id']}/quotas", json={"vcpus": -1}, headers=acct.headers
    )
    assert r.status_code == 422

    r = await client.put(
        f"{V1}/projects/{project['id']}", json={"description": "site"}, headers=acct.headers
    )
    assert r.json()["data"]["description"] == "site"
    assert (
        await client.delete(f"{V1}/projects/{project['id']}", headers=acct.headers)
    ).status_code == 200
    assert (
        await client.get(f"{V1}/projects/{project['id']}", headers=acct.headers)
    ).status_code == 404
    r = await client.delete(f"{V1}/projects/{acct.project_id}", headers=acct.headers)
    assert r.status_code == 409


async def test_seed_001_project_aliases_are_deprecated_but_work(client, register):
    acct = await register()
    r = await client.get(f"{V1}/project/", headers=acct.headers)
    assert r.status_code == 200 and r.headers["deprecation"] == "true" and "sunset" in r.headers
    r = await client.post(f"{V1}/project/", json={"name": "legacy"}, headers=acct.headers)
    assert r.status_code == 201 and r.headers["deprecation"] == "true"


async def test_listed_roles_are_each_organisations_own(client, register):
    owner, staff = await register(), await register()
    reseller = await _org(client, owner, name="Hosting Co", kind="reseller")
    base = f"{V1}/organisations"
    await join_org(client, reseller["id"], owner.headers, staff, "viewer")
    made = []
    for name in ("Customer A", "Customer B"):
        r = await client.post(
            f"{base}/{reseller['id']}/children", json={"name": name}, headers=owner.headers
        )
        made.append(r.json()["data"])
    # A direct role in one child beats the role inherited from the reseller.
    await join_org(client, made[0]["id"], owner.headers, staff, "admin")
    kids = (await client.get(f"{base}/{reseller['id']}/children", headers=staff.headers)).json()[
        "data"
    ]["items"]
    assert {k["name"]: k["role"] for k in kids} == {"Customer A": "admin", "Customer B": "viewer"}
    listed = (await client.get(base, headers=staff.headers)).json()["data"]["items"]
    roles = {o["name"]: o["role"] for o in listed}
    assert roles["Hosting Co"] == "viewer" and roles["Customer A"] == "admin"
    assert roles["Customer B"] == "viewer"


async def test_adding_a_member_invites_and_tells_nothing_of_accounts(client, register):
    """Issue 14: adding someone by e-mail is an invitation they accept; the answer is
    the same whether or not the address has an account (no user id, name or username),
    and nobody is a member before accepting."""
    owner, bob = await register(), await register(name="Bob Example")
    org = await _org(client, owner)
    base = f"{V1}/organisations/{org['id']}/members"
    nobody = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    known = await client.post(base, json={"email": bob.email}, headers=owner.headers)
    unknown = await client.post(base, json={"email": nobody}, headers=owner.headers)
    assert known.status_code == unknown.status_code == 202, (known.text, unknown.text)
    a, b = known.json()["data"], unknown.json()["data"]
    assert set(a) == set(b), (a, b)
    assert not {"user_id", "name", "username"} & set(a)
    assert bob.id not in known.text and "Bob Example" not in known.text
    assert a["email"] == bob.email and a["role"] == "member" and a["accepted_at"] is None
    # Not a member yet: the organisation is invisible to Bob, and not in the list.
    assert (
        await client.get(f"{V1}/organisations/{org['id']}", headers=bob.headers)
    ).status_code == 404
    members = (await client.get(base, headers=owner.headers)).json()["data"]["items"]
    assert [m["user_id"] for m in members] == [owner.id]
    # Bob sees the invitation and accepts it: now he is a member.
    mine = (await client.get(f"{V1}/invitations", headers=bob.headers)).json()["data"]["items"]
    assert [i["id"] for i in mine] == [a["id"]]
    joined = await _accept(client, bob, a["token"])
    assert joined["id"] == org["id"] and joined["role"] == "member"
    members = (await client.get(base, headers=owner.headers)).json()["data"]["items"]
    assert {m["user_id"] for m in members} == {owner.id, bob.id}
    # Adding by user id (which skipped consent) is refused with a clear message.
    r = await client.post(base, json={"user_id": bob.id}, headers=owner.headers)
    assert r.status_code == 422 and "invited by e-mail" in r.text, r.text


async def test_a_child_organisations_owner_is_invited_whether_or_not_they_exist(client, register):
    reseller, customer = await register(), await register()
    org = await _org(client, reseller, name="Hosting Co", kind="reseller")
    path = f"{V1}/organisations/{org['id']}/children"
    nobody = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    known = await client.post(
        path, json={"name": "Cust K", "owner_email": customer.email}, headers=reseller.headers
    )
    unknown = await client.post(
        path, json={"name": "Cust U", "owner_email": nobody}, headers=reseller.headers
    )
    assert known.status_code == unknown.status_code == 201, (known.text, unknown.text)
    k, u = known.json()["data"]["owner_invitation"], unknown.json()["data"]["owner_invitation"]
    assert set(k) == set(u) and k["role"] == u["role"] == "owner"
    assert customer.id not in known.text
    child = known.json()["data"]["id"]
    # The customer owns nothing until they accept.
    assert (
        await client.get(f"{V1}/organisations/{child}", headers=customer.headers)
    ).status_code == 404
    members = (
        await client.get(f"{V1}/organisations/{child}/members", headers=reseller.headers)
    ).json()["data"]["items"]
    assert members == []
    assert (await _accept(client, customer, k["token"]))["role"] == "owner"
