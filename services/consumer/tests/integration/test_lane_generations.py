"""Changing the lane count on a live inbox, and turning lanes on after one session per order (real
azure-servicebus and azure-cosmos, both emulators): an order's earlier events still wait in its old
session (held by a slow replica: this test holds it) while its later ones arrive in its new lane.
The later ones wait behind the generation barrier far past the gap wait, and once the old session
is drained every order is applied in sequence: nothing skipped, nothing dead-lettered.

The consumers are wired as eventflow_consumer.main wires them (the lane holder, the session pump
for every other session, the generation barrier on both), in this process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import orjson
import pytest

from eventflow_consumer.adapters.cosmos_membership import CosmosLaneCounts
from eventflow_consumer.adapters.servicebus_sessions import (
    ServiceBusSessionChannel,
    SessionPump,
    keep_locked,
)
from eventflow_consumer.admin import run as admin
from eventflow_consumer.bootstrap import Resources, open_resources, worker_of
from eventflow_consumer.main import barrier_of, lanes_of
from eventflow_consumer.observability import ConsumerMetrics
from eventflow_contracts.lanes import session_id_for
from eventflow_testing import eventually

from ..conftest import (  # type: ignore[import-not-found]
    Backends,
    inbox_message,
    item_added,
    order_events,
)
from .lanes_support import summaries_at

pytestmark = pytest.mark.slow

GAP_WAIT = 1.5
ORDERS = [f"gen-{n}" for n in range(6)]


class Waits(ConsumerMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.waits = 0
        self.deferrals = 0

    def waited(self) -> None:
        super().waited()
        self.waits += 1

    def deferred(self) -> None:
        super().deferred()
        self.deferrals += 1


@asynccontextmanager
async def consumer(
    backends: Backends, lanes: int, policy: str = "skip"
) -> AsyncIterator[tuple[Resources, Waits]]:
    settings = backends.settings(
        inbox_lanes=lanes, gap_wait_seconds=GAP_WAIT, lane_barrier_seconds=0.3, poison_policy=policy,
        session_renew_seconds=0.5, session_idle_seconds=0.3, lane_retry_seconds=0.3,
    )  # fmt: skip
    async with open_resources(settings) as resources:
        metrics = Waits()
        worker = worker_of(settings, resources, metrics)
        barrier = barrier_of(settings, resources)
        holder = lanes_of(settings, resources, worker, metrics, barrier=barrier)
        pump = SessionPump(
            resources.servicebus, settings.inbox_queue, worker, concurrency=4, idle_seconds=0.3,
            renew_seconds=0.5, accept_wait_seconds=1.5, lanes=holder,
            seen=barrier.seen if barrier else None, lane_worker=holder.worker if holder else None,
        )  # fmt: skip
        running = [pump.run()] + ([holder.run()] if holder else [])
        task = asyncio.gather(*running)
        try:
            yield resources, metrics
        finally:
            pump.stop()
            if holder:
                holder.stop()
            await task


@asynccontextmanager
async def held(backends: Backends, session_ids: set[str]) -> AsyncIterator[None]:
    """The sessions held by receivers of this test, each lock renewed from its accept on (as the
    consumer renews its own; the test queue's lock is 2 s): a replica that drains them slowly."""
    renewals: list[asyncio.Task[None]] = []
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(backends.client())
        try:
            for session_id in sorted(session_ids):
                receiver = await stack.enter_async_context(
                    client.get_queue_receiver(backends.queue, session_id=session_id)
                )
                channel = ServiceBusSessionChannel(receiver)
                renewals.append(asyncio.create_task(keep_locked(channel, 0.4)))
            yield
        finally:
            for renewal in renewals:
                renewal.cancel()
            await asyncio.gather(*renewals, return_exceptions=True)
            assert all(r.cancelled() for r in renewals), "a held session's lock was lost"


@pytest.mark.parametrize("old_lanes", [4, 0], ids=["lanes-4-to-8", "per-order-to-lanes-8"])
async def test_events_in_the_old_session_are_waited_for_past_the_gap_wait(
    backends: Backends, old_lanes: int
) -> None:
    events = {order_id: order_events(order_id) for order_id in ORDERS}
    old = {order_id: session_id_for(order_id, old_lanes) for order_id in ORDERS}
    new = {order_id: session_id_for(order_id, 8) for order_id in ORDERS}

    # Before the change: consumers under the old count apply every order's first event.
    await backends.send(*(inbox_message(e[0], old[o]) for o, e in events.items()))
    async with consumer(backends, old_lanes) as (resources, _):
        await eventually(summaries_at(resources, dict.fromkeys(ORDERS, 1)), "first events applied")

    # The change: each order's second event is still in its old session, which a slow replica
    # holds, while its third and fourth arrive in its lane under 8.
    await backends.send(*(inbox_message(e[1], old[o]) for o, e in events.items()))
    async with AsyncExitStack() as slow_replica:
        await slow_replica.enter_async_context(held(backends, set(old.values())))
        await backends.send(
            *(inbox_message(e[n], new[o]) for o, e in events.items() for n in (2, 3))
        )
        async with consumer(backends, 8) as (resources, metrics):
            await eventually(
                lambda: metrics.waits >= len(ORDERS), "every order's third event waits"
            )
            await asyncio.sleep(3 * GAP_WAIT)  # far past the gap wait: nothing may be given up
            assert await summaries_at(resources, dict.fromkeys(ORDERS, 1))()
            assert not await backends.has_dead_letters()

            await slow_replica.aclose()  # the old sessions are free: the pump drains them
            await eventually(
                summaries_at(resources, dict.fromkeys(ORDERS, 4)), "every order applied"
            )
            summaries = [await resources.store.get(order_id) for order_id in ORDERS]
    assert all(s and s["skipped"] == [] for s in summaries), summaries
    assert not await backends.has_dead_letters()


def poison(order_id: str, sequence: int) -> bytes:
    """An event whose envelope names its order, and whose data breaks the contract."""
    document = orjson.loads(item_added(order_id, sequence))
    document["data"] = {"line": "not a line"}
    return orjson.dumps(document)


@pytest.mark.parametrize("old_lanes", [4, 0], ids=["lanes-4-to-8", "per-order-to-lanes-8"])
async def test_an_order_blocked_in_its_old_session_is_unblocked_across_the_change(
    backends: Backends, old_lanes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the block policy: the order's old session holds its poison event's successors,
    deferred; its later events arrive in its lane under 8 and wait behind the barrier (not blocked
    a second time, not skipped); `unblock` replays the old session (held by the command itself when
    it is a lane of another count) and the later events follow, in sequence."""
    order = "gen-blocked"
    old, new = session_id_for(order, old_lanes), session_id_for(order, 8)
    created = order_events(order)[0]
    await backends.send(*(inbox_message(body, old) for body in
                          (created, poison(order, 2), item_added(order, 3), item_added(order, 4))))  # fmt: skip
    async with consumer(backends, old_lanes, "block") as (resources, metrics):
        await eventually(lambda: metrics.deferrals >= 2, "the poison's successors deferred")
        assert await resources.store.blocked_record(order) is not None

    await backends.send(*(inbox_message(item_added(order, n), new) for n in (5, 6)))
    monkeypatch.setenv("CONSUMER_INBOX_LANES", "8")
    async with consumer(backends, 8, "block") as (resources, metrics):
        await eventually(lambda: metrics.waits >= 1, "the later events wait")
        await asyncio.sleep(3 * GAP_WAIT)
        assert await summaries_at(resources, {order: 1})()
        record = await resources.store.blocked_record(order)
        assert record is not None
        assert record.get("lane") == (old if old_lanes else None), record
        assert len(await backends.dead_letters()) == 1  # the poison event only

        assert await admin(["unblock", order, "--wait", "30"]) == 0
        await eventually(summaries_at(resources, {order: 6}), "replayed, then the later events")
        summary = await resources.store.get(order)
    assert summary is not None
    assert summary["skipped"] == [2]
    assert [m.dead_letter_reason for m in await backends.dead_letters()] == ["invalid-data"]


@pytest.mark.long
async def test_a_live_change_from_16_to_32_lanes_under_load_skips_nothing(
    backends: Backends,
) -> None:
    """A change under load: the senders switched from 16 lanes to 32 with a backlog of 900 events in
    the 16 lanes (several gap waits of work); a consumer with 32 lanes runs beside one with 16 (a
    rolling deploy), then the one with 16 stops and the other's pump drains its lanes. Every order
    ends applied in sequence: nothing skipped, nothing dead-lettered."""
    orders = [f"live-{n}" for n in range(300)]
    rounds = 6  # created, then five items added

    def body(order_id: str, n: int) -> bytes:
        return order_events(order_id)[0] if n == 0 else item_added(order_id, n + 1)

    async def send_round(n: int, lanes: int) -> None:
        messages = [inbox_message(body(o, n), session_id_for(o, lanes)) for o in orders]
        for start in range(0, len(messages), 100):
            await backends.send(*messages[start : start + 100])

    # The backlog when the count changes: three events of every order in the 16 lanes, then the
    # senders switched to 32 lanes and sent the other three (each order's in sequence).
    for n in range(rounds):
        await send_round(n, 16 if n < 3 else 32)
    async with AsyncExitStack() as old, AsyncExitStack() as new:
        _, before = await old.enter_async_context(consumer(backends, 16))
        after, metrics = await new.enter_async_context(consumer(backends, 32))
        # (each one's session pump also takes lanes of the other's count while they have messages)
        await eventually(lambda: before.waits + metrics.waits > 0, "early events wait")
        await old.aclose()  # the consumer with 16 lanes is replaced: its lanes go to the pump
        await eventually(
            summaries_at(after, dict.fromkeys(orders, rounds)), "every order applied", wait=180
        )
        summaries = [await after.store.get(o) for o in orders]
    assert [s["order_id"] for s in summaries if s and s["skipped"]] == []
    assert not await backends.has_dead_letters()


async def test_the_lane_counts_record_keeps_the_newest_count_newest_while_its_replicas_run(
    backends: Backends,
) -> None:
    """A replica of the old count that starts during a change must not make the old count look
    newer than the one replacing it; once no replica runs the newer one, it may."""
    async with open_resources(backends.settings(inbox_lanes=16)) as resources:
        counts = CosmosLaneCounts(resources.members, queue=backends.queue)
        await counts.note(16, current=True)
        await counts.note(32, current=True)
        member = {"id": "replica-32", "queue": backends.queue, "lanes": 32, "ttl": 60}
        await resources.members.upsert_item(member)
        await counts.note(16, current=True)  # an old replica restarts while one of 32 runs
        assert await counts.counts() == [16, 32]
        await counts.note(4, current=False)  # a session of a count seen, not run: the oldest
        assert await counts.counts() == [4, 16, 32]
        await resources.members.delete_item("replica-32", partition_key=backends.queue)
        await counts.note(16, current=True)  # changed back, no replica of 32 left
        assert await counts.counts() == [4, 32, 16]
