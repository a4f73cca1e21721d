"""`nefos marketplace invite|invitations|invite-rm|accept` and the SDK's
``client.marketplace.invite|invitations|revoke_invitation|accept_invitation``,
against a live server: a seller invites an organisation and an e-mail address to
its private listing, the invitee accepts, the seller revokes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nefos.schemas.compute import HostPublic
from nefos.sdk import Client
from nefos.sdk._errors import ConflictError, NotFoundError, ValidationError
from tests.cli.conftest import Cli, no_traceback, ok, register
from tests.conftest import ADMIN_PASSWORD, PASSWORD, TEST_IMAGE, LiveServer
from tests.sdk.test_compute_sdk import ensure_podman_host, unique, unregister_podman_host


@pytest.fixture(scope="module")
def podman_teardown(live_server: LiveServer) -> Iterator[None]:
    yield
    unregister_podman_host(live_server)


@pytest.fixture
def podman(live_server: LiveServer, podman_teardown: None) -> HostPublic:
    with Client(live_server.url, username="admin", password=ADMIN_PASSWORD) as admin:
        return ensure_podman_host(admin)


def test_invite_an_organisation_and_an_address_accept_and_revoke(
    cli: Cli, make_cli, user: str, podman: HostPublic
) -> None:
    # The CLI's user sells a private listing (published through the SDK).
    with Client(cli.url, email=user, password=PASSWORD) as seller:
        made = seller.apis.deploy(unique("api"), image=TEST_IMAGE, port=8080)
        listed = seller.marketplace.publish(
            made.api_id,
            title="Hidden Tides",
            category="weather",
            plans=[{"name": "Free", "model": "free"}],
            visibility="private",
        )
    guest_email, newcomer_email = register(cli.url), f"new-{unique('x')}@example.com"
    with Client(cli.url, email=guest_email, password=PASSWORD) as guest:
        guest_org = guest.organisations.list().items[0].id
        with pytest.raises(NotFoundError):
            guest.marketplace.get(listed.id)

        out = ok(cli("marketplace", "invite", listed.id, "--org", guest_org))
        assert f"organisation {guest_org}" in out and "accepted" in out
        assert guest.marketplace.get(listed.id).title == "Hidden Tides"
        # The invited may not see, make or revoke the invitations.
        with pytest.raises(NotFoundError):
            guest.marketplace.invitations(listed.id)
        with pytest.raises(NotFoundError):
            guest.marketplace.invite(listed.id, email="x@example.com")

    both = cli("marketplace", "invite", listed.id)
    assert both.exit_code == 2 and "--email or --org" in both.stderr
    no_traceback(both)
    again = cli("marketplace", "invite", listed.id, "--org", guest_org)
    assert again.exit_code == 1 and "CONFLICT" in again.stderr
    no_traceback(again)

    mailed = cli("marketplace", "invite", listed.id, "--email", newcomer_email, "--days", "3")
    out = ok(mailed)
    token = next(w for w in out.split() if w.startswith("nfl_"))
    assert "shown only this once" in mailed.stderr and "pending" in out
    table = ok(cli("marketplace", "invitations", listed.id))
    assert newcomer_email in table and guest_org in table and token not in table
    pending = cli.json("marketplace", "invitations", listed.id, "--status", "pending")
    assert [i["email"] for i in pending["items"]] == [newcomer_email]

    # The holder of the address accepts, with the CLI, for its organisation.
    newcomer = make_cli()
    newcomer.login(register(cli.url, newcomer_email))
    accepted = ok(newcomer("marketplace", "accept", token))
    assert "accepted" in accepted and "Hidden Tides" in accepted
    used = newcomer("marketplace", "accept", token)
    assert used.exit_code == 1 and "NOT_FOUND" in used.stderr
    no_traceback(used)

    # Revoking: the guest no longer sees the listing.
    invitation_id = next(
        i["id"]
        for i in cli.json("marketplace", "invitations", listed.id)["items"]
        if i["organisation_id"] == guest_org and i["email"] is None
    )
    out = ok(cli("marketplace", "invite-rm", listed.id, invitation_id))
    assert "revoked" in out
    with Client(cli.url, email=guest_email, password=PASSWORD) as guest:
        with pytest.raises(NotFoundError):
            guest.marketplace.get(listed.id)

    # The SDK's own calls, their errors typed.
    with Client(cli.url, email=user, password=PASSWORD) as seller:
        made_inv = seller.marketplace.invite(listed.id, email="sdk-guest@example.com")
        assert made_inv.token is not None and made_inv.status == "pending"
        with pytest.raises(ConflictError):
            seller.marketplace.invite(listed.id, email="sdk-guest@example.com")
        with pytest.raises(ValidationError):
            seller.marketplace.invite(listed.id)
        statuses = {i.id: i.status for i in seller.marketplace.invitations(listed.id).items}
        assert statuses[invitation_id] == "revoked" and statuses[made_inv.id] == "pending"
        gone = seller.marketplace.revoke_invitation(listed.id, made_inv.id)
        assert gone.invitation.status == "revoked" and gone.subscriptions_cancelled == 0
        with pytest.raises(NotFoundError):
            seller.marketplace.accept_invitation(made_inv.token)
        seller.operations.wait(made)
        seller.operations.wait(seller.apis.delete(made.api_id))
