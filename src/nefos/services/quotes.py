"""Quotes (seed 000): price a configuration before buying it, then accept it to
provision it.

Pricing uses the catalogue in force and the caller's reseller margin. Each item is
priced for a month of ``hours_per_month`` hours: per meter, the monthly quantity
times the unit price, rounded half-up to the currency's minor unit once (per line);
the total is the sum of the lines. Quantities follow metering exactly: a vCPU-hour
per core (or per 1000 millicores) per hour, a GB-hour per 1024 MiB, a GB-day per GB
per 24 hours, an instance-hour per VM or container replica.

Accepting provisions each VM, container and volume through the same use cases as
``POST /vms``, ``/containers`` and ``/volumes`` (quotas, placement, the wallet's
402, operations). It is resumable and never makes a resource twice:

1. The quote is claimed (``open`` -> ``accepting``, one guarded ``UPDATE``) with
   its plan: one entry a resource, each with a name fixed in advance.
2. Each entry not yet made is created, then recorded on the quote (its id and
   operation). Names are unique in a project, so an entry made by a request that
   crashed before recording it (or by a concurrent accept) is found by its name
   and adopted, not made again.
3. Once every entry is made the quote is ``accepted``. A failure half-way that may
   pass (a quota, an empty wallet, a host down) leaves it ``accepting`` with what
   was made; accepting again resumes.
4. A failure that will not pass -- a create the configuration makes invalid (a VM
   smaller than its image), or a resource's create operation failing (an image
   that cannot be had) -- makes the quote ``failed`` with a ``failure_reason``
   (Nefos's own words, never an engine's message), and refunds through the wallet
   ledger what was charged for the resource that failed (one ``refund`` entry, key
   ``quote-failed:<quote id>``); its usage not yet charged never will be.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.billing import accounts, catalogue, ledger
from nefos.billing.accounts import margin_of, mark_charged, require_funds, usage_cost
from nefos.billing.money import EXACT, ZERO, money_str, round_money
from nefos.billing.rating import with_margin
from nefos.db.models import (
    Container,
    Operation,
    Organisation,
    Project,
    Quote,
    UsageRecord,
    Vm,
    Volume,
)
from nefos.db.session import begin_write
from nefos.db.types import new_id, utcnow
from nefos.domain.access import Permission
from nefos.domain.errors import Conflict, NotFound, ValidationFailed
from nefos.domain.paging import PageParams
from nefos.schemas.billing import QuoteContainer, QuoteCreate, QuoteItem, QuoteVm, QuoteVolume
from nefos.schemas.compute import ContainerCreate
from nefos.schemas.vms import VmCreate, VolumeCreate
from nefos.services.containers import ContainerService, operation_url
from nefos.services.core import Core
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal, authorize_org, authorize_project
from nefos.services.products import ProductService
from nefos.services.quotas import check_quota
from nefos.services.storage import StorageService
from nefos.services.vms import VmService

OPEN, ACCEPTING, ACCEPTED, EXPIRED = "open", "accepting", "accepted", "expired"
FAILED = "failed"
STATUSES = (OPEN, ACCEPTING, ACCEPTED, FAILED, EXPIRED)
B = TypeVar("B", bound=BaseModel)
_ITEM = TypeAdapter[QuoteItem](QuoteItem)
_BAD_NAME = re.compile(r"[^a-zA-Z0-9_.-]+")
MAX_NAME = 63
#: The largest monthly total of a quote: beyond it a price or a size is wrong (and
#: the amount would not fit every database's column).
MAX_TOTAL = Decimal(1_000_000_000)
# Resource kinds by item type: (model, name in messages).
_MODELS: dict[str, Any] = {"vm": Vm, "container": Container, "volume": Volume}


# --- pricing -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Need:
    """A monthly quantity of one SKU: ``numerator / per`` in the SKU's unit (kept as a
    fraction so that a GB-day, a 24th, never rounds before the line does)."""

    sku: str
    numerator: Decimal
    per: int = 1


def needs(item: QuoteItem, hours: int, prices: dict[str, Decimal]) -> list[Need]:
    """What one item uses in a month of ``hours`` hours, per SKU (all its ``count``)."""
    h = Decimal(hours)
    if isinstance(item, QuoteVm):
        n = Decimal(item.count) * h
        flavor = f"{catalogue.FLAVOR_PREFIX}{item.flavor}" if item.flavor else None
        instance = flavor if flavor is not None and flavor in prices else "vm_hour"
        return [
            Need("vcpu_hour", n * item.cpu_cores),
            Need("ram_gb_hour", n * item.resolved_memory_mb, 1024),
            Need("storage_gb_day", n * item.storage_gb, 24),
            Need(instance, n),
        ]
    if isinstance(item, QuoteContainer):
        n = Decimal(item.count * item.replicas) * h
        return [
            Need("vcpu_hour", n * item.cpu_milli, 1000),
            Need("ram_gb_hour", n * item.memory_mb, 1024),
            Need("storage_gb_day", n * item.storage_gb, 24),
            Need("container_hour", n),
        ]
    return [Need("storage_gb_day", Decimal(item.count) * h * item.size_gb, 24)]


def _divide(a: Decimal, b: int) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 60
        return a / b


def price_lines(
    items: Sequence[QuoteItem],
    names: Sequence[str],
    hours: int,
    prices: dict[str, Decimal],
    margin: Decimal,
    currency: str,
) -> tuple[list[dict[str, Any]], Decimal]:
    """The quote's lines and monthly total. A meter with no price (or a zero one)
    makes no line, as in rating."""
    lines: list[dict[str, Any]] = []
    total = ZERO
    for index, (item, name) in enumerate(zip(items, names, strict=True)):
        for need in needs(item, hours, prices):
            price = prices.get(need.sku)
            if not price or not need.numerator:
                continue
            unit_price = with_margin(price, margin)
            amount = round_money(_divide(need.numerator * unit_price, need.per), currency)
            quantity = _divide(need.numerator, need.per).quantize(EXACT, rounding=ROUND_HALF_UP)
            total += amount
            lines.append(
                {
                    "item": index,
                    "type": item.type,
                    "name": name,
                    "count": item.count,
                    "sku": need.sku,
                    "meter": catalogue.describe(need.sku).meter,
                    "unit": catalogue.describe(need.sku).unit,
                    "quantity": f"{quantity.normalize():f}",
                    "unit_price": money_str(unit_price, currency),
                    "amount": money_str(amount, currency),
                    "currency": currency,
                }
            )
    return lines, total


# --- names -------------------------------------------------------------------------------
def name_base(quote_name: str, quote_id: str) -> str:
    """The stem of generated names: the quote's name made a valid resource name."""
    base = _BAD_NAME.sub("-", quote_name).strip("-._")[:40].rstrip("-._")
    return base or f"quote-{quote_id[:8]}"


def _fit(stem: str, suffix: str) -> str:
    return stem[: MAX_NAME - len(suffix)].rstrip("-._") + suffix


def plan(items: Sequence[QuoteItem], base: str) -> list[dict[str, Any]]:
    """One entry a resource to make: ``{item, type, name, id, operation}``. An item's
    own name is used as it is (``count`` 1) or numbered (``web-1``, ``web-2``);
    otherwise ``<base>-<type>-<n>``, numbered across the quote."""
    entries: list[dict[str, Any]] = []
    numbers = dict.fromkeys(_MODELS, 0)
    for index, item in enumerate(items):
        for k in range(1, item.count + 1):
            if item.name is not None:
                name = item.name if item.count == 1 else _fit(item.name, f"-{k}")
            else:
                numbers[item.type] += 1
                name = _fit(base, f"-{item.type}-{numbers[item.type]}")
            entries.append(
                {"item": index, "type": item.type, "name": name, "id": None, "operation": None}
            )
    seen: set[tuple[str, str]] = set()
    for e in entries:
        key = (e["type"], e["name"])
        if key in seen:
            raise ValidationFailed(
                f"Two {e['type']}s of the quote would be named {e['name']!r}",
                items="give each item a distinct name",
            )
        seen.add(key)
    return entries


def item_names(entries: Sequence[dict[str, Any]], count: int) -> list[str]:
    """Per item, the name its lines show: its resource's, or ``first..last``."""
    per: list[list[str]] = [[] for _ in range(count)]
    for e in entries:
        per[e["item"]].append(e["name"])
    return [n[0] if len(n) == 1 else f"{n[0]}..{n[-1]}" for n in per]


def effective_status(q: Quote, now: datetime | None = None) -> str:
    if q.status == OPEN and q.valid_until <= (now or utcnow()):
        return EXPIRED
    return q.status


def quote_public(q: Quote) -> dict[str, Any]:
    return {
        "id": q.id,
        "organisation_id": q.organisation_id,
        "project_id": q.project_id,
        "name": q.name,
        "status": effective_status(q),
        "failure_reason": q.failure_reason,
        "currency": q.currency,
        "hours_per_month": q.hours_per_month,
        "items": list(q.items),
        "lines": list(q.lines),
        "monthly_total": money_str(q.monthly_total, q.currency),
        "valid_until": q.valid_until,
        "resources": list(q.resources),
        "created_by": q.created_by,
        "accepted_by": q.accepted_by,
        "accepted_at": q.accepted_at,
        "created_at": q.created_at,
        "updated_at": q.updated_at,
    }


def _items(q: Quote) -> list[QuoteItem]:
    return [_ITEM.validate_python(i) for i in q.items]


class QuoteService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    # --- reading ----------------------------------------------------------------------
    async def list_page(
        self, org: Organisation, page: PageParams, *, status: str | None = None
    ) -> tuple[Sequence[Quote], int]:
        where: list[Any] = [Quote.organisation_id == org.id]
        now = utcnow()
        if status == EXPIRED:
            where += [Quote.status == OPEN, Quote.valid_until <= now]
        elif status == OPEN:
            where += [Quote.status == OPEN, Quote.valid_until > now]
        elif status is not None:
            where.append(Quote.status == status)
        return await fetch_page(
            self.session,
            Quote,
            *where,
            order_by=(Quote.created_at.desc(), Quote.id.desc()),
            page=page,
        )

    async def visible(
        self, principal: Principal, quote_id: str, permission: Permission
    ) -> tuple[Quote, Organisation]:
        """The quote if the caller holds ``permission`` in its organisation; another
        tenant's is NotFound."""
        quote = await self.session.get(Quote, quote_id)
        if quote is None:
            raise NotFound("Quote not found", quote_id=quote_id)
        try:
            org, _ = await authorize_org(self.session, principal, quote.organisation_id, permission)
        except NotFound:
            raise NotFound("Quote not found", quote_id=quote_id) from None
        return quote, org

    # --- pricing ----------------------------------------------------------------------
    async def create(
        self, principal: Principal, org: Organisation, project: Project | None, body: QuoteCreate
    ) -> Quote:
        settings = self.core.settings
        products = ProductService(self.core, self.session)
        currency = await products.currency_of(org.id)
        await products.ensure_catalogue(currency)
        margin, _ = await margin_of(self.session, org)
        prices = {p.sku: p.unit_price for p in await catalogue.in_force(self.session, currency)}
        hours = body.hours_per_month or settings.billing_hours_per_month
        now = utcnow()
        quote = Quote(
            id=new_id(),
            organisation_id=org.id,
            project_id=project.id if project else None,
            name=body.name,
            currency=currency,
            hours_per_month=hours,
            items=[i.model_dump(mode="json") for i in body.items],
            lines=[],
            monthly_total=ZERO,
            status=OPEN,
            valid_until=now + timedelta(days=settings.billing_quote_validity_days),
            resources=[],
            created_by=principal.user_id,
            created_at=now,
            updated_at=now,
        )
        entries = plan(body.items, name_base(body.name, quote.id))
        names = item_names(entries, len(body.items))
        quote.lines, quote.monthly_total = price_lines(
            body.items, names, hours, prices, margin, currency
        )
        if quote.monthly_total > MAX_TOTAL:
            raise ValidationFailed(
                "The configuration costs too much for one quote",
                monthly_total=money_str(quote.monthly_total, currency),
                limit=money_str(MAX_TOTAL, currency),
            )
        await begin_write(self.session)
        try:
            self.session.add(quote)
            await self.session.commit()
        except BaseException:
            await self.session.rollback()
            raise
        return quote

    # --- accepting --------------------------------------------------------------------
    async def accept(
        self, principal: Principal, quote_id: str, project_hint: str | None
    ) -> tuple[Quote, list[dict[str, Any]]]:
        """Provision the quote's configuration; the quote and the resources made."""
        quote, org = await self.visible(principal, quote_id, Permission.COMPUTE_WRITE)
        for _ in range(3):
            status = effective_status(quote)
            if status == ACCEPTED:
                raise Conflict("The quote has been accepted already", quote_id=quote.id)
            if status == FAILED:
                raise Conflict(
                    f"The quote failed: {quote.failure_reason}; ask for a new one",
                    quote_id=quote.id,
                )
            if status == EXPIRED:
                raise Conflict(
                    "The quote has expired; ask for a new one",
                    quote_id=quote.id,
                    valid_until=quote.valid_until.isoformat(),
                )
            if status == ACCEPTING:
                break
            project = await self._project(principal, quote, org, project_hint)
            entries = plan(_items(quote), name_base(quote.name, quote.id))
            await self._precheck(quote, project, entries)
            if await self._claim(principal, quote, project, entries):
                break
            quote = await self._reload(quote_id)
        else:  # pragma: no cover - three claims lost in a row
            raise Conflict("The quote is being accepted by another request; try again")
        quote = await self._reload(quote_id)
        assert quote.project_id is not None and quote.accepted_at is not None
        project_id, claimed = quote.project_id, quote.accepted_at
        await authorize_project(self.session, principal, project_id, Permission.COMPUTE_WRITE)
        items = _items(quote)
        for index, entry in enumerate(list(quote.resources)):
            if entry.get("id"):
                continue
            target = await self.session.get(Project, project_id, populate_existing=True)
            if target is None:
                raise NotFound("Project not found", project_id=project_id)
            item = items[entry["item"]]
            try:
                made_id, op = await self._make(principal, target, item, entry["name"], claimed)
            except (ValidationFailed, NotFound) as exc:  # the configuration cannot be made
                what = f"{_KIND_NAMES[item.type]} {entry['name']!r} cannot be made: {exc.message}"
                await fail_quote(self.core, quote_id, what, failed_ids=())
                raise
            quote = await self._record(quote_id, index, made_id, op)
            if op is not None and quote.status != FAILED:
                # Its create may have failed before the entry was recorded (and so
                # before QuoteOps could find the quote).
                done = await self.session.get(Operation, op.id, populate_existing=True)
                await self.session.commit()
                if done is not None and done.status == "failed":
                    failed = await fail_quote(
                        self.core,
                        quote_id,
                        create_failure(item.type, entry["name"], done.error_code, done.id),
                        failed_ids=[made_id],
                    )
                    quote = failed or quote
            if quote.status == FAILED:  # an entry's create failed meanwhile
                break
        return quote, list(quote.resources)

    async def _reload(self, quote_id: str) -> Quote:
        quote = await self.session.get(Quote, quote_id, populate_existing=True)
        await self.session.commit()  # end the read (a commit expires nothing)
        if quote is None:
            raise NotFound("Quote not found", quote_id=quote_id)
        return quote

    async def _project(
        self, principal: Principal, quote: Quote, org: Organisation, hint: str | None
    ) -> Project:
        """Where to provision: the quote's project, else the one named, else the
        caller's default project if it is in the quote's organisation."""
        project_id = quote.project_id or hint or principal.user.default_project_id
        if principal.key_organisation_id is not None and not quote.project_id and not hint:
            project_id = await self.session.scalar(
                select(Project.id)
                .where(Project.organisation_id == org.id)
                .order_by(Project.is_default.desc(), Project.created_at)
                .limit(1)
            )
        if project_id is None:
            raise ValidationFailed(
                "The quote names no project: name one to provision it in",
                project_id="required",
            )
        project, _ = await authorize_project(
            self.session, principal, project_id, Permission.COMPUTE_WRITE
        )
        if project.organisation_id != quote.organisation_id:
            raise ValidationFailed(
                "The project is not in the quote's organisation", project_id=project_id
            )
        return project

    async def _precheck(
        self, quote: Quote, project: Project, entries: list[dict[str, Any]]
    ) -> None:
        """Refuse before making anything what would fail part-way: items missing what
        their create needs, names taken in the project, a quota the whole exceeds, an
        empty wallet."""
        items = _items(quote)
        missing = {
            f"items[{i}]": "image_id (or os_type) is needed to make a VM"
            for i, it in enumerate(items)
            if isinstance(it, QuoteVm) and not it.image_id and not it.os_type
        } | {
            f"items[{i}]": "image is needed to make a container"
            for i, it in enumerate(items)
            if isinstance(it, QuoteContainer) and not it.image
        }
        if missing:
            raise ValidationFailed("Some items cannot be provisioned as quoted", **missing)
        taken: list[str] = []
        for kind, model in _MODELS.items():
            names = [e["name"] for e in entries if e["type"] == kind]
            if names:
                found = await self.session.scalars(
                    select(model.name).where(model.project_id == project.id, model.name.in_(names))
                )
                taken += [f"{kind} {n}" for n in found]
        if taken:
            raise Conflict(
                "Names the quote would give are taken in the project",
                names=sorted(taken),
            )
        vms = [i for i in items if isinstance(i, QuoteVm)]
        containers = [i for i in items if isinstance(i, QuoteContainer)]
        volumes = [i for i in items if isinstance(i, QuoteVolume)]
        try:
            await require_funds(self.session, self.core.settings, quote.organisation_id)
            await check_quota(
                self.session,
                project.id,
                instances=sum(v.count for v in vms),
                containers=sum(c.count * c.replicas for c in containers),
                cpu_milli=sum(v.count * v.cpu_cores * 1000 for v in vms)
                + sum(c.count * c.replicas * c.cpu_milli for c in containers),
                memory_mb=sum(v.count * v.resolved_memory_mb for v in vms)
                + sum(c.count * c.replicas * c.memory_mb for c in containers),
                storage_gb=sum(v.count * v.storage_gb for v in vms)
                + sum(c.count * c.replicas * c.storage_gb for c in containers)
                + sum(v.count * v.size_gb for v in volumes),
            )
        except BaseException:
            await self.session.rollback()
            raise
        await self.session.commit()  # a read: commit ends it without expiring anything

    async def _claim(
        self,
        principal: Principal,
        quote: Quote,
        project: Project,
        entries: list[dict[str, Any]],
    ) -> bool:
        """``open`` -> ``accepting`` with the plan, if still open and valid: one
        request wins."""
        now = utcnow()
        await begin_write(self.session)
        try:
            done = await self.session.execute(
                update(Quote)
                .where(Quote.id == quote.id, Quote.status == OPEN, Quote.valid_until > now)
                .values(
                    status=ACCEPTING,
                    project_id=project.id,
                    resources=entries,
                    accepted_by=principal.user_id,
                    accepted_at=now,
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            await self.session.commit()
        except BaseException:
            await self.session.rollback()
            raise
        return bool(done.rowcount)  # type: ignore[attr-defined]

    async def _make(
        self,
        principal: Principal,
        project: Project,
        item: QuoteItem,
        name: str,
        claimed: datetime,
    ) -> tuple[str, Operation | None]:
        """Create one planned resource; or, if one of its name exists in the project
        since the quote was claimed (made by an earlier try), adopt it."""
        project_id = project.id
        try:
            if isinstance(item, QuoteVm):
                vm, op = await VmService(self.core, self.session).create(
                    principal, project, _vm_body(item, name, project_id)
                )
                return vm.id, op
            if isinstance(item, QuoteContainer):
                container, op = await ContainerService(self.core, self.session).create(
                    principal, project, _container_body(item, name, project_id)
                )
                return container.id, op
            volume, op = await StorageService(self.core, self.session).create_volume(
                principal, project, VolumeCreate(name=name, size_gb=item.size_gb)
            )
            return volume.id, op
        except Conflict:
            model = _MODELS[item.type]
            found = (
                await self.session.execute(
                    select(model.id, model.created_at).where(
                        model.project_id == project_id, model.name == name
                    )
                )
            ).first()
            if found is None or found[1] < claimed:
                await self.session.commit()
                raise
            made_id = str(found[0])
            creation = await self._create_operation(made_id, item.type)
            await self.session.commit()
            return made_id, creation

    async def _create_operation(self, resource_id: str, kind: str) -> Operation | None:
        """The operation that created an adopted resource (for its entry's ``operation``)."""
        return await self.session.scalar(
            select(Operation)
            .where(Operation.resource_id == resource_id, Operation.kind == f"{kind}.create")
            .order_by(Operation.created_at.desc())
            .limit(1)
        )

    async def _record(self, quote_id: str, index: int, made_id: str, op: Operation | None) -> Quote:
        """Note entry ``index`` as made (and the quote accepted once all are)."""
        await begin_write(self.session)
        try:
            quote = await self.session.get(
                Quote, quote_id, populate_existing=True, with_for_update=True
            )
            if quote is None:
                raise NotFound("Quote not found", quote_id=quote_id)
            resources = [dict(r) for r in quote.resources]
            entry = resources[index]
            if not entry.get("id"):
                entry["id"] = made_id
            if entry["id"] == made_id and op is not None and not entry.get("operation"):
                entry["operation"] = {"id": op.id, "status": op.status, "url": operation_url(op.id)}
            quote.resources = resources
            if quote.status == ACCEPTING and all(r.get("id") for r in resources):
                quote.status = ACCEPTED
            quote.updated_at = utcnow()
            await self.session.commit()
        except BaseException:
            await self.session.rollback()
            raise
        return quote


def _vm_body(item: QuoteVm, name: str, project_id: str) -> VmCreate:
    values: dict[str, Any] = {
        "name": name,
        "cpu_cores": item.cpu_cores,
        "memory_mb": item.resolved_memory_mb,
        "storage_gb": item.storage_gb,
        "image_id": item.image_id,
        "os_type": item.os_type,
        "os_version": item.os_version,
        "flavor": item.flavor,
        "project_id": project_id,
    }
    return _build(VmCreate, values)


def _container_body(item: QuoteContainer, name: str, project_id: str) -> ContainerCreate:
    resources: dict[str, Any] = {"cpu": item.cpu, "memory": item.memory}
    if item.storage_gb:
        resources["storage"] = f"{item.storage_gb}Gi"
    values: dict[str, Any] = {
        "name": name,
        "image": item.image,
        "ports": list(item.ports),
        "environment": dict(item.environment),
        "resources": resources,
        "replicas": item.replicas,
        "project_id": project_id,
    }
    return _build(ContainerCreate, values)


def _build(model: type[B], values: dict[str, Any]) -> B:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        details = {
            ".".join(str(p) for p in err["loc"]) or "item": err["msg"] for err in exc.errors()
        }
        raise ValidationFailed("An item of the quote is not a valid create", **details) from None


_KIND_NAMES = {"vm": "VM", "container": "Container", "volume": "Volume"}
#: Why a resource's create operation failed, by the operation's error code: the
#: operation itself (``GET /operations/{id}``) has the details.
_CREATE_FAILURES = {
    "VALIDATION_ERROR": "its configuration cannot be provisioned",
    "NOT_FOUND": "something it needs cannot be had",
    "IMAGE_PULL_FAILED": "its image is not on the host and could not be pulled",
    "RESOURCE_EXHAUSTED": "no host has room for it",
}


def create_failure(kind: str, name: str, code: str | None, op_id: str) -> str:
    """A quote's failure reason for a resource whose create operation failed."""
    why = _CREATE_FAILURES.get(code or "", "provisioning it failed")
    return f"{_KIND_NAMES[kind]} {name!r} could not be made: {why} (operation {op_id})"


async def fail_quote(
    core: Core, quote_id: str, reason: str, *, failed_ids: Sequence[str]
) -> Quote | None:
    """Mark the quote ``failed`` with ``reason`` (once: a failed quote keeps its first
    reason), and refund what was charged for the resources ``failed_ids``. Its own
    transaction; the quote, or None if it is gone."""
    async with core.db.sessionmaker() as session:
        await begin_write(session)
        try:
            quote = await session.get(Quote, quote_id, populate_existing=True, with_for_update=True)
            if quote is None or quote.status == FAILED:
                await session.commit()
                return quote
            quote.status = FAILED
            quote.failure_reason = reason[:2000]
            quote.updated_at = utcnow()
            if failed_ids:
                await _refund(core, session, quote, list(failed_ids))
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
        return quote


async def _refund(core: Core, session: AsyncSession, quote: Quote, ids: list[str]) -> None:
    """Give back what the failed resources' usage was charged, and waive what is not
    charged yet (so the billing pass never charges it)."""
    records = (
        await session.scalars(select(UsageRecord).where(UsageRecord.resource_id.in_(ids)))
    ).all()
    waived = [r.id for r in records if r.charge_id is None]
    if waived:
        await mark_charged(session, waived, f"free:quote-{quote.id}"[:36])
    charged = [r for r in records if r.charge_id and not r.charge_id.startswith("free:")]
    if not charged:
        return
    org = await session.get(Organisation, quote.organisation_id)
    if org is None:
        return
    margin, _ = await margin_of(session, org)
    base, markup = await usage_cost(session, quote.currency, charged, margin)
    amount = round_money(base + markup, quote.currency)
    if amount > 0:
        wallet = await accounts.wallet(
            session, core.settings, quote.organisation_id, quote.currency
        )
        await ledger.post(
            session,
            wallet,
            "refund",
            amount,
            key=f"quote-failed:{quote.id}",
            description=f"Refund: quote {quote.name or quote.id} failed",
            reference=("quote", quote.id),
        )


class QuoteOps:
    """Follows the create operations of accepted quotes' resources: one that fails
    fails its quote (:func:`fail_quote`)."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def register(self) -> None:
        self.core.workers.failure_listeners.append(self.on_failure)

    async def on_failure(self, ctx: Any, code: str, message: str) -> None:
        op = ctx.op
        kind, _, action = op.kind.partition(".")
        if action != "create" or kind not in _MODELS or op.project_id is None:
            return
        async with self.core.db.sessionmaker() as session:
            quotes = (
                await session.scalars(
                    select(Quote).where(
                        Quote.project_id == op.project_id,
                        Quote.status.in_((ACCEPTING, ACCEPTED)),
                    )
                )
            ).all()
            await session.commit()
        for quote in quotes:
            for entry in quote.resources:
                if entry.get("id") == op.resource_id:
                    reason = create_failure(kind, entry["name"], code, op.id)
                    await fail_quote(self.core, quote.id, reason, failed_ids=[op.resource_id])
