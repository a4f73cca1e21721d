from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T")

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?$")
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,63}$")


def _email(value: str) -> str:
    value = value.strip()
    if not _EMAIL.match(value):
        raise ValueError("Invalid email format")
    local, _, domain = value.rpartition("@")
    value = f"{local}@{domain.lower()}".lower()
    if len(value) > 320:  # checked after lowering: "İ".lower() is two characters
        raise ValueError("Invalid email format")
    return value


#: Unicode categories no name may hold: control (Cc), format (Cf: bidirectional
#: overrides and isolates, zero-width characters), surrogates (Cs), private use (Co),
#: unassigned (Cn), line and paragraph separators (Zl, Zp). They reorder or hide what
#: other people are shown ("evil\u202etxt.exe" reads "evilexe.txt").
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _plain_name(value: str) -> str:
    """A name shown to people: any script, but nothing that reorders or hides text."""
    for ch in value:
        if unicodedata.category(ch) in HIDDEN_CATEGORIES:
            raise ValueError(
                "must not contain invisible or control characters "
                f"(U+{ord(ch):04X}: bidirectional overrides, zero-width and control "
                "characters are not allowed in names)"
            )
    return value


def _slug(value: str) -> str:
    if not _SLUG.fullmatch(value):
        raise ValueError("lowercase letters, digits and '-', 1-100 characters")
    return value


def _username(value: str) -> str:
    if not _USERNAME.fullmatch(value):
        raise ValueError("2-64 characters: letters, digits, '_', '.', '-'")
    return value


Email = Annotated[str, Field(max_length=320), AfterValidator(_email)]
Slug = Annotated[str, AfterValidator(_slug)]
Username = Annotated[str, AfterValidator(_username)]
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_plain_name)]
#: A shorter name (projects, API keys, alert rules): the same characters as Name.
ShortName = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_plain_name)]
#: A name that may be left empty (a quote's): the same characters as Name.
OptionalName = Annotated[str, Field(max_length=200), AfterValidator(_plain_name)]
Id = Annotated[str, Field(min_length=1, max_length=64)]


def storable_text(value: str) -> bool:
    """False for text no database should be handed: NUL bytes or lone surrogates."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(value: Any, where: str) -> None:
    if isinstance(value, str):
        if not storable_text(value):
            raise ValueError(f"{where or 'value'} contains characters that are not allowed")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k, where)
            _check_text(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for v in value:
            _check_text(v, where)


class Request(BaseModel):
    """Base of request bodies: unknown fields are an error, never silently stored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        _check_text(data, "")
        return data


class Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorInfo(BaseModel):
    code: str = Field(examples=["VALIDATION_ERROR"])
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class Envelope(BaseModel, Generic[T]):
    success: bool = True
    data: T
    error: None = None
    timestamp: datetime


class ErrorEnvelope(BaseModel):
    success: bool = False
    data: None = None
    error: ErrorInfo
    detail: str = Field(description="Alias of error.message, for clients of seed 003.")
    timestamp: datetime


class Pagination(BaseModel):
    """Where a page is in its list. ``total`` counts every item matching the filters
    (all pages); ``page`` and ``pages`` are null on a page read by ``cursor``;
    ``next_cursor`` reads on after this page's last item (null on the last page)."""

    page: int | None
    limit: int
    total: int
    pages: int | None
    next_cursor: str | None = None


class Page(BaseModel, Generic[T]):
    items: list[T]
    pagination: Pagination


class Message(BaseModel):
    message: str
