"""Progress, not idleness, through the real azure-cosmos SDK on the Cosmos DB emulator: a split
before a lease's first checkpoint, empty 200s that move the position, and an idle processor's
latency."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from eventflow_publisher.changefeed import (
    ChangeFeedProcessor,
    LeaseContext,
    ProcessorOptions,
    StartPosition,
)
from eventflow_testing import eventually

from ..conftest import Collector, Store  # type: ignore[import-not-found]


async def keys_in(store: Store, feed_range: dict[str, Any], count: int, skip: int = 0) -> list[str]:
    """`count` order ids whose partition key falls in `feed_range`."""
    found, n = [], skip
    while len(found) < count:
        assert n < skip + 10_000, "no key in the range"
        key = f"order-{n}"
        if await store.orders.is_feed_range_subset(
            feed_range, await store.orders.feed_range_from_partition_key(key)
        ):
            found.append(key)
        n += 1
    return found


async def write(store: Store, order_id: str, n: int) -> str:
    document = {"id": f"{order_id}:doc:{n:06d}", "order_id": order_id, "kind": "other"}
    await store.orders.create_item(document)
    return str(document["id"])


def processor_for(store: Store, leases: Any, handler: Any, **options: Any) -> ChangeFeedProcessor:
    return ChangeFeedProcessor(
        feed=store.feed(), leases=leases, handler=handler,
        options=ProcessorOptions(instance_name="a", **options),
    )  # fmt: skip


@pytest.mark.parametrize("feed_ranges", [1])
async def test_a_split_before_the_first_checkpoint_replaces_the_lease_at_once_and_handles_the_page_once(
    store: Store,
) -> None:
    """An owned lease whose first reads failed meets a split: the SDK's token then names a child
    never read and cannot be checkpointed. The worker used to handle the same first page every
    poll until the next balancing round (13 s): ~90 handlings of each change."""
    written = [await write(store, f"order-{n}", 1) for n in range(10)]
    store.cosmos.admin.outage(600, operation="change_feed")  # the first reads fail
    collector = Collector()
    processor = processor_for(store, await store.lease_store(), collector,
                              retry_delay=0.05, max_retry_delay=0.2)  # fmt: skip
    task = asyncio.create_task(processor.run())
    try:
        await eventually(lambda: processor.owned != [], what="the lease owned")
        await asyncio.to_thread(store.cosmos.admin.split, store.database, "orders", "0")
        store.cosmos.admin.reset_faults()
        await eventually(lambda: set(collector.ids()) == set(written), what="every change", wait=10)
        await eventually(lambda: len(processor.owned) == 2, what="the children owned", wait=8)
        await asyncio.sleep(1.0)
        handled = Counter(collector.ids())
        assert max(handled.values()) == 1, f"changes handled more than once: {handled}"
    finally:
        store.cosmos.admin.reset_faults()
        await processor.stop()
        await task


@pytest.mark.parametrize("feed_ranges", [1])
async def test_a_read_that_moves_the_position_is_followed_at_once(store: Store) -> None:
    """Two leases over the halves of one physical range; the service scans 5 LSNs per read. After
    100 changes in one half, the other half's lease moves through 20 empty 200s before it reaches
    its own change. Each used to wait the idle delay (up to 2 s): 35 s instead of a fraction of one."""
    (whole,) = await store.feed().feed_ranges()
    middle = "1FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"  # the middle of the hash-V2 space
    low = {"Range": whole["Range"] | {"max": middle}}
    high = {"Range": whole["Range"] | {"min": middle}}
    leases = await store.lease_store()
    await leases.bootstrap([low, high], StartPosition("beginning"))
    seen: dict[str, float] = {}

    async def handler(_: LeaseContext, documents: Sequence[dict[str, Any]]) -> None:
        for document in documents:
            seen.setdefault(document["id"], time.monotonic())

    processor = processor_for(store, leases, handler)
    task = asyncio.create_task(processor.run())
    try:
        await eventually(lambda: len(processor.owned) == 2, what="both halves owned")
        await eventually(lambda: all(w.lease.continuation for w in processor.workers.values()),
                         what="both halves polled")  # fmt: skip
        store.cosmos.admin.set_change_feed_scan(5)
        busy = await keys_in(store, low, 1)
        foreign = [await write(store, busy[0], n) for n in range(100)]
        await eventually(lambda: set(foreign) <= set(seen), what="the busy half's changes")
        await asyncio.sleep(3.0)  # the quiet half is idle again
        (quiet,) = await keys_in(store, high, 1)
        written_at = time.monotonic()
        mine = await write(store, quiet, 0)
        await eventually(lambda: mine in seen, what="the quiet half's change", wait=60)
        took = seen[mine] - written_at
        assert took < 3.0, f"the quiet half reached its change after {took:.1f} s"
    finally:
        store.cosmos.admin.set_change_feed_scan(None)
        await processor.stop()
        await task


@pytest.mark.long  # a latency figure: measured beside make test's other workers it says little
async def test_an_idle_processor_picks_a_change_up_within_150_ms_at_the_median(
    store: Store,
) -> None:
    """Default polling, an idle system: commit → handler. Idle polling used to double to 2 s, so
    a change after a quiet spell waited ~1 s on average."""
    seen: dict[str, float] = {}

    async def handler(_: LeaseContext, documents: Sequence[dict[str, Any]]) -> None:
        for document in documents:
            seen.setdefault(document["id"], time.monotonic())

    processor = processor_for(store, await store.lease_store(), handler)
    task = asyncio.create_task(processor.run())
    try:
        await eventually(lambda: len(processor.owned) == 4, what="the leases owned")
        await asyncio.sleep(3.0)  # quiet
        latencies = []
        for n in range(20):
            await asyncio.sleep(random.uniform(0.3, 0.8))
            document = await write(store, f"order-{n}", 0)
            committed = time.monotonic()
            await eventually(lambda document=document: document in seen, what=document, wait=10)
            latencies.append(seen[document] - committed)
        median = statistics.median(latencies)
        assert median <= 0.150, f"commit → handler p50 {median * 1000:.0f} ms: {latencies}"
    finally:
        await processor.stop()
        await task
