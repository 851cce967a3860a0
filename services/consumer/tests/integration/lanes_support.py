"""What the in-process lane tests share: a LaneHolder of this release on the emulators, and the
condition that orders reached their sequences."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from eventflow_consumer.adapters.servicebus_lanes import LaneHolder
from eventflow_consumer.bootstrap import Resources, open_resources, worker_of
from eventflow_consumer.main import lanes_of
from eventflow_consumer.observability import ConsumerMetrics

from ..conftest import Backends  # type: ignore[import-not-found]

LANES = 4


class CountingMetrics(ConsumerMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.deferrals = 0

    def deferred(self) -> None:
        super().deferred()
        self.deferrals += 1


@asynccontextmanager
async def holding(
    backends: Backends, **changes: Any
) -> AsyncIterator[tuple[Resources, LaneHolder]]:
    """The consumer's lanes (`LANES` of them) held in this process until the block ends; its
    metrics count deferrals (`holder._worker._observer.deferrals`)."""
    settings = backends.settings(inbox_lanes=LANES, session_renew_seconds=0.5, lane_retry_seconds=0.5,
                                 unblock_poll_seconds=0.2, **changes)  # fmt: skip
    async with open_resources(settings) as resources, backends.client() as client:
        metrics = CountingMetrics()
        holder = lanes_of(settings, resources, worker_of(settings, resources, metrics), metrics)
        assert holder is not None
        holder._client = client  # the test's own client: one connection per lane either way
        task = asyncio.create_task(holder.run())
        try:
            yield resources, holder
        finally:
            holder.stop()
            await task


def summaries_at(resources: Resources, wanted: dict[str, int]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        for order_id, sequence in wanted.items():
            summary = await resources.store.get(order_id)
            if summary is None or summary["last_sequence"] != sequence:
                return False
        return True

    return check
