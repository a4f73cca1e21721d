"""The lifecycle of a compute object: its statuses, and which request may move it
from which status to which.

One table per kind (:data:`VM`, :data:`CONTAINER`; a service and an API are
containers). A request (start, stop, reboot, resize, scale, update, delete) is a
:class:`Move`: the statuses it may start from, the status it puts the object in
while its operation runs, and the state it asks for (``desired``). The services
check a move inside the write transaction that records it
(:func:`nefos.services.lifecycle.transition`), so two requests cannot both pass.

The worker settles the object when the operation ends (running, stopped, error, or
back to where it was); those outcomes are the worker's, not requests, and are not
in the table. A status the table does not know (a row written by another version of
Nefos) still loads, and allows no move: a 409 that names it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from nefos.domain.errors import Conflict


class Desired(StrEnum):
    """What the owner asked for: the reconciler keeps the object there."""

    RUNNING = "running"
    STOPPED = "stopped"


class VmStatus(StrEnum):
    CREATING = "creating"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    REBOOTING = "rebooting"
    RESIZING = "resizing"
    DELETING = "deleting"
    ERROR = "error"


class ContainerStatus(StrEnum):
    CREATING = "creating"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SCALING = "scaling"
    UPDATING = "updating"
    DELETING = "deleting"
    ERROR = "error"
    #: Some replicas run, some do not (derived from the replicas, never requested).
    DEGRADED = "degraded"


S = TypeVar("S", VmStatus, ContainerStatus)


@dataclass(frozen=True)
class Move(Generic[S]):
    """One request's move: from any of ``sources`` to ``to``, asking for ``desired``."""

    action: str
    to: S
    sources: frozenset[S]
    desired: Desired | None = None
    #: What a refusal says, with ``{noun}``, ``{status}`` and ``{needs}`` filled in.
    refusal: str = "The {noun} is {status}; this needs it {needs}"


class Lifecycle(Generic[S]):
    """A kind's statuses, the moves requests may make, and the statuses in which no
    operation is under way (``settled``: the reconciler may correct those)."""

    def __init__(
        self,
        kind: str,
        noun: str,
        statuses: type[S],
        moves: Iterable[Move[S]],
        settled: Iterable[S],
    ) -> None:
        #: The operations' resource type; an operation's kind is ``{kind}.{action}``.
        self.kind = kind
        self.noun = noun
        self.statuses: type[S] = statuses
        self.moves: Mapping[str, Move[S]] = {m.action: m for m in moves}
        self.settled: frozenset[S] = frozenset(settled)

    @property
    def title(self) -> str:
        return self.noun[:1].upper() + self.noun[1:]

    @property
    def id_field(self) -> str:
        """The detail that names an object of this kind in an error."""
        return f"{self.kind}_id"

    def move(self, action: str, current: str) -> Move[S]:
        """The move ``action`` makes from ``current``; a :class:`Conflict` (409) naming
        the status when it may not. Nothing moves an object being deleted."""
        move = self.moves[action]
        if current == "deleting":
            raise Conflict(f"The {self.noun} is being deleted", status=current)
        if current not in move.sources:
            needs = " or ".join(s.value for s in self.statuses if s in move.sources)
            raise Conflict(
                move.refusal.format(noun=self.noun, status=current, needs=needs),
                status=current,
            )
        return move


def _all_but(statuses: type[S], *excluded: S) -> frozenset[S]:
    return frozenset(s for s in statuses if s not in excluded)


VM: Lifecycle[VmStatus] = Lifecycle(
    "vm",
    "VM",
    VmStatus,
    [
        Move("start", VmStatus.STARTING, _all_but(VmStatus, VmStatus.DELETING), Desired.RUNNING),
        Move("stop", VmStatus.STOPPING, _all_but(VmStatus, VmStatus.DELETING), Desired.STOPPED),
        Move("reboot", VmStatus.REBOOTING, frozenset({VmStatus.RUNNING})),
        Move(
            "resize",
            VmStatus.RESIZING,
            frozenset({VmStatus.STOPPED}),
            refusal="Stop the {noun} before resizing it (it is {status})",
        ),
        Move("delete", VmStatus.DELETING, _all_but(VmStatus, VmStatus.DELETING)),
    ],
    settled=(VmStatus.RUNNING, VmStatus.STOPPED, VmStatus.ERROR),
)

CONTAINER: Lifecycle[ContainerStatus] = Lifecycle(
    "container",
    "container",
    ContainerStatus,
    [
        Move(
            "start",
            ContainerStatus.STARTING,
            _all_but(ContainerStatus, ContainerStatus.DELETING),
            Desired.RUNNING,
        ),
        Move(
            "stop",
            ContainerStatus.STOPPING,
            _all_but(ContainerStatus, ContainerStatus.DELETING),
            Desired.STOPPED,
        ),
        Move(
            "scale",
            ContainerStatus.SCALING,
            _all_but(ContainerStatus, ContainerStatus.DELETING),
        ),
        Move(
            "update",
            ContainerStatus.UPDATING,
            _all_but(ContainerStatus, ContainerStatus.DELETING),
        ),
        Move(
            "delete",
            ContainerStatus.DELETING,
            _all_but(ContainerStatus, ContainerStatus.DELETING),
        ),
    ],
    settled=(
        ContainerStatus.RUNNING,
        ContainerStatus.STOPPED,
        ContainerStatus.ERROR,
        ContainerStatus.DEGRADED,
    ),
)
