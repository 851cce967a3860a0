"""All four services as processes on the local stand-ins, ~1000 REST commands over 100 orders (with
rejected ones), malformed events injected into the hub and the inbox; then every guarantee the
write pattern promises (docs/patterns.md), once per pattern. The APIs take only tokens from an
issuer on 127.0.0.1 (discovery document and key set, as Entra ID serves them)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import httpx
import pytest

from eventflow_contracts.auth_testing import running_issuer
from eventflow_testing.e2e import PATTERNS, Load, System, check_guarantees, inject_malformed, settle

from .tracing import check_one_trace_per_change, traced_change  # type: ignore[import-not-found]

pytestmark = pytest.mark.slow


# `make test` runs the outbox case; `make test-patterns` the other write patterns (marker `patterns`).
@pytest.mark.parametrize(
    "pattern",
    [pytest.param(p, marks=[pytest.mark.patterns] if p != "outbox" else []) for p in PATTERNS],
)
async def test_every_guarantee_holds_end_to_end(tmp_path: Path, pattern: str) -> None:
    """The outbox run also checks one trace per change (tests/e2e/tracing.py) on an order made
    before the load: its services write their spans to files, the consumer logs at DEBUG."""
    traced = pattern == "outbox"
    with running_issuer() as issuer:
        system = System(
            tmp_path / "local", pattern, issuer=issuer,
            trace_dir=tmp_path / "traces" if traced else None,
            log_levels={"consumer": "DEBUG"} if traced else {},
        )  # fmt: skip
        await _every_guarantee_holds(system)


async def _every_guarantee_holds(system: System) -> None:
    pattern = system.pattern
    await system.start()
    try:
        if system.trace_dir is not None:
            traced_order, traced_events = await traced_change(system)
        async with httpx.AsyncClient(timeout=10) as anonymous:
            refused = await anonymous.post(f"{system.producer_url}/orders", json={})
            assert refused.status_code == 401, "the producer takes only tokens"
            refused = await anonymous.get(f"{system.consumer_url}/orders/o-1")
            assert refused.status_code == 401, "the read API takes only tokens"
        await inject_malformed(system)
        load = Load()
        await load.run(system.producer_url, orders=100, commands_per_order=10, rng=random.Random(7),
                       headers=system.headers)  # fmt: skip
        assert sum(load.accepted.values()) + sum(load.rejected.values()) == 1000
        assert load.rejected[412] > 0, "stale If-Match commands are part of the load"
        assert load.rejected[409] > 0, "commands breaking a rule are part of the load"
        await settle(system, load.orders, wait=120)
        result = await check_guarantees(system, load.orders, load.statuses)
        sys.stdout.write(
            f"{pattern}: {result['events_handled']} events handled of {load.committed_events} commits\n"
        )
        if pattern == "entity-first":  # one derived event per version read: coalesced ones missing
            assert 100 <= result["events_handled"] <= load.committed_events
        else:
            assert result["events_handled"] == load.committed_events
    finally:
        codes = system.stop()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says why it stopped.
    assert codes.pop("producer-0") in (0, -15)
    assert "Application shutdown complete" in (system.folder / "producer-0.log").read_text()
    assert set(codes.values()) == {0}, f"every worker ends cleanly on SIGTERM: {codes}"
    if system.trace_dir is not None:
        check_one_trace_per_change(system, system.trace_dir, traced_order, traced_events)
