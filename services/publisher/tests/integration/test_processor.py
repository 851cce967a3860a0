"""The change feed processor in-process on the local stand-in: delivery, checkpoints, start
positions, lost leases, balancing, lag."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from eventflow_publisher.changefeed import (
    ChangeFeedProcessor,
    LeaseLostError,
    ProcessorOptions,
    StartPosition,
)
from eventflow_testing import eventually

from ..conftest import Collector, Store  # type: ignore[import-not-found]

FAST = {"poll_delay": 0.02, "acquire_interval": 0.1, "renew_interval": 0.2, "expiry": 1.0, "lag_interval": 0.1,
        "retry_delay": 0.01, "max_retry_delay": 0.05, "shutdown_grace": 5.0}  # fmt: skip


async def next_second() -> datetime:
    """Wait (with a deadline) until the wall clock enters a new whole second; return its start.
    Cosmos DB stamps changes in whole seconds (`_ts`), and a start at a time keeps the changes of
    its own second: a cut on a second boundary is exact."""
    return await clock_past(
        datetime.fromtimestamp(int(time.time()) + 1, UTC) - timedelta(microseconds=1)
    )


async def clock_past(moment: datetime) -> datetime:
    """Wait (with a deadline) until the wall clock reads later than `moment`; return that time."""
    deadline = time.monotonic() + 5
    while (now := datetime.now(UTC)) <= moment:
        assert time.monotonic() < deadline, "the clock did not move"
        await asyncio.sleep(0.001)
    return now


async def started(
    store: Store, handler: Any, name: str = "a", **options: Any
) -> tuple[ChangeFeedProcessor, asyncio.Task[None]]:
    processor = ChangeFeedProcessor(
        feed=store.feed(), leases=await store.lease_store(), handler=handler,
        options=ProcessorOptions(instance_name=name, **(FAST | options)),
    )  # fmt: skip
    return processor, asyncio.create_task(processor.run())


async def stopped(processor: ChangeFeedProcessor, task: asyncio.Task[None]) -> None:
    await processor.stop()
    await task


async def test_every_change_is_handled_and_checkpointed(store: Store) -> None:
    written = await store.write_events(orders=10, per_order=3)
    collector = Collector()
    processor, task = await started(store, collector)
    await eventually(lambda: sorted(collector.ids()) == sorted(written), what="every event handled")
    await stopped(processor, task)
    leases = await (await store.lease_store()).list_leases()
    assert all(lease.continuation for lease in leases)
    assert all(lease.owner is None for lease in leases), "released on stop"
    again = Collector()
    processor, task = await started(store, again, name="b")
    await eventually(lambda: processor.ready.is_set() and len(processor.owned) == 4)
    more = await store.write_events(orders=2, per_order=1, start=4)
    await eventually(lambda: sorted(again.ids()) == sorted(more), what="only the new events")
    await stopped(processor, task)


async def test_order_of_one_order_is_kept(store: Store) -> None:
    await store.write_events(orders=3, per_order=10)
    collector = Collector()
    processor, task = await started(store, collector, max_items=4)
    await eventually(lambda: len(collector.ids()) == 30)
    await stopped(processor, task)
    for n in range(3):
        mine = [i for i in collector.ids() if i.startswith(f"order-{n}:")]
        assert mine == sorted(mine)


async def test_a_failing_handler_gets_the_same_page_again_and_nothing_is_checkpointed(
    store: Store,
) -> None:
    await store.write_events(orders=1, per_order=3)
    collector = Collector(fail_next=2)
    processor, task = await started(store, collector)
    await eventually(lambda: len(collector.pages) >= 3)
    await stopped(processor, task)
    assert collector.pages[0] == collector.pages[1] == collector.pages[2]


async def test_a_crash_between_handling_and_checkpoint_redelivers_the_page(store: Store) -> None:
    await store.write_events(orders=4, per_order=2)

    class Crash(BaseException):
        pass

    crashed: list[str] = []

    async def crashing(_: Any, documents: Any) -> None:
        crashed.extend(document["id"] for document in documents)
        raise Crash  # the process dies after sending, before the checkpoint

    processor, task = await started(store, crashing)
    await eventually(lambda: len(crashed) > 0)
    others = asyncio.all_tasks() - {asyncio.current_task()}
    for other in others:
        other.cancel()  # everything of the crashed instance stops at once: no release
    await asyncio.gather(*others, return_exceptions=True)
    survivor = Collector()
    processor, task = await started(store, survivor, name="b")
    await eventually(
        lambda: set(crashed) <= set(survivor.ids()), what="the crashed pages redelivered"
    )
    await eventually(lambda: len(set(survivor.ids())) == 8, what="every event delivered")
    await stopped(processor, task)


async def test_start_now_skips_earlier_changes(store: Store) -> None:
    await store.write_events(orders=2, per_order=1)
    await next_second()
    collector = Collector()
    processor, task = await started(store, collector, start="now")
    await eventually(lambda: processor.ready.is_set() and len(processor.owned) == 4)
    later = await store.write_events(orders=2, per_order=1, start=2)
    await eventually(lambda: sorted(collector.ids()) == sorted(later))
    await stopped(processor, task)


async def test_a_restart_never_skips_changes_made_after_the_persisted_start(store: Store) -> None:
    leases = await store.lease_store()
    bootstrapped_at = datetime.now(UTC) - timedelta(seconds=1)
    await leases.bootstrap(await store.feed().feed_ranges(), StartPosition("time", bootstrapped_at))
    written = await store.write_events(orders=3, per_order=1)  # while no instance runs
    collector = Collector()
    processor, task = await started(store, collector, start="now")  # a later "now" must not win
    await eventually(lambda: sorted(collector.ids()) == sorted(written))
    await stopped(processor, task)


async def test_a_point_in_time_start_skips_what_came_before(store: Store) -> None:
    await store.write_events(orders=2, per_order=1)
    cut = (await next_second()).replace(microsecond=0)
    later = await store.write_events(orders=2, per_order=1, start=2)
    collector = Collector()
    processor, task = await started(store, collector, start=cut)
    await eventually(lambda: sorted(collector.ids()) == sorted(later))
    await stopped(processor, task)


async def steal(leases: Any, thief: str) -> Any:
    """Take the first lease from its live owner. An acquisition loses to an owner that wrote since
    the listing (its renewals run every 0.2 s here): list and try again, with a deadline."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return await leases.acquire((await leases.list_leases())[0], thief)
        except LeaseLostError:
            assert time.monotonic() < deadline, "never took the lease"


async def test_a_lost_lease_stops_its_work_before_more_is_handled(store: Store) -> None:
    collector = Collector()
    processor, task = await started(store, collector)
    await eventually(lambda: len(processor.owned) == 4)
    leases = await store.lease_store()
    stolen = await steal(leases, "thief")

    async def thief_renews() -> None:
        nonlocal stolen
        while True:
            stolen = await leases.renew(stolen)
            await asyncio.sleep(0.2)

    renewing = asyncio.create_task(thief_renews())
    await eventually(lambda: stolen.id not in processor.owned, what="the loss noticed")
    handled = len(collector.ids())
    orders = [f"order-{n}" for n in range(20)]
    in_range = [o for o in orders if await store.orders.is_feed_range_subset(
        stolen.feed_range, await store.orders.feed_range_from_partition_key(o))]  # fmt: skip
    assert in_range
    await store.write_events(orders=20, per_order=1)
    await eventually(
        lambda: len(collector.ids()) - handled == 20 - len(in_range),
        what="the other ranges handled",
    )
    await asyncio.sleep(0.3)  # more poll intervals, in which the stolen range must stay untouched
    late = collector.ids()[handled:]
    assert not [i for i in late if i.split(":")[0] in in_range]
    assert len(processor.owned) == 3, "a fair share: no steal back from a live owner"
    renewing.cancel()
    await stopped(processor, task)


@pytest.mark.parametrize("feed_ranges", [16])
async def test_three_instances_split_sixteen_leases_and_take_over_a_stopped_ones(
    store: Store,
) -> None:
    instances = [await started(store, Collector(), name=name) for name in "abc"]

    def split() -> list[int]:
        return sorted(len(processor.owned) for processor, _ in instances)

    await eventually(lambda: split() == [5, 5, 6], what="a 6/5/5 split")
    await stopped(*instances[0])
    await eventually(
        lambda: sorted(len(p.owned) for p, _ in instances[1:]) == [8, 8], what="an 8/8 split"
    )
    owners = Counter(lease.owner for lease in await (await store.lease_store()).list_leases())
    assert set(owners) == {"b", "c"}
    for processor, task in instances[1:]:
        await stopped(processor, task)


async def test_lag_is_estimated_per_lease(store: Store) -> None:
    collector = Collector()
    processor, task = await started(store, collector)
    await eventually(
        lambda: (
            len(processor.owned) == 4
            and all(w.lease.continuation for w in processor.workers.values())
        )
    )
    await stopped(processor, task)
    await store.write_events(orders=8, per_order=2)
    feed, leases = store.feed(), await (await store.lease_store()).list_leases()
    lags = [
        (
            await feed.estimate(
                lease.feed_range, continuation=lease.continuation, start=lease.start
            )
        ).changes
        for lease in leases
    ]
    assert sum(lags) >= 16
    assert all(lag >= 0 for lag in lags)


# The defects found by running the processor against the real SDK, each through the real SDK and
# the Cosmos DB emulator, with splits, throttling and outages provoked by the emulator's controls.


async def test_a_start_at_now_resumes_from_its_checkpoint_after_a_restart(store: Store) -> None:
    """A point-in-time start used to be handed to the SDK, which writes it into every continuation
    and cannot parse it back (`ValueError: year ... is out of range`): every lease stalled after its
    first checkpoint."""
    await store.write_events(orders=2, per_order=1)
    await next_second()
    collector = Collector()
    processor, task = await started(store, collector, start="now")
    first = await store.write_events(orders=2, per_order=1, start=2)
    await eventually(lambda: sorted(collector.ids()) == sorted(first), what="the first changes")
    await stopped(processor, task)
    again = Collector()
    processor, task = await started(store, again, name="b", start="now")
    later = await store.write_events(orders=2, per_order=1, start=3)
    await eventually(
        lambda: sorted(again.ids()) == sorted(later), what="read on from the checkpoint"
    )
    await stopped(processor, task)


def _split(store: Store, range_id: str) -> list[str]:
    return store.cosmos.admin.split(store.database, "orders", range_id)


async def test_a_range_split_before_its_first_checkpoint_loses_nothing_and_never_breaks_reads(
    store: Store,
) -> None:
    """A split before a lease's first checkpoint used to leave a continuation with a null sub-token;
    checkpointing it made every later read fail (`Invalid composite token [Missing token]`)."""
    leases = await store.lease_store()
    await leases.bootstrap(await store.feed().feed_ranges(), StartPosition("beginning"))
    written = await store.write_events(orders=12, per_order=2)
    await asyncio.to_thread(_split, store, "0")
    collector = Collector()
    processor, task = await started(store, collector)
    await eventually(lambda: set(collector.ids()) == set(written), what="every change")
    more = await store.write_events(orders=12, per_order=1, start=3)
    await eventually(lambda: set(more) <= set(collector.ids()), what="changes after the split")
    assert len(await leases.list_leases()) == 5, "the split lease became two"
    await stopped(processor, task)


async def test_splits_while_changes_flow_keep_every_change_and_each_orders_order(
    store: Store,
) -> None:
    collector = Collector()
    processor, task = await started(store, collector)
    await eventually(lambda: len(processor.owned) == 4, what="leases owned")
    written = await store.write_events(orders=16, per_order=2)
    for range_id in ("1", "2"):
        await asyncio.to_thread(_split, store, range_id)
        written += await store.write_events(orders=16, per_order=1, start=len(written) // 16 + 1)
    await eventually(lambda: set(written) <= set(collector.ids()), what="every change")
    await eventually(lambda: len(processor.owned) == 6, what="children leases owned")
    for n in range(16):
        mine = list(dict.fromkeys(i for i in collector.ids() if i.startswith(f"order-{n}:")))
        assert mine == sorted(mine), f"order-{n} out of order: {mine}"
    await stopped(processor, task)


async def test_throttling_is_absorbed_by_the_sdks_retries(store: Store) -> None:
    collector = Collector()
    # An expiry and a lease deadline (1.5 renew intervals less a tenth) longer than the SDK's waits
    # on 429s: throttled renewals land within them. (A worker whose writes are refused past its
    # deadline stops handling, and past the expiry stops, as it must.)
    processor, task = await started(store, collector, expiry=10.0, renew_interval=3.0)
    await eventually(lambda: len(processor.owned) == 4, what="leases owned")
    throttled = store.cosmos.admin.status()["throttled"]
    store.cosmos.admin.set_request_units_per_second(40)  # the writes below alone need more
    written = await store.write_events(orders=10, per_order=2)
    try:
        await eventually(lambda: set(written) <= set(collector.ids()), what="everything", wait=30)
        assert store.cosmos.admin.status()["throttled"] > throttled, "the budget did throttle"
        assert len(processor.owned) == 4
    finally:
        store.cosmos.admin.set_request_units_per_second(None)
    await stopped(processor, task)


async def test_an_outage_of_the_lease_store_shorter_than_the_expiry_loses_no_lease(
    store: Store,
) -> None:
    collector = Collector()
    processor, task = await started(store, collector, expiry=4.0, renew_interval=0.3)
    await eventually(lambda: len(processor.owned) == 4, what="leases owned")
    leases = await store.lease_store()
    tokens = {lease.id: lease.owner_token for lease in await leases.list_leases()}
    store.cosmos.admin.outage(1.5, path_contains="/colls/leases")
    await asyncio.sleep(0.1)
    written = await store.write_events(orders=4, per_order=1)
    await eventually(lambda: set(written) <= set(collector.ids()), what="handled", wait=20)
    assert {lease.id: lease.owner_token for lease in await leases.list_leases()} == tokens, (
        "no lease changed hands"
    )
    await stopped(processor, task)


async def test_clocks_forty_five_seconds_apart_change_no_owner(store: Store) -> None:
    """Expiry used to compare the writer's clock (in the lease) with the reader's: at 45 s of skew
    leases changed owner dozens of times an hour. Each instance now judges by what it observed."""
    instances = []
    for name, skew in (("ahead", 45.0), ("behind", -45.0)):
        leases = await store.lease_store(clock=lambda skew=skew: time.time() + skew)
        processor = ChangeFeedProcessor(
            feed=store.feed(), leases=leases, handler=Collector(),
            options=ProcessorOptions(instance_name=name, **(FAST | {"expiry": 1.5, "renew_interval": 0.2})),
        )  # fmt: skip
        instances.append((processor, asyncio.create_task(processor.run())))
    await eventually(lambda: sorted(len(p.owned) for p, _ in instances) == [2, 2], what="2/2")
    lease_store = await store.lease_store()
    before = {lease.id: lease.owner_token for lease in await lease_store.list_leases()}
    await asyncio.sleep(4.0)  # more than two expiries, in which a skewed judge would take over
    after = {lease.id: lease.owner_token for lease in await lease_store.list_leases()}
    assert after == before, "no lease changed hands"
    for processor, task in instances:
        await stopped(processor, task)


@pytest.mark.parametrize("feed_ranges", [1])
async def test_a_split_while_one_child_is_read_ahead_of_the_other_loses_nothing(
    store: Store,
) -> None:
    """After a split the SDK's token reads the children in turn, one page each, until balancing
    replaces the lease. A checkpoint time taken from one child's page used to start both child
    leases past the other child's waiting changes (20 of 23 lost in the reproduction)."""
    collector = Collector()
    processor, task = await started(store, collector, acquire_interval=2.0, max_items=5)
    await eventually(lambda: processor.owned != [], what="the lease owned")
    await eventually(
        lambda: all(w.lease.continuation for w in processor.workers.values()),
        what="a first checkpoint",
    )
    children = await asyncio.to_thread(_split, store, "0")
    assert len(children) == 2
    low, high = [r async for r in store.orders.read_feed_ranges(force_refresh=True)]

    async def keys_in(feed_range: dict[str, Any], count: int) -> list[str]:
        found, n = [], 0
        while len(found) < count:
            key = f"order-{n}"
            if await store.orders.is_feed_range_subset(
                feed_range, await store.orders.feed_range_from_partition_key(key)
            ):
                found.append(key)
            n += 1
        return found

    written = []
    for key in await keys_in(high, 20):
        written.append(await _event_document(store, key, 1))
    await next_second()
    for key in await keys_in(low, 3):
        written.append(await _event_document(store, key, 1))
    await eventually(lambda: set(written) <= set(collector.ids()), what="every change", wait=30)
    await eventually(lambda: len(processor.owned) == 2, what="the children owned")
    await stopped(processor, task)


async def _event_document(store: Store, order_id: str, sequence: int) -> str:
    from decimal import Decimal  # noqa: PLC0415

    from eventflow_contracts import OrderItemAdded, OrderLine, new_event, to_json_dict  # noqa: PLC0415

    data = OrderItemAdded(
        order_id=order_id, line=OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("1.00"))
    )
    event = new_event(data, source="/test", sequence=sequence)
    document = {"id": f"{order_id}:event:{sequence:020d}", "order_id": order_id, "kind": "event",
                "event": to_json_dict(event)}  # fmt: skip
    await store.orders.create_item(document)
    return str(document["id"])
