"""Fault rules and the request-unit budget (admin.Controls), with a fake clock."""

from __future__ import annotations

import pytest

from eventflow_emulators.cosmos.admin import Controls, ThrottledError
from eventflow_emulators.cosmos.errors import CosmosError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_budget_throttles_within_the_second_and_recovers_after() -> None:
    clock = Clock()
    controls = Controls(request_units_per_second=10, clock=clock)
    controls.admit("create", "/dbs/d/colls/c/docs")
    controls.charge(6)
    controls.admit("create", "/dbs/d/colls/c/docs")
    controls.charge(6)
    clock.now += 0.25
    with pytest.raises(ThrottledError) as caught:
        controls.admit("create", "/dbs/d/colls/c/docs")
    assert caught.value.status == 429
    assert caught.value.sub_status == 3200
    assert caught.value.retry_after_ms == 750
    clock.now += 0.75
    controls.admit("create", "/dbs/d/colls/c/docs")
    assert controls.stats.throttled == 1


def test_metadata_is_never_throttled() -> None:
    controls = Controls(request_units_per_second=1, clock=Clock())
    controls.charge(100)
    controls.admit("metadata", "/dbs/d")
    controls.admit("pkranges", "/dbs/d/colls/c/pkranges")


def test_counted_faults_match_operation_and_path_then_run_out() -> None:
    controls = Controls(clock=Clock())
    controls.add_fault("unavailable", operation="read", path_contains="/colls/a/", count=2)
    controls.admit("read", "/dbs/d/colls/b/docs/x")
    controls.admit("create", "/dbs/d/colls/a/docs")
    for _ in range(2):
        with pytest.raises(CosmosError) as caught:
            controls.admit("read", "/dbs/d/colls/a/docs/x")
        assert caught.value.status == 503
    controls.admit("read", "/dbs/d/colls/a/docs/x")
    assert controls.stats.faulted == 2


def test_timeout_after_apply_lets_the_request_through_once() -> None:
    controls = Controls(clock=Clock())
    controls.add_fault("timeout-after-apply", operation="create")
    assert controls.admit("create", "/p") is True
    assert controls.admit("create", "/p") is False


def test_an_outage_lasts_its_seconds() -> None:
    clock = Clock()
    controls = Controls(clock=clock)
    controls.add_fault("outage", seconds=2)
    for _ in range(3):
        with pytest.raises(CosmosError):
            controls.admit("query", "/p")
    clock.now += 2
    controls.admit("query", "/p")
    assert controls.rules == []


def test_invalid_rules_are_refused() -> None:
    controls = Controls()
    with pytest.raises(CosmosError):
        controls.add_fault("meltdown")
    with pytest.raises(CosmosError):
        controls.add_fault("unavailable", operation="teleport")
    with pytest.raises(CosmosError):
        controls.add_fault("outage")
