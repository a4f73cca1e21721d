"""`nefos marketplace ...`: find APIs (no account needed), publish yours and invite
organisations to the private ones, subscribe to others' and manage your
subscriptions' keys; review what you have used, and reply to the reviews of yours."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from nefos.cli._common import (
    Column,
    JsonOpt,
    LimitOpt,
    PageOpt,
    api,
    echo_json,
    listing,
    stderr,
    stdout,
)
from nefos.schemas.marketplace import (
    MAX_OVERLAP_SECONDS,
    ApiSubscriptionPublic,
    ListingInvitationPublic,
    ListingPublic,
    PlanPublic,
    Rating,
    ReviewPublic,
    SubscriptionKeyCreated,
)

app = typer.Typer(
    no_args_is_help=True,
    help="The marketplace: find APIs, publish yours, subscribe, manage your keys, review.",
)

ListingArg = Annotated[str, typer.Argument(help="Listing id.", show_default=False)]
PlanOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--plan",
        help='A plan as JSON: \'{"name":"Basic","model":"freemium","included_calls":1000,'
        '"price_per_call":"0.001"}\' (repeat for more).',
        show_default=False,
    ),
]


def _price(p: PlanPublic) -> str:
    if p.model == "free":
        return "free" + (f", {p.included_calls:,} calls/month" if p.included_calls else "")
    if p.model == "pay_per_use":
        return f"{p.price_per_call} {p.currency}/call"
    if p.model == "freemium":
        return f"{p.included_calls:,} free, then {p.price_per_call} {p.currency}/call"
    over = f", then {p.overage_price}/call" if p.overage_price else ""
    return f"{p.monthly_price} {p.currency}/month for {p.included_calls:,}{over}"


def _models(item: ListingPublic) -> str:
    return ", ".join(item.price_models)


def stars_text(stars: int) -> str:
    return "*" * stars + "." * (5 - stars)


def rating_text(rating: Rating) -> str:
    if rating.average is None:
        return "no reviews"
    return f"{rating.average:.2f}/5 ({rating.count} review{'s' if rating.count != 1 else ''})"


LISTING_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("TITLE", "title"),
    ("CATEGORY", "category"),
    ("PRICING", _models),
    ("RATING", lambda i: rating_text(i.rating)),
    ("SLUG", "slug"),
]


def print_listing(item: ListingPublic) -> None:
    console = stdout()
    console.print(f"[bold]{escape(item.title)}[/bold] ({item.id})  {escape(item.status)}")
    if item.summary:
        console.print(escape(item.summary))
    console.print(
        f"category {escape(item.category)}  tags {escape(', '.join(item.tags) or '-')}  "
        f"gateway /gw/{escape(item.slug)}/"
    )
    console.print(f"rating {rating_text(item.rating)}")
    table = Table(title="Plans")
    for header in ("PLAN", "MODEL", "PRICE", "RATE LIMIT", "VERSION"):
        table.add_column(header)
    for p in item.plans:
        table.add_row(
            escape(p.name),
            p.model,
            escape(_price(p)),
            f"{p.rate_limit_per_minute}/min",
            str(p.version),
        )
    console.print(table)
    if item.description:
        console.print(escape(item.description))


def _plans(texts: list[str]) -> list[dict[str, Any]]:
    out = []
    for text in texts:
        try:
            plan = json.loads(text)
        except ValueError as exc:
            raise typer.BadParameter(f"{text[:40]!r}: {exc}", param_hint="--plan") from None
        if not isinstance(plan, dict):
            raise typer.BadParameter(f"{text[:40]!r}: a JSON object", param_hint="--plan")
        out.append(plan)
    return out


@app.command()
def search(
    q: Annotated[str | None, typer.Argument(help="Words to look for.")] = None,
    category: Annotated[str | None, typer.Option(help="Only this category.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only listings with this tag.")] = None,
    price_model: Annotated[
        str | None, typer.Option(help="free, pay_per_use, freemium or monthly.")
    ] = None,
    sort: Annotated[
        str | None,
        typer.Option(help="relevance, popularity, rating (best first, unrated last) or newest."),
    ] = None,
    page: PageOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find APIs on the marketplace (no login needed)."""
    with api(as_json, anonymous=True) as c:
        found = c.marketplace.search(
            q,
            category=category,
            tag=tag,
            price_model=price_model,
            sort=sort,
            page=page,
            limit=limit,
        )
    if as_json:
        echo_json(found)
        return
    listing(found.items, LISTING_COLUMNS, False, empty="No listing matches.")


@app.command()
def show(listing_id: ListingArg, as_json: JsonOpt = False) -> None:
    """A listing with its plans (no login needed for a public one)."""
    with api(as_json, anonymous=True) as c:
        found = c.marketplace.get(listing_id)
    if as_json:
        echo_json(found)
    else:
        print_listing(found)


@app.command()
def publish(
    api_id: Annotated[str, typer.Argument(help="Your API's id.", show_default=False)],
    title: Annotated[str, typer.Option(help="The listing's title.", show_default=False)],
    category: Annotated[str, typer.Option(help="e.g. weather, finance.", show_default=False)],
    plan: PlanOpt = None,
    summary: Annotated[str | None, typer.Option(help="One line.")] = None,
    description_file: Annotated[
        Path | None, typer.Option("--description-file", help="A Markdown description.")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="A tag (repeat).", show_default=False)
    ] = None,
    private: Annotated[bool, typer.Option("--private", help="Your organisation only.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List one of your APIs with its plans."""
    if not plan:
        raise typer.BadParameter("give at least one --plan", param_hint="--plan")
    description = None
    if description_file is not None:
        try:
            description = description_file.read_text()
        except OSError as exc:
            raise typer.BadParameter(str(exc), param_hint="--description-file") from None
    with api(as_json) as c:
        made = c.marketplace.publish(
            api_id,
            title=title,
            category=category,
            plans=_plans(plan),
            summary=summary,
            description=description,
            tags=tag or (),
            visibility="private" if private else None,
        )
    if as_json:
        echo_json(made)
    else:
        print_listing(made)


@app.command()
def update(
    listing_id: ListingArg,
    title: Annotated[str | None, typer.Option()] = None,
    summary: Annotated[str | None, typer.Option()] = None,
    plan: PlanOpt = None,
    unpublish: Annotated[bool, typer.Option("--unpublish", help="Take it off.")] = False,
    republish: Annotated[bool, typer.Option("--publish", help="Put it back.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Change your listing (--plan: the whole new set of plans)."""
    if unpublish and republish:
        raise typer.BadParameter("--unpublish or --publish, not both")
    status = "unpublished" if unpublish else ("published" if republish else None)
    with api(as_json) as c:
        changed = c.marketplace.update(
            listing_id,
            title=title,
            summary=summary,
            status=status,
            plans=_plans(plan) if plan else None,
        )
    if as_json:
        echo_json(changed)
    else:
        print_listing(changed)


# --- subscriptions and keys --------------------------------------------------------
SubArg = Annotated[str, typer.Argument(help="Subscription id.", show_default=False)]
OrgOpt = Annotated[
    str | None,
    typer.Option(
        "--org", help="Organisation (default: your default project's).", show_default=False
    ),
]
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

SUBSCRIPTION_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("API", "title"),
    ("PLAN", lambda s: f"{s.plan.name} ({s.plan.model})"),
    ("STATUS", "status"),
    ("PERIOD", lambda s: f"{s.period_start:%Y-%m-%d} to {s.period_end:%Y-%m-%d}"),
    ("NEXT CHARGE", lambda s: _next_charge(s)),
    ("ENDS THEN", "cancel_at_period_end"),
]
KEY_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("PREFIX", "prefix"),
    ("CREATED", "created_at"),
    ("EXPIRES", "expires_at"),
    ("REVOKED", "revoked_at"),
    ("LAST USED", "last_used_at"),
]


def seconds(text: str) -> int:
    """A duration: 90, 90s, 30m, 1h, 7d."""
    found = _DURATION.match(text.strip().lower())
    if not found:
        raise typer.BadParameter(f"{text!r}: a duration such as 90s, 30m, 1h or 7d")
    value = int(found.group(1)) * _UNIT[found.group(2)]
    if value > MAX_OVERLAP_SECONDS:
        raise typer.BadParameter(f"{text!r}: at most 7d")
    return value


def print_key(key: SubscriptionKeyCreated) -> None:
    out = stdout()
    out.print(f"Key {escape(key.name or key.prefix)} ({key.id}):")
    out.print(escape(key.key), soft_wrap=True)
    stderr().print(
        "[bold yellow]Warning:[/] this is the only time the key is shown; Nefos keeps only "
        "a hash. Call the API with it in the X-API-Key header."
    )


def _next_charge(sub: ApiSubscriptionPublic) -> str:
    """``4.00 USD on 2026-01-06`` (a monthly plan's renewal), or ``-``."""
    charge = sub.next_charge
    return "-" if charge is None else f"{charge.amount} {charge.currency} on {charge.at:%Y-%m-%d}"


def print_subscription(sub: ApiSubscriptionPublic) -> None:
    ends = " (ends then)" if sub.cancel_at_period_end else ""
    why = f" ({sub.ended_reason})" if sub.ended_reason else ""
    nxt = f"; next charge {_next_charge(sub)}" if sub.next_charge is not None else ""
    due = (
        "; [bold yellow]its renewal is unpaid: top up the wallet, or cancel[/]"
        if sub.status == "past_due"
        else ""
    )
    stdout().print(
        f"[bold]{escape(sub.title)}[/bold] ({sub.id}): plan {escape(sub.plan.name)} "
        f"({escape(_price(sub.plan))}), {sub.status}{why}; period "
        f"{sub.period_start:%Y-%m-%d %H:%M:%SZ} to "
        f"{sub.period_end:%Y-%m-%d %H:%M:%SZ}{ends}{escape(nxt)}{due}; "
        f"gateway /gw/{escape(sub.api_slug)}/"
    )


@app.command()
def subscribe(
    listing_id: ListingArg,
    plan: Annotated[str, typer.Option("--plan", help="The plan's id.", show_default=False)],
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Subscribe to a plan of a listing; prints the first key (shown once)."""
    with api(as_json) as c:
        made = c.subscriptions.subscribe(listing_id, plan, organisation_id=org)
    if as_json:
        echo_json(made)
    else:
        print_subscription(made.subscription)
        print_key(made.key)


@app.command()
def subscriptions(
    status: Annotated[
        str | None, typer.Option(help="active, past_due, cancelled or ended.")
    ] = None,
    org: OrgOpt = None,
    page: PageOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Your organisations' subscriptions, with their period and next charge."""
    with api(as_json) as c:
        found = c.subscriptions.list(status=status, organisation_id=org, page=page, limit=limit)
    if as_json:
        echo_json(found)
        return
    listing(found.items, SUBSCRIPTION_COLUMNS, False, empty="No subscription.")


@app.command()
def usage(subscription_id: SubArg, as_json: JsonOpt = False) -> None:
    """A subscription's use of its period: calls, quota left, cost, usage alerts."""
    with api(as_json) as c:
        got = c.subscriptions.usage(subscription_id)
    if as_json:
        echo_json(got)
        return
    quota = (
        f"{got.units} of {got.quota} units ({got.percent_used} %), {got.remaining} left, "
        f"in {got.calls} calls"
        if got.quota is not None
        else f"{got.calls} calls, {got.units} units (no quota)"
    )
    alerts = ", ".join(f"{t} %" for t in got.alerts) or "none"
    stdout().print(
        f"[bold]{escape(got.title)}[/bold] ({got.subscription_id}), plan "
        f"{escape(got.plan.name)}, period {got.period_start:%Y-%m-%d} to "
        f"{got.period_end:%Y-%m-%d}: {quota}; {got.errors} answered 5xx (not counted); "
        f"cost {got.amount} {got.currency} ({got.charged} charged, {got.pending} to "
        f"charge); alerts told: {alerts}"
    )


@app.command()
def keys(subscription_id: SubArg, as_json: JsonOpt = False) -> None:
    """A subscription's keys (their prefixes: keys are shown only when made)."""
    with api(as_json) as c:
        sub = c.subscriptions.get(subscription_id)
    if as_json:
        echo_json(sub)
        return
    print_subscription(sub)
    listing(sub.keys, KEY_COLUMNS, False, empty="No key.")


@app.command("key-create")
def key_create(
    subscription_id: SubArg,
    name: Annotated[str | None, typer.Option(help="A name to know it by.")] = None,
    rotate: Annotated[
        bool, typer.Option("--rotate", help="The other live keys expire after --overlap.")
    ] = False,
    overlap: Annotated[
        str | None,
        typer.Option(help="With --rotate: how long the old keys keep working (0, 30m, 1h, 7d)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """A new key for a subscription (printed once)."""
    if overlap is not None and not rotate:
        raise typer.BadParameter("--overlap goes with --rotate", param_hint="--overlap")
    overlap_seconds = seconds(overlap) if overlap is not None else None
    with api(as_json) as c:
        key = c.subscriptions.create_key(
            subscription_id, name=name, rotate=rotate or None, overlap_seconds=overlap_seconds
        )
    if as_json:
        echo_json(key)
        stderr().print("[bold yellow]Warning:[/] the key is shown only this once.")
    else:
        print_key(key)


@app.command("key-revoke")
def key_revoke(
    subscription_id: SubArg,
    key_id: Annotated[str, typer.Argument(help="Key id.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Revoke a key: it stops working at once."""
    with api(as_json) as c:
        key = c.subscriptions.revoke_key(subscription_id, key_id)
    if as_json:
        echo_json(key)
    else:
        stdout().print(f"Key {key.prefix}... ({key.id}) revoked.")


@app.command("change-plan")
def change_plan(
    subscription_id: SubArg,
    plan: Annotated[str, typer.Option("--plan", help="The new plan's id.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Move a subscription to another plan of its listing. Between plans without a
    fee the period carries over; a monthly plan starts a new period and charges its
    fee now, and leaving one credits its unused part."""
    with api(as_json) as c:
        sub = c.subscriptions.change_plan(subscription_id, plan)
    if as_json:
        echo_json(sub)
    else:
        print_subscription(sub)


@app.command()
def cancel(subscription_id: SubArg, as_json: JsonOpt = False) -> None:
    """Cancel: a free plan (or a past-due one) ends now, a paid one at its period's
    end, not renewed."""
    with api(as_json) as c:
        sub = c.subscriptions.cancel(subscription_id)
    if as_json:
        echo_json(sub)
    else:
        print_subscription(sub)


# --- invitations to private listings --------------------------------------------------
INVITATION_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("INVITEE", lambda i: i.email or i.organisation_id),
    ("ORGANISATION", "organisation_id"),
    ("STATUS", "status"),
    ("EXPIRES", lambda i: f"{i.expires_at:%Y-%m-%d %H:%M}Z" if i.status == "pending" else None),
    ("CREATED", "created_at"),
]


def print_invitation(inv: ListingInvitationPublic) -> None:
    who = f"{inv.email}" if inv.email else f"organisation {inv.organisation_id}"
    stdout().print(
        f"Invitation {inv.id} of {escape(who)} to listing {inv.listing_id}: {inv.status}"
        + (f", until {inv.expires_at:%Y-%m-%d %H:%M}Z" if inv.status == "pending" else "")
    )


@app.command()
def invite(
    listing_id: ListingArg,
    email: Annotated[
        str | None, typer.Option(help="An e-mail address (gets a token to accept).")
    ] = None,
    org: Annotated[
        str | None, typer.Option("--org", help="An organisation's id (in at once).")
    ] = None,
    days: Annotated[
        int | None, typer.Option(help="Days an e-mail invitation's token holds (7).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Invite an organisation (--org ID: it sees your private listing and may
    subscribe at once) or an e-mail address (--email: prints a token, shown once,
    for you to pass on; its holder runs `nefos marketplace accept TOKEN`)."""
    if (email is None) == (org is None):
        stderr().print("[red]Error:[/] give either --email or --org.")
        raise typer.Exit(2)
    with api(as_json) as c:
        made = c.marketplace.invite(
            listing_id, email=email, organisation_id=org, expires_in_days=days
        )
    if as_json:
        echo_json(made)
    else:
        print_invitation(made)
    if made.token:
        if not as_json:
            stdout().print(f"Token: [bold]{made.token}[/bold]")
        stderr().print(
            "[bold yellow]Warning:[/] the token is shown only this once: pass it on to "
            f"{escape(made.email or '')} (Nefos sends no mail)."
        )


@app.command()
def invitations(
    listing_id: ListingArg,
    status: Annotated[
        str | None, typer.Option(help="pending, accepted, revoked or expired.")
    ] = None,
    page: PageOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Your listing's invitations, newest first."""
    with api(as_json) as c:
        found = c.marketplace.invitations(listing_id, status=status, page=page, limit=limit)
    if as_json:
        echo_json(found)
        return
    listing(found.items, INVITATION_COLUMNS, False, empty="No invitation.")


@app.command("invite-rm")
def invite_rm(
    listing_id: ListingArg,
    invitation_id: Annotated[str, typer.Argument(help="Invitation id.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Revoke an invitation: its organisation no longer sees the listing, and its
    subscription is cancelled (a paid period runs to its end)."""
    with api(as_json) as c:
        done = c.marketplace.revoke_invitation(listing_id, invitation_id)
    if as_json:
        echo_json(done)
    else:
        print_invitation(done.invitation)
        if done.subscriptions_cancelled:
            stdout().print(f"Subscriptions cancelled: {done.subscriptions_cancelled}.")


@app.command()
def accept(
    token: Annotated[str, typer.Argument(help="The token you were given.", show_default=False)],
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Accept an invitation to a private listing, for an organisation of yours."""
    with api(as_json) as c:
        got = c.marketplace.accept_invitation(token, organisation_id=org)
    if as_json:
        echo_json(got)
        return
    print_invitation(got.invitation)
    if got.listing is not None:
        print_listing(got.listing)


# --- reviews -------------------------------------------------------------------------
ReviewArg = Annotated[str, typer.Argument(help="Review id.", show_default=False)]
REVIEW_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("STARS", lambda r: stars_text(r.stars)),
    ("REVIEW", "text"),
    ("REPLY", lambda r: r.reply.text if r.reply else None),
    ("MINE", "mine"),
    ("UPDATED", "updated_at"),
]


def print_review(review: ReviewPublic) -> None:
    out = stdout()
    out.print(f"{stars_text(review.stars)}  {escape(review.text)}  ({review.id})")
    if review.reply is not None:
        out.print(f"  reply: {escape(review.reply.text)}")


@app.command()
def reviews(
    listing_id: ListingArg,
    stars: Annotated[int | None, typer.Option(help="Only reviews of so many stars.")] = None,
    page: PageOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A listing's reviews, newest first, and its rating (no login needed)."""
    with api(as_json, anonymous=True) as c:
        found = c.marketplace.reviews(listing_id, stars=stars, page=page, limit=limit)
    if as_json:
        echo_json(found)
        return
    histogram = "  ".join(f"{n}*: {found.rating.histogram.get(str(n), 0)}" for n in range(5, 0, -1))
    stdout().print(f"Rating {rating_text(found.rating)}   {histogram}")
    listing(found.items, REVIEW_COLUMNS, False, empty="No review.")


@app.command()
def review(
    listing_id: ListingArg,
    stars: Annotated[int, typer.Option(help="1 (poor) to 5 (excellent).", show_default=False)],
    text: Annotated[str, typer.Option(help="What you found.", show_default=False)],
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Review an API you have called (again: changes your organisation's review)."""
    with api(as_json) as c:
        made = c.marketplace.review(listing_id, stars, text, organisation_id=org)
    if as_json:
        echo_json(made)
    else:
        print_review(made)


@app.command("review-rm")
def review_rm(review_id: ReviewArg, as_json: JsonOpt = False) -> None:
    """Withdraw your organisation's review."""
    with api(as_json) as c:
        done = c.marketplace.delete_review(review_id)
    if as_json:
        echo_json(done)
    else:
        stdout().print(f"Review {review_id} deleted.")


@app.command()
def reply(
    review_id: ReviewArg,
    text: Annotated[str, typer.Option(help="Your answer.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Reply to a review of your listing (once)."""
    with api(as_json) as c:
        answered = c.marketplace.reply(review_id, text)
    if as_json:
        echo_json(answered)
    else:
        print_review(answered)
