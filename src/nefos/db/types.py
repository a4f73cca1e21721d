"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any, Generic, TypeVar

from sqlalchemy import BigInteger, DateTime, Dialect, Numeric, String
from sqlalchemy.types import TypeDecorator, TypeEngine


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no time zones and hands back naive values; this type stores UTC and
    always returns an aware ``datetime`` in UTC, so comparisons never mix the two.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


E = TypeVar("E", bound=StrEnum)


class Status(TypeDecorator[E], Generic[E]):
    """A status column: one of ``enum``'s values, as text.

    What is written must be a value of the enum (a misspelt status is a bug, caught at
    the flush); what is read comes back as the enum's member. A value the enum does
    not know (written by another version of Nefos) comes back as the text itself
    rather than failing the whole read."""

    impl = String(16)
    cache_ok = True

    def __init__(self, enum: type[E]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return self.enum(value).value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        try:
            return self.enum(value)
        except ValueError:
            return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(when: datetime | None) -> datetime | None:
    """A time without a zone is UTC's (a query's ``since``, say)."""
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


def new_id() -> str:
    return str(uuid.uuid4())


AMOUNT_SCALE = 9
_AMOUNT_QUANTUM = Decimal(1).scaleb(-AMOUNT_SCALE)
_AMOUNT_FACTOR = 10**AMOUNT_SCALE


class Amount(TypeDecorator[Decimal]):
    """An exact decimal with nine places, as ``Decimal`` on every backend.

    PostgreSQL stores ``NUMERIC(30, 9)``. SQLite has no exact decimal (its NUMERIC
    is a float), so there the value is an integer count of 10⁻⁹ units: sums,
    comparisons and guarded ``UPDATE ... SET balance = balance - :x`` stay exact in
    SQL, and the type turns results back into ``Decimal``. Values are quantized to
    nine places half-up on the way in; money is rounded to the currency's minor
    unit elsewhere (``nefos.billing.money``), at the invoice line.
    """

    impl = Numeric(30, AMOUNT_SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(30, AMOUNT_SCALE, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        exact = Decimal(value).quantize(_AMOUNT_QUANTUM, rounding=ROUND_HALF_UP)
        if dialect.name == "sqlite":
            return int(exact * _AMOUNT_FACTOR)
        return exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        raw = Decimal(int(value)) / _AMOUNT_FACTOR if dialect.name == "sqlite" else Decimal(value)
        return raw.quantize(_AMOUNT_QUANTUM)

    @property
    def python_type(self) -> type[Decimal]:
        return Decimal
