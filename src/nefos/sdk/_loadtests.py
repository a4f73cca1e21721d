"""Load tests of your own services (``/testing``) and their stored scenarios."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from nefos.schemas.common import Message, Page
from nefos.schemas.loadtests import LoadTestAccepted, LoadTestPublic, ScenarioPublic
from nefos.sdk._resources import _body, _idempotent, _paging, _Resource, _seg

TESTS = "/testing/results"
SCENARIOS = "/testing/scenarios"
ENDED = frozenset({"completed", "failed", "cancelled"})


class LoadTests(_Resource):
    """Start load tests against your services, follow and cancel them."""

    def start(
        self,
        target: str,
        *,
        duration: int,
        users: int,
        ramp_up_time: int = 0,
        scenario: str = "web_app",
        rate: float | None = None,
        thresholds: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> LoadTestAccepted:
        """Start a test of ``target`` (your service's id: a container's id). Without
        ``rate``, ``users`` virtual users send back-to-back (closed model); with it,
        requests arrive at ``rate`` per second (open model). ``thresholds`` such as
        ``"p95 < 300"`` or ``"error_rate < 1%"`` decide ``passed``."""
        body = _body(
            target=target,
            duration=duration,
            users=users,
            ramp_up_time=ramp_up_time,
            scenario=scenario,
            rate=rate,
            thresholds=list(thresholds) or None,
        )
        headers = _idempotent(idempotency_key)
        return self._one(LoadTestAccepted, "POST", "/testing/load", json=body, headers=headers)

    def get(self, test_id: str) -> LoadTestPublic:
        """The results so far (all of them once it ended): totals, percentiles, errors,
        the per-second timeline, the verdict and the encoded HDR histogram."""
        return self._one(LoadTestPublic, "GET", f"{TESTS}/{_seg(test_id)}")

    def list(
        self,
        *,
        status: str | None = None,
        project_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        skip: int | None = None,
    ) -> Page[LoadTestPublic]:
        """A project's tests, newest first (without timelines and histograms)."""
        params = _paging(
            page, limit, cursor=cursor, skip=skip, status=status, project_id=project_id
        )
        return self._page(LoadTestPublic, TESTS, params)

    def cancel(self, test_id: str) -> LoadTestPublic:
        """Stop a running test; it keeps what it measured."""
        return self._one(LoadTestPublic, "DELETE", f"{TESTS}/{_seg(test_id)}")

    def wait(
        self,
        test_id: str,
        *,
        timeout: float | None = None,
        poll: float = 1.0,
        on_progress: Callable[[LoadTestPublic], None] | None = None,
    ) -> LoadTestPublic:
        """Poll until the test ends; its results. ``on_progress`` gets each reading.
        :class:`TimeoutError` after ``timeout`` seconds (the test goes on)."""
        if poll <= 0:
            raise ValueError("poll must be positive")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            test = self.get(test_id)
            if on_progress is not None:
                on_progress(test)
            if test.status in ENDED:
                return test
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"load test {test_id} still {test.status} after {timeout}s")
            time.sleep(poll)


class Scenarios(_Resource):
    """Stored load-test scenarios: weighted requests (method, path, headers, body)."""

    def list(
        self,
        *,
        project_id: str | None = None,
        page: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        skip: int | None = None,
    ) -> Page[ScenarioPublic]:
        params = _paging(page, limit, cursor=cursor, skip=skip, project_id=project_id)
        return self._page(ScenarioPublic, SCENARIOS, params)

    def create(
        self,
        name: str,
        requests: Sequence[dict[str, Any]],
        *,
        description: str | None = None,
        project_id: str | None = None,
    ) -> ScenarioPublic:
        """``requests``: ``[{"method": "GET", "path": "/", "headers": {}, "body": None,
        "weight": 1}, ...]`` (only ``path`` is required)."""
        body = _body(
            name=name, requests=list(requests), description=description, project_id=project_id
        )
        return self._one(ScenarioPublic, "POST", SCENARIOS, json=body)

    def get(self, scenario_id: str) -> ScenarioPublic:
        return self._one(ScenarioPublic, "GET", f"{SCENARIOS}/{_seg(scenario_id)}")

    def update(
        self,
        scenario_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        requests: Sequence[dict[str, Any]] | None = None,
    ) -> ScenarioPublic:
        body = _body(
            name=name,
            description=description,
            requests=list(requests) if requests is not None else None,
        )
        return self._one(ScenarioPublic, "PUT", f"{SCENARIOS}/{_seg(scenario_id)}", json=body)

    def delete(self, scenario_id: str) -> Message:
        return self._one(Message, "DELETE", f"{SCENARIOS}/{_seg(scenario_id)}")
