"""Schemathesis on real objects: every operation with an id in its path, the path
naming the caller's own objects (``test_schemathesis.py`` has the fixtures and the
rules). A module of its own, so that pytest-xdist runs it beside the other half of the
fuzzing."""

from __future__ import annotations

import pytest
import schemathesis

from tests.api import test_schemathesis as fuzzing
from tests.api.test_schemathesis import FUZZ, Callers, call_and_validate, schema

callers = fuzzing.callers  # the fixture, served to this module too

# Contract bugs the fuzzing on real objects finds and that are not fixed yet (the
# server is not this suite's to change): those operations fail, strictly expected.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


@schema.include(path_regex=r"\{").parametrize()
@FUZZ
def test_api_conforms_to_its_schema_on_real_objects(
    case: schemathesis.Case, callers: Callers, request: pytest.FixtureRequest
) -> None:
    """The same, with the path naming the caller's own objects: generated ids reach
    only the access check (404), these reach the handlers behind it."""
    bug = KNOWN_BUGS.get((case.method.upper(), case.operation.path))
    if bug is not None:
        request.node.add_marker(pytest.mark.xfail(reason=bug, strict=True))
    case.path_parameters = callers.real_ids(case)
    call_and_validate(case, callers)
