"""Expiry is judged by observation: an ETag counts as first seen when the listing that carried it
answered, not when the listing was asked for. A listing that is slow (throttled, answered after a
stall) can carry a write its owner made while it waited; ageing that write by the wait made a live
owner's lease look expired, and two live runs handled one range at once (the ownership property
drew it: a run paused for longer than the expiry across its own listing)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any

import pytest

from eventflow_publisher.changefeed import ChangeFeedProcessor, Lease, ProcessorOptions
from eventflow_testing import eventually

from ..fakes import FakeChangeFeed, FakeLeaseStore, feed_range  # type: ignore[import-not-found]

WHOLE = feed_range("", "FF")
OPTIONS = {"poll_delay": 0.01, "max_poll_delay": 0.02, "acquire_interval": 0.02,
           "renew_interval": 0.1, "expiry": 0.6, "restart_takeover": 0.4, "lag_interval": 0.2,
           "retry_delay": 0.01, "max_retry_delay": 0.05, "shutdown_grace": 2.0}  # fmt: skip
SLOW = 1.0  # how long the first listing takes: longer than the expiry


@dataclass
class SlowFirstListing(FakeLeaseStore):
    """The first listing answers after `SLOW` seconds, and the lease's live owner renews it
    while the listing waits (its write lands just before the answer)."""

    renewed_at: float | None = None
    acquired_at: float | None = None

    async def list_leases(self) -> list[Lease]:
        if self.renewed_at is None:
            await asyncio.sleep(SLOW)
            (lease,) = self.leases.values()
            self.renewed_at = time.monotonic()
            await self.renew(lease)  # the owner's renewal: its deadline counts from here
        return await super().list_leases()

    async def acquire(self, lease: Lease, owner: str, incarnation: str | None = None) -> Lease:
        acquired = await super().acquire(lease, owner, incarnation)
        self.acquired_at = time.monotonic()
        return acquired


async def _handle(context: Any, documents: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("owner", "incarnation", "judged_after"),
    [("a", "run-1", OPTIONS["expiry"]), ("b", "earlier-run", OPTIONS["restart_takeover"])],
    ids=["another-instance-at-expiry", "an-earlier-run-of-this-name-at-the-restart-takeover"],
)
async def test_a_write_that_lands_while_the_listing_waits_is_not_aged_by_the_wait(
    owner: str, incarnation: str, judged_after: float
) -> None:
    store = SlowFirstListing()
    lease = store.add(WHOLE)
    store.leases[lease.id] = replace(
        lease, owner=owner, owner_incarnation=incarnation, owner_token="live"
    )
    processor = ChangeFeedProcessor(
        feed=FakeChangeFeed([WHOLE]), leases=store, handler=_handle,
        options=ProcessorOptions(instance_name="b", **OPTIONS),
    )  # fmt: skip
    task = asyncio.create_task(processor.run())
    try:
        # The owner writes nothing after its renewal, so the lease is taken in the end...
        await eventually(lambda: store.acquired_at is not None, "the lease taken", wait=20)
        assert store.renewed_at is not None
        assert store.acquired_at is not None
        # ...but not before that renewal has gone unchanged for the whole judging time, counted
        # from when the listing answered: until then the owner's own deadline may still be ahead.
        silent = store.acquired_at - store.renewed_at
        assert silent >= judged_after, (
            f"taken {silent:.3f} s after its owner's last write; the owner was live for "
            f"{judged_after} s after it"
        )
    finally:
        await processor.stop()
        await task
