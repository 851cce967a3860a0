"""All four services as processes on the local stand-ins, ~1000 REST commands over 100 orders (with
rejected ones), malformed events injected into the hub and the inbox; then every guarantee."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from .harness import Load, System, check_guarantees, inject_malformed, settle

pytestmark = pytest.mark.slow


async def test_every_guarantee_holds_end_to_end(tmp_path: Path) -> None:
    system = System(tmp_path / "local")
    await system.start()
    try:
        await inject_malformed(system)
        load = Load()
        await load.run(system.producer_url, orders=100, commands_per_order=10, rng=random.Random(7))
        assert sum(load.accepted.values()) + sum(load.rejected.values()) == 1000
        assert load.rejected[412] > 0, "stale If-Match commands are part of the load"
        assert load.rejected[409] > 0, "commands breaking a rule are part of the load"
        await settle(system, load.orders, wait=120)
        result = await check_guarantees(system, load.orders)
        assert result["events_handled"] == load.committed_events
    finally:
        codes = system.stop()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says why it stopped.
    assert codes.pop("producer-0") in (0, -15)
    assert "Application shutdown complete" in (system.folder / "producer-0.log").read_text()
    assert set(codes.values()) == {0}, f"every worker ends cleanly on SIGTERM: {codes}"
