"""Service health, the pure part: the rise/fall state machine, a service's health
from its instances', results by Consul's conventions, and the bounded histories."""

from __future__ import annotations

import pytest

from nefos.domain.health import (
    HISTORY,
    CheckSpec,
    Health,
    InstanceState,
    exec_result,
    http_result,
    parse_status_range,
    service_health,
)

P, W, C, M = Health.PASSING, Health.WARNING, Health.CRITICAL, Health.MAINTENANCE


def run(spec: CheckSpec, results: list[Health]) -> tuple[InstanceState, list[Health | None]]:
    state = InstanceState()
    changes = [state.record(r, r.value, f"t{i}", 1.0, spec) for i, r in enumerate(results)]
    return state, changes


def test_a_new_instance_is_critical_until_it_rises() -> None:
    state, changes = run(CheckSpec(rise=3, fall=2), [P, P, P])
    assert changes == [None, None, P] and state.status is P


def test_it_falls_only_after_fall_failures_in_a_row() -> None:
    spec = CheckSpec(rise=1, fall=3)
    state, changes = run(spec, [P, C, C, P, C, C, C])
    # A pass between failures starts the count again.
    assert changes == [P, None, None, None, None, None, C]
    assert [t["to"] for t in state.transitions] == ["passing", "critical"]
    assert state.transitions[-1]["from"] == "passing"


def test_a_warning_shows_at_once_and_resets_the_counts() -> None:
    state, changes = run(CheckSpec(rise=2, fall=2), [P, P, W, P, P])
    assert changes == [None, P, W, None, P]


def test_histories_are_bounded_newest_last() -> None:
    state, _ = run(CheckSpec(rise=1, fall=1), [P, C] * HISTORY)
    assert len(state.checks) == HISTORY and len(state.transitions) == HISTORY
    assert state.checks[-1]["at"] == f"t{2 * HISTORY - 1}"


def test_output_is_clipped() -> None:
    state = InstanceState()
    state.record(P, "x" * 10_000, "t", None, CheckSpec())
    assert len(state.checks[-1]["output"]) <= 500


@pytest.mark.parametrize(
    ("instances", "health"),
    [
        ([], C),
        ([P, P], P),
        ([P, C], W),
        ([P, W], W),
        ([C, C], C),
        ([W, C], C),
        ([P, M], P),
        ([M, M], M),
        ([C, M], C),
    ],
)
def test_a_service_s_health(instances: list[Health], health: Health) -> None:
    assert service_health(instances) is health


def test_results_follow_consul() -> None:
    spec = CheckSpec(type="http", status_low=200, status_high=299)
    assert http_result(204, spec) is P and http_result(429, spec) is W
    assert http_result(301, spec) is C and http_result(503, spec) is C
    assert exec_result(0) is P and exec_result(1) is W and exec_result(2) is C


@pytest.mark.parametrize("text", ["", "99", "600", "300-200", "2xx", "200-"])
def test_bad_status_ranges(text: str) -> None:
    with pytest.raises(ValueError):
        parse_status_range(text)


def test_status_ranges() -> None:
    assert parse_status_range("204") == (204, 204)
    assert parse_status_range(" 200 - 399 ") == (200, 399)


async def test_a_replica_gone_mid_save_costs_only_its_own_result() -> None:
    """The checker's batch save fails when a replica was deleted between its read and
    its write (PostgreSQL's foreign key); the others' results are saved one by one."""
    from sqlalchemy.exc import IntegrityError

    from nefos.monitoring.servicehealth import HealthChecker, Result

    saved: list[list[str]] = []

    class Checker(HealthChecker):
        async def _save(self, due, results):  # type: ignore[no-untyped-def]
            ids = [t.instance_id for t in due]
            if "gone" in ids:
                raise IntegrityError("INSERT", {}, Exception("foreign key"))
            saved.append(ids)

    class T:
        def __init__(self, rid: str) -> None:
            self.instance_id = rid

    checker = Checker(core=None)  # type: ignore[arg-type]
    ok = Result(P, "fine", 1.0)
    await checker._save_all([(T("a"), ok), (T("gone"), ok), (T("b"), ok)])  # type: ignore[list-item]
    assert saved == [["a"], ["b"]]
