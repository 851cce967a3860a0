"""The checkpoint-age gauge across a rebalance, on the real SDK (azure-eventhub's load balancing with
the blob checkpoint store on Azurite, the messaging emulator): when a second replica takes
partitions, they leave the first replica's gauge, so the old owner's ages cannot grow and fire the
checkpoint-age alert falsely; after shutdown the gauge is empty.

`load_balancing_interval=0.2` s as in test_subscription.py: claims and steals within a second."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from eventflow_subscriber.adapters.eventhubs_reader import Subscription
from eventflow_subscriber.adapters.servicebus_inbox import ServiceBusInbox
from eventflow_subscriber.forwarding import Forwarder, RetryPolicy
from eventflow_subscriber.observability import SubscriberMetrics
from eventflow_subscriber.routing import HubEvent
from eventflow_testing import eventually

from ..conftest import INBOX, PARTITIONS, Backends, event_bytes, publish  # type: ignore[import-not-found]
from ..unit.test_checkpoint_gauge import ages  # type: ignore[import-not-found]

ALL = {str(partition) for partition in range(PARTITIONS)}


class FailingOnPartitionZero(Forwarder):
    """Every batch of partition 0 fails (as a poison batch would): the SDK closes the partition
    and the replica claims it again, over and over."""

    async def forward(self, events: Sequence[HubEvent]) -> None:
        if events and events[0].partition_id == "0":
            raise RuntimeError("this batch always fails")
        await super().forward(events)


@asynccontextmanager
async def replica(
    backends: Backends,
    metrics: SubscriberMetrics,
    forwarder_type: type[Forwarder] = Forwarder,
    on_claim: Callable[[str], None] | None = None,
) -> AsyncIterator[Subscription]:
    store = backends.checkpoint_store()
    consumer = backends.consumer(store, load_balancing_interval=0.2)
    async with store, backends.service_bus() as client, client.get_queue_sender(INBOX) as sender:
        forwarder = forwarder_type(ServiceBusInbox(sender), hub="orders", subscribed=None,
                              max_message_bytes=250_000, lanes=32, retry=RetryPolicy(base_delay=0.01), observer=metrics)  # fmt: skip
        subscription = Subscription(
            consumer, forwarder, max_batch_size=50, max_wait_time=None, starting_position="-1",
            on_checkpoint=metrics.checkpointed, on_claim=on_claim or metrics.claimed, on_release=metrics.released,
            on_failure=metrics.failed,
        )  # fmt: skip
        task = asyncio.create_task(subscription.run())
        try:
            yield subscription
        finally:
            await subscription.drain(5)
            await task


async def test_partitions_taken_by_a_second_replica_leave_the_first_replicas_gauge(
    backends: Backends,
) -> None:
    first, second = SubscriberMetrics(), SubscriberMetrics()

    async def first_has_all() -> bool:
        return set(ages(first)) == ALL

    async def shared_without_overlap() -> bool:
        mine, theirs = set(ages(first)), set(ages(second))
        return bool(mine) and bool(theirs) and not mine & theirs and mine | theirs == ALL

    async with replica(backends, first):
        await publish(backends, [(f"o-{n}", event_bytes(f"o-{n}", 1)) for n in range(40)])
        await eventually(first_has_all, what="the first replica checkpointing all four partitions")
        async with replica(backends, second):
            await eventually(
                lambda: asyncio.sleep(0, bool(ages(second))), what="a claim by the second"
            )
            await publish(backends, [(f"o-{n}", event_bytes(f"o-{n}", 2)) for n in range(40)])
            await eventually(shared_without_overlap, wait=60,
                             what="each partition in exactly one replica's gauge")  # fmt: skip
        assert ages(second) == {}, "a replica shut down owns nothing"
        await eventually(first_has_all, wait=60, what="the first replica taking all four back")
    assert ages(first) == {}


async def test_a_partition_whose_batches_always_fail_keeps_aging_across_its_claims(
    backends: Backends,
) -> None:
    metrics = SubscriberMetrics()
    claims: list[str] = []

    def claimed(partition: str) -> None:
        claims.append(partition)
        metrics.claimed(partition)

    async def aged_across_claims() -> bool:
        return claims.count("0") >= 4 and ages(metrics).get("0", 0.0) > 3.0

    async with replica(backends, metrics, FailingOnPartitionZero, on_claim=claimed):
        await publish(backends, [(f"o-{n}", event_bytes(f"o-{n}", 1)) for n in range(40)])
        await eventually(aged_across_claims, wait=60,
                         what="partition 0 claimed again and again, its age growing past 3 s")  # fmt: skip
        assert set(ages(metrics)) == ALL
