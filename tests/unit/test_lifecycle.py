"""The lifecycle tables (nefos.domain.lifecycle): every move a request may make, from
every status, allowed or refused, against the rules written out here once more."""

from __future__ import annotations

import itertools
from enum import StrEnum
from typing import Any

import pytest

from nefos.db.types import Status
from nefos.domain.errors import Conflict
from nefos.domain.lifecycle import CONTAINER, VM, ContainerStatus, Desired, Lifecycle, VmStatus

V, C = VmStatus, ContainerStatus

#: action: (the statuses it may start from, where it goes, what it asks for)
VM_RULES: dict[str, tuple[set[VmStatus], VmStatus, Desired | None]] = {
    "start": (set(V) - {V.DELETING}, V.STARTING, Desired.RUNNING),
    "stop": (set(V) - {V.DELETING}, V.STOPPING, Desired.STOPPED),
    "reboot": ({V.RUNNING}, V.REBOOTING, None),
    "resize": ({V.STOPPED}, V.RESIZING, None),
    "delete": (set(V) - {V.DELETING}, V.DELETING, None),
}
CONTAINER_RULES: dict[str, tuple[set[ContainerStatus], ContainerStatus, Desired | None]] = {
    "start": (set(C) - {C.DELETING}, C.STARTING, Desired.RUNNING),
    "stop": (set(C) - {C.DELETING}, C.STOPPING, Desired.STOPPED),
    "scale": (set(C) - {C.DELETING}, C.SCALING, None),
    "update": (set(C) - {C.DELETING}, C.UPDATING, None),
    "delete": (set(C) - {C.DELETING}, C.DELETING, None),
}
TABLES: list[tuple[Lifecycle[Any], dict[str, Any]]] = [(VM, VM_RULES), (CONTAINER, CONTAINER_RULES)]


def _cases() -> list[Any]:
    return [
        pytest.param(life, action, status, rules[action], id=f"{life.kind}-{action}-{status}")
        for life, rules in TABLES
        for action, status in itertools.product(rules, life.statuses)
    ]


@pytest.mark.parametrize(("life", "action", "status", "rule"), _cases())
def test_every_move_from_every_status(
    life: Lifecycle[Any], action: str, status: StrEnum, rule: Any
) -> None:
    sources, to, desired = rule
    if status in sources:
        move = life.move(action, status)
        assert (move.to, move.desired) == (to, desired)
    else:
        with pytest.raises(Conflict) as refused:
            life.move(action, status)
        assert refused.value.details == {"status": status}
        said = "being deleted" if status == "deleting" else status.value
        assert said in refused.value.message


def test_the_tables_have_exactly_the_actions_written_here() -> None:
    for life, rules in TABLES:
        assert set(life.moves) == set(rules)


@pytest.mark.parametrize(("life", "rules"), TABLES, ids=["vm", "container"])
def test_nothing_moves_an_object_being_deleted(life: Lifecycle[Any], rules: Any) -> None:
    for action in rules:
        with pytest.raises(Conflict, match=f"The {life.noun} is being deleted"):
            life.move(action, "deleting")


def test_a_refusal_says_what_the_move_needs() -> None:
    with pytest.raises(Conflict, match="^The VM is stopped; this needs it running$"):
        VM.move("reboot", V.STOPPED)
    with pytest.raises(Conflict, match=r"^Stop the VM before resizing it \(it is running\)$"):
        VM.move("resize", V.RUNNING)


@pytest.mark.parametrize(("life", "rules"), TABLES, ids=["vm", "container"])
def test_a_move_leaves_a_settled_status_and_every_status_is_reached(
    life: Lifecycle[Any], rules: Any
) -> None:
    """While a move's operation runs the object is not settled (the reconciler keeps
    off it); every status is where a move, the worker's outcome or a create puts it."""
    for move in life.moves.values():
        assert move.to not in life.settled
    reached = {m.to for m in life.moves.values()} | set(life.settled) | {"creating"}
    assert reached == set(life.statuses)


def test_an_unknown_status_is_refused_every_move_but_still_named() -> None:
    with pytest.raises(Conflict) as refused:
        VM.move("start", "paused")
    assert refused.value.details == {"status": "paused"}


def test_a_status_column_writes_only_its_values_and_reads_members() -> None:
    column = Status(VmStatus)
    assert column.process_bind_param("running", None) == "running"  # type: ignore[arg-type]
    assert column.process_bind_param(V.STOPPED, None) == "stopped"  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        column.process_bind_param("runing", None)  # type: ignore[arg-type]
    assert column.process_result_value("running", None) is V.RUNNING  # type: ignore[arg-type]
    # A status another version of Nefos wrote still reads, as its text.
    assert column.process_result_value("hibernating", None) == "hibernating"  # type: ignore[arg-type]
    assert column.process_bind_param(None, None) is None  # type: ignore[arg-type]
