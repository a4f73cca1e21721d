"""`nefos org ...`: organisations, child organisations, members and invitations."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from nefos.cli._common import (
    CursorOpt,
    JsonOpt,
    LimitOpt,
    PageOpt,
    RoleOpt,
    YesOpt,
    api,
    done,
    listing,
    show,
    stdout,
)
from nefos.schemas.tenancy import InvitationCreated

app = typer.Typer(no_args_is_help=True, help="Organisations, their members and invitations.")

OrgArg = Annotated[str, typer.Argument(help="Organisation id.", show_default=False)]
UserArg = Annotated[str, typer.Argument(help="User id.", show_default=False)]
SlugOpt = Annotated[str | None, typer.Option(help="URL name: lowercase letters, digits, '-'.")]
KindOpt = Annotated[str | None, typer.Option(help="standard (default) or reseller.")]
DescriptionOpt = Annotated[str | None, typer.Option(help="Free text.")]

ORG_COLUMNS = [
    ("ID", "id"),
    ("NAME", "name"),
    ("SLUG", "slug"),
    ("KIND", "kind"),
    ("ROLE", "role"),
]
MEMBER_COLUMNS = [
    ("USER ID", "user_id"),
    ("EMAIL", "email"),
    ("NAME", "name"),
    ("ROLE", "role"),
    ("SINCE", "created_at"),
]
INVITATION_COLUMNS = [
    ("ID", "id"),
    ("EMAIL", "email"),
    ("ROLE", "role"),
    ("EXPIRES", "expires_at"),
    ("ACCEPTED", "accepted_at"),
]
MY_INVITATION_COLUMNS = [
    ("ID", "id"),
    ("ROLE", "role"),
    ("EXPIRES", "expires_at"),
]


@app.command("list")
def list_(
    all_orgs: Annotated[
        bool, typer.Option("--all", help="Every organisation (platform admins).")
    ] = False,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List your organisations."""
    with api(as_json) as c:
        orgs = c.organisations.list(page=page, cursor=cursor, limit=limit, all_orgs=all_orgs)
    listing(orgs, ORG_COLUMNS, as_json, empty="No organisations.")


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Display name.", show_default=False)],
    slug: SlugOpt = None,
    kind: KindOpt = None,
    description: DescriptionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an organisation; you become its owner."""
    with api(as_json) as c:
        org = c.organisations.create(name=name, slug=slug, kind=kind, description=description)
    show(org, as_json)


@app.command("show")
def show_(org_id: OrgArg, as_json: JsonOpt = False) -> None:
    """Show an organisation and your role in it."""
    with api(as_json) as c:
        org = c.organisations.get(org_id)
    show(org, as_json)


@app.command()
def update(
    org_id: OrgArg,
    name: Annotated[str | None, typer.Option(help="New display name.")] = None,
    slug: SlugOpt = None,
    description: DescriptionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rename an organisation or change its slug or description."""
    if name is None and slug is None and description is None:
        raise typer.BadParameter("give one to change", param_hint="--name / --slug / --description")
    with api(as_json) as c:
        org = c.organisations.update(org_id, name=name, slug=slug, description=description)
    show(org, as_json)


@app.command()
def delete(org_id: OrgArg, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Delete an organisation with all its projects."""
    if not yes:
        typer.confirm(f"Delete organisation {org_id} and all its projects?", abort=True)
    with api(as_json) as c:
        result = c.organisations.delete(org_id)
    done(result.message, as_json, result)


@app.command()
def children(
    org_id: OrgArg,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a reseller's child organisations."""
    with api(as_json) as c:
        orgs = c.organisations.list_children(org_id, page=page, cursor=cursor, limit=limit)
    listing(orgs, ORG_COLUMNS, as_json, empty="No child organisations.")


@app.command("create-child")
def create_child(
    org_id: Annotated[str, typer.Argument(help="The reseller organisation's id.")],
    name: Annotated[str, typer.Argument(help="Display name.", show_default=False)],
    slug: SlugOpt = None,
    kind: KindOpt = None,
    description: DescriptionOpt = None,
    owner_email: Annotated[
        str | None,
        typer.Option(help="Invite this address as owner (owner once they accept)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a customer organisation under a reseller."""
    with api(as_json) as c:
        org = c.organisations.create_child(
            org_id,
            name=name,
            slug=slug,
            kind=kind,
            description=description,
            owner_email=owner_email,
        )
    show(org, as_json)
    if org.owner_invitation is not None and not as_json:
        _invited(org.owner_invitation, False)


@app.command()
def members(
    org_id: OrgArg, page: PageOpt = None, limit: LimitOpt = None, as_json: JsonOpt = False
) -> None:
    """List an organisation's members and their roles."""
    with api(as_json) as c:
        rows = c.organisations.list_members(org_id, page=page, limit=limit)
    listing(rows, MEMBER_COLUMNS, as_json)


@app.command("add-member")
def add_member(
    org_id: OrgArg,
    email: Annotated[str, typer.Option(help="The e-mail to invite.", show_default=False)],
    role: RoleOpt = "member",
    as_json: JsonOpt = False,
) -> None:
    """Invite --email to join (the same as `nefos org invite`): they become a member
    when they accept. The invitation token is shown only now: pass it on."""
    with api(as_json) as c:
        invitation = c.organisations.add_member(org_id, email=email, role=role)
    _invited(invitation, as_json)


@app.command("set-role")
def set_role(
    org_id: OrgArg,
    user_id: UserArg,
    role: Annotated[str, typer.Argument(help="owner, admin, member or viewer.")],
    as_json: JsonOpt = False,
) -> None:
    """Change a member's role."""
    with api(as_json) as c:
        member = c.organisations.update_member(org_id, user_id, role=role)
    show(member, as_json)


@app.command("remove-member")
def remove_member(org_id: OrgArg, user_id: UserArg, as_json: JsonOpt = False) -> None:
    """Remove a member from an organisation."""
    with api(as_json) as c:
        result = c.organisations.remove_member(org_id, user_id)
    done(result.message, as_json, result)


@app.command()
def invite(
    org_id: OrgArg,
    email: Annotated[str, typer.Argument(help="The address to invite.", show_default=False)],
    role: RoleOpt = "member",
    expires_in_days: Annotated[
        int | None, typer.Option(min=1, max=90, help="Days the invitation stays valid (7).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Invite an e-mail address. The invitation token is shown only now: pass it on."""
    with api(as_json) as c:
        invitation = c.organisations.invite(
            org_id, email=email, role=role, expires_in_days=expires_in_days
        )
    _invited(invitation, as_json)


def _invited(invitation: InvitationCreated, as_json: bool) -> None:
    if as_json:
        show(invitation, True)
        return
    out = stdout()
    who = escape(invitation.email)
    out.print(f"Invited {who} as {invitation.role.value} (id {invitation.id}).")
    out.print(f"Token: [bold]{escape(invitation.token)}[/]")
    out.print(
        "[yellow]This token is shown only once.[/] The invitee runs "
        "[bold]nefos org accept <token>[/]."
    )


@app.command()
def invitations(
    org_id: Annotated[
        str | None,
        typer.Argument(help="Organisation id; without it, the invitations sent to you."),
    ] = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List an organisation's invitations, or your own pending ones."""
    with api(as_json) as c:
        if org_id is None:
            mine = c.organisations.my_invitations(page=page, cursor=cursor, limit=limit)
            listing(mine, MY_INVITATION_COLUMNS, as_json, empty="No pending invitations.")
            return
        rows = c.organisations.list_invitations(org_id, page=page, cursor=cursor, limit=limit)
    listing(rows, INVITATION_COLUMNS, as_json, empty="No invitations.")


@app.command("revoke-invitation")
def revoke_invitation(
    org_id: OrgArg,
    invitation_id: Annotated[str, typer.Argument(help="Invitation id.")],
    as_json: JsonOpt = False,
) -> None:
    """Withdraw an invitation that was not accepted yet."""
    with api(as_json) as c:
        result = c.organisations.revoke_invitation(org_id, invitation_id)
    done(result.message, as_json, result)


@app.command()
def accept(
    token: Annotated[str, typer.Argument(help="The token from the invitation.")],
    as_json: JsonOpt = False,
) -> None:
    """Accept an invitation and join its organisation."""
    with api(as_json) as c:
        org = c.organisations.accept_invitation(token)
    if as_json:
        show(org, True)
    else:
        done(f"Joined {org.name} ({org.id}) as {org.role.value if org.role else '-'}.", False)
