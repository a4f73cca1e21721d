"""Small value types of the SDK's public surface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal


class NotGiven:
    """Marks an argument that was left out, where ``None`` means something (``null``).

    ``projects.set_quotas(pid, vcpus=None)`` lifts the vCPU limit, while leaving
    ``vcpus`` out keeps it as it is.
    """

    _instance: NotGiven | None = None

    def __new__(cls) -> NotGiven:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> Literal[False]:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = NotGiven()


@dataclass(frozen=True, slots=True)
class Tokens:
    """A session's credentials as the client holds them.

    ``expires_at`` is the access token's expiry in seconds since the epoch, as
    the client computed it (``expires_in`` on receipt, else the JWT's ``exp``);
    None when unknown.
    """

    access_token: str
    refresh_token: str | None
    expires_at: float | None = None
