"""The short chaos run of `make test`: two replicas of each worker, kill -9 every few seconds during
the load, and every guarantee still holds. `make chaos` runs the long one."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import chaos

pytestmark = pytest.mark.slow


async def test_guarantees_survive_kills(tmp_path: Path) -> None:
    summary = await chaos(
        tmp_path / "local", orders=40, commands_per_order=8, kill_every=1.5, pace=0.15
    )
    print(f"chaos summary: {summary}")  # noqa: T201
    assert summary["kills"] >= 2
    assert summary["events_handled"] == summary["events_committed"]
