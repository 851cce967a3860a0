"""The subscriber in-process on the real SDKs (azure-eventhub with the blob checkpoint store on
Azurite, azure-servicebus) against the messaging emulator: hub → inbox, checkpoints, crashes,
filters, markers, and the emulator's faults under the SDKs' own retries.

SDK settings used on purpose: `load_balancing_interval=0.2` s, so the one consumer claims the four
partitions at once and, after a crash, the dead owner's claims expire after the SDK's default
6 x interval = 1.2 s instead of a minute."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import Any

import orjson
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore

from eventflow_subscriber.adapters.eventhubs_reader import Subscription
from eventflow_subscriber.adapters.servicebus_inbox import ServiceBusInbox
from eventflow_subscriber.forwarding import Forwarder, RetryPolicy

from ..conftest import (  # type: ignore[import-not-found]
    INBOX,
    Backends,
    checkpointed,
    event_bytes,
    eventually,
    publish,
    read_inbox,
)

LOAD_BALANCING_INTERVAL = 0.2


@asynccontextmanager
async def subscriber(
    backends: Backends,
    forwarder_type: type[Forwarder] = Forwarder,
    subscribed: Collection[str] | None = None,
    retry: RetryPolicy | None = None,
    service_bus_options: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[Subscription, asyncio.Task[None], BlobCheckpointStore]]:
    store = backends.checkpoint_store()
    consumer = backends.consumer(store, load_balancing_interval=LOAD_BALANCING_INTERVAL)
    async with (
        store,
        backends.service_bus(**(service_bus_options or {})) as client,
        client.get_queue_sender(INBOX) as sender,
    ):
        forwarder = forwarder_type(ServiceBusInbox(sender), hub="orders", subscribed=subscribed, max_message_bytes=250_000,
                                   retry=retry or RetryPolicy(base_delay=0.01))  # fmt: skip
        subscription = Subscription(
            consumer, forwarder, max_batch_size=50, max_wait_time=None, starting_position="-1"
        )
        task = asyncio.create_task(subscription.run())
        try:
            yield subscription, task, store
        finally:
            if not task.done():
                await subscription.drain(5)
                await task


def all_checkpointed(backends: Backends, store: BlobCheckpointStore, count: int) -> Any:
    async def check() -> bool:
        return await checkpointed(backends, store) == count

    return check


async def test_events_reach_the_inbox_in_order_per_order_and_are_checkpointed(
    backends: Backends,
) -> None:
    bodies = [(f"order-{n % 5}", event_bytes(f"order-{n % 5}", n // 5 + 1)) for n in range(40)]
    await publish(backends, bodies)
    async with subscriber(backends) as (_, _, store):
        await eventually(all_checkpointed(backends, store, 40), what="every event checkpointed")
    inbox = await read_inbox(backends)
    assert sorted(inbox) == [f"order-{n}" for n in range(5)]
    for messages in inbox.values():
        assert [m.application_properties[b"sequence"] for m in messages] == list(range(1, 9))


async def test_a_crash_between_send_and_checkpoint_is_absorbed_by_duplicate_detection(
    backends: Backends,
) -> None:
    class Crash(BaseException):
        pass

    crashed = asyncio.Event()

    class CrashAfterSending(Forwarder):
        async def forward(self, events: Any) -> None:
            await super().forward(events)
            crashed.set()
            raise Crash  # the process dies after the inbox accepted, before the checkpoint

    await publish(backends, [(f"order-{n}", event_bytes(f"order-{n}", 1)) for n in range(8)])
    # The crashing process: its clients are never closed, as in a process that dies.
    consumer = backends.consumer(
        backends.checkpoint_store(), load_balancing_interval=LOAD_BALANCING_INTERVAL
    )
    sender = backends.service_bus().get_queue_sender(INBOX)
    forwarder = CrashAfterSending(ServiceBusInbox(sender), hub="orders", subscribed=None,
                                  max_message_bytes=250_000, retry=RetryPolicy(base_delay=0.01))  # fmt: skip
    subscription = Subscription(
        consumer, forwarder, max_batch_size=50, max_wait_time=None, starting_position="-1"
    )
    task = asyncio.create_task(subscription.run())
    await asyncio.wait_for(crashed.wait(), 20)
    for other in asyncio.all_tasks() - {asyncio.current_task()}:
        other.cancel()  # everything of the crashed process stops at once: no drain, no release
    await asyncio.gather(task, return_exceptions=True)
    backends.messaging.admin.drop_connections()  # and its connections end with it
    async with backends.checkpoint_store() as store:
        assert await checkpointed(backends, store) == 0, "no checkpoint past the crash"

    async with subscriber(backends) as (_, _, store):
        await eventually(
            all_checkpointed(backends, store, 8), what="everything checkpointed after the restart"
        )
    inbox = await read_inbox(backends)
    assert sorted(inbox) == [f"order-{n}" for n in range(8)]
    assert all(len(messages) == 1 for messages in inbox.values()), "each event once in the inbox"


async def test_filtered_events_are_checkpointed_past_and_never_sent(backends: Backends) -> None:
    await publish(
        backends, [("o1", event_bytes("o1", 1)), ("o1", event_bytes("o1", 2, cancelled=True))]
    )
    async with subscriber(backends, subscribed={"eventflow.orders.OrderCancelled.v1"}) as (
        _,
        _,
        store,
    ):
        await eventually(all_checkpointed(backends, store, 2))
    inbox = await read_inbox(backends)
    assert [m.subject for m in inbox["o1"]] == ["eventflow.orders.OrderCancelled.v1"]


async def test_a_malformed_event_on_the_hub_becomes_a_marker_and_the_rest_flows(
    backends: Backends,
) -> None:
    await publish(backends, [("o1", b"{not json"), ("o1", event_bytes("o1", 1))])
    async with subscriber(backends) as (_, _, store):
        await eventually(all_checkpointed(backends, store, 2))
    inbox = await read_inbox(backends)
    (marker,) = inbox["eventflow.unroutable"]
    assert marker.application_properties[b"reason"] == b"invalid-json"
    details = orjson.loads(b"".join(marker.body))
    assert (details["eventhub"], details["sequence_number"]) == ("orders", 0)
    assert len(inbox["o1"]) == 1
