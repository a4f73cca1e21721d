"""Who acts: a user (through a ``Principal``), or the platform itself.

The platform acts on its own when no one asked it to: the billing pass stopping the
instances of an organisation whose wallet ran dry. It is not a user, and never
borrows one (not "the oldest platform admin"): what it does is recorded as the
system's. An operation it starts has no ``user_id`` and carries
``{"actor": "system", "reason": ...}`` in its params.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

#: The actor name the system's operations record.
SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class SystemActor:
    """The platform acting on its own, for ``reason`` (e.g. ``billing_suspension``)."""

    reason: str
    #: The system is no user: what it does has no user id.
    user_id: ClassVar[None] = None

    def record(self) -> dict[str, str]:
        """What an operation it starts records of it (merged into the params)."""
        return {"actor": SYSTEM, "reason": self.reason}


#: The billing pass suspending an organisation left without funds.
BILLING_SUSPENSION = SystemActor("billing_suspension")
